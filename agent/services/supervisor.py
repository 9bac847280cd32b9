"""A small supervisor for the stage-switched services.

Owns: the list of children (each a service front plus how to build its legacy
and new implementation), which implementation each runs, restart counts, the
restart-intensity window, and the restart listener that feeds the health
window (restarts per minute is one of the automatic-rollback thresholds).

Restarts and state: `restart_child(name)` builds a fresh implementation of
the same kind and hands it the state exported from the old one, like an ETS
table with an heir, so a restart fixes a wedged service without dropping
registered agents or open spans. `restart_child(name, keep_state=False)`
models a crash: the child comes back empty. If the old state cannot even be
exported, the child comes back empty too and `state_lost` is counted. A
LEGACY child's state lives in the global dict and is rebuilt in place.

Restart intensity, as in OTP: more than `max_restarts` restarts within
`period_ms` and the supervisor moves from RUNNING to ESCALATED. It keeps
restarting (the device must keep working), but reports ESCALATED in `status()`
and in the "services.restart" event until `reset_intensity()`; the health
check sees the restarts anyway through the listener.

Must never: let a failing listener or event handler stop a restart, or switch
a child to an implementation it cannot name.
"""
from agent.services.base import LEGACY, NEW, ServicesError, UnknownService

RUNNING = "RUNNING"
ESCALATED = "ESCALATED"
DEFAULT_MAX_RESTARTS = 3
DEFAULT_PERIOD_MS = 5000


class _Child:
    def __init__(self, name, front, make_legacy, make_new):
        self.name = name
        self.front = front
        self.make = {LEGACY: make_legacy, NEW: make_new}
        self.restarts = 0
        self.state_lost = 0


class Supervisor:
    """Runs the services in a fixed order; restarts, switches and counts them."""

    def __init__(self, clock, events=None, max_restarts=DEFAULT_MAX_RESTARTS,
                 period_ms=DEFAULT_PERIOD_MS):
        self._clock = clock
        self._events = events
        self.max_restarts = max_restarts
        self.period_ms = period_ms
        self.state = RUNNING
        self._children = []
        self._by_name = {}
        self._recent = []  # monotonic ms of restarts inside the intensity window
        self._listener = None
        self.listener_errors = 0
        self.escalations = 0

    def add_child(self, name, front, make_legacy, make_new):
        """Supervise `front`; make_legacy(state) and make_new(state) build its implementations."""
        if name in self._by_name:
            raise ServicesError(f"child already supervised: {name}")
        child = _Child(name, front, make_legacy, make_new)
        self._children.append(child)
        self._by_name[name] = child

    def _child(self, name):
        child = self._by_name.get(name)
        if child is None:
            have = ", ".join(c.name for c in self._children)
            raise UnknownService(f"no such service: {name!r} (have {have})")
        return child

    def which_services(self):
        """Every child in start order: name, impl ("legacy"/"new"), status, restarts."""
        return [{"name": c.name, "impl": c.front.impl.IMPL, "status": RUNNING,
                 "restarts": c.restarts} for c in self._children]

    def names(self):
        return [c.name for c in self._children]

    def impl_of(self, name):
        return self._child(name).front.impl.IMPL

    def switch(self, name, impl_name):
        """Move a child to `impl_name`, carrying its state; returns True if it moved."""
        child = self._child(name)
        if impl_name not in child.make:
            raise ServicesError(f"no implementation {impl_name!r} for {name}")
        old = child.front.impl
        if old.IMPL == impl_name:
            return False
        # build the new side first: if that fails, the old one is untouched and active
        fresh = child.make[impl_name](old.export_state())
        child.front._bind(fresh)
        old.release()
        return True

    def restart_child(self, name, keep_state=True):
        """Rebuild a child's implementation (same kind); count it and tell the listener."""
        child = self._child(name)
        old = child.front.impl
        state = None
        if keep_state:
            try:
                state = old.export_state()
            except Exception:  # noqa: BLE001 - a wedged service must still restart
                child.state_lost += 1
        old.release()
        child.front._bind(child.make[old.IMPL](state))
        child.restarts += 1
        now = self._clock.monotonic_ms()
        self._count_restart(now)
        self._notify(name, now)
        return {"name": name, "impl": old.IMPL, "restarts": child.restarts,
                "kept_state": state is not None, "supervisor": self.state}

    def _count_restart(self, now):
        self._recent = [t for t in self._recent if now - t < self.period_ms]
        self._recent.append(now)
        if len(self._recent) > self.max_restarts and self.state == RUNNING:
            self.state = ESCALATED
            self.escalations += 1

    def _notify(self, name, now):
        if self._listener is not None:
            try:
                self._listener(name, now)
            except Exception:  # noqa: BLE001 - a listener must not stop a restart
                self.listener_errors += 1
        if self._events is not None:
            try:
                self._events.emit("services.restart", {
                    "service": name, "now_ms": now, "restarts": self._by_name[name].restarts,
                    "supervisor": self.state})
            except Exception:  # noqa: BLE001 - the bus counts its own handler errors
                self.listener_errors += 1

    def set_restart_listener(self, fn):
        """fn(name, now_ms) after every restart (None to remove): this feeds the health window."""
        self._listener = fn

    def restart_counts(self):
        return {c.name: c.restarts for c in self._children}

    def reset_intensity(self):
        """Back to RUNNING with an empty intensity window (an operator, or after a rollback)."""
        self._recent = []
        self.state = RUNNING

    def status(self):
        return {"state": self.state, "max_restarts": self.max_restarts,
                "period_ms": self.period_ms, "recent_restarts": len(self._recent),
                "escalations": self.escalations, "listener_errors": self.listener_errors,
                "restarts": sum(c.restarts for c in self._children),
                "state_lost": sum(c.state_lost for c in self._children)}
