"""The code paths the migration stages switch, behind one facade: `Services`.

Owns: one device's stage-switched services and the supervisor that runs them.
Each service has a LEGACY implementation (state hidden in module-level global
state, `legacy_state`, the counterpart of Erlang's process dictionary) and a
NEW one (state owned by a supervised service object). A flag picks which:

    registry        use_ets_agent_registry          stage 1
    error_context   use_logger_error_context        stage 2
    telemetry       use_genserver_telemetry         stage 3
    spans           use_genserver_span_management   stage 3
    sampled_events  use_ets_sampled_events          stage 3
    enforcement     enforce_no_process_dict         stage 4 (a guard, not switched)

Callers keep the fronts (`services.registry`, ...). `apply_flags()` reads the
flags once and moves each service whose flag changed to the other
implementation, carrying all of its state (entries, contexts, open spans,
dedup windows, buffered telemetry, counters), forward on a migration and
backward on a rollback. The hot path never reads a flag: a front's methods
are the active implementation's bound methods.

Must never: share state between two `Services` (each has its own owner slot
in the global state, so thousands of simulated devices in one process stay
apart), read flags on the hot path, or do I/O (the clock is handed in).
"""
from agent.services import legacy_state
from agent.services.base import (
    LEGACY,
    NEW,
    ContextError,
    EventError,
    LegacyPathViolation,
    RegistryError,
    ServicesError,
    SpanError,
    SwitchFailed,
    UnknownService,
)
from agent.services.enforcement import Enforcement
from agent.services.error_context import ErrorContext, LegacyErrorContext, NewErrorContext
from agent.services.registry import LegacyRegistry, NewRegistry, Registry
from agent.services.sampled_events import (
    DUPLICATE,
    EMITTED,
    SAMPLED_OUT,
    LegacySampledEvents,
    LegacyTelemetry,
    NewSampledEvents,
    NewTelemetry,
    SampledEvents,
    Telemetry,
)
from agent.services.spans import LegacySpans, NewSpans, SpanManager
from agent.services.supervisor import ESCALATED, RUNNING, Supervisor

__all__ = [
    "Services", "SERVICE_FLAGS", "ENFORCE_FLAG", "LEGACY", "NEW", "RUNNING", "ESCALATED",
    "EMITTED", "DUPLICATE", "SAMPLED_OUT", "ServicesError", "RegistryError",
    "ContextError", "SpanError", "EventError", "UnknownService", "LegacyPathViolation",
    "SwitchFailed",
]

# (service, flag that selects its NEW implementation), in start order
SERVICE_FLAGS = (
    ("registry", "use_ets_agent_registry"),
    ("error_context", "use_logger_error_context"),
    ("telemetry", "use_genserver_telemetry"),
    ("spans", "use_genserver_span_management"),
    ("sampled_events", "use_ets_sampled_events"),
)
ENFORCE_FLAG = "enforce_no_process_dict"

_IMPLS = {
    "registry": (LegacyRegistry, NewRegistry),
    "error_context": (LegacyErrorContext, NewErrorContext),
    "telemetry": (LegacyTelemetry, NewTelemetry),
    "spans": (LegacySpans, NewSpans),
    "sampled_events": (LegacySampledEvents, NewSampledEvents),
}


class Services:
    """One device's services: `.registry`, `.error_context`, `.telemetry`, `.spans`,
    `.sampled_events`, `.enforcement`, `.supervisor`."""

    def __init__(self, flags, clock, events=None, strict=False,
                 max_restarts=3, period_ms=5000):
        self.flags = flags
        self.events = events
        self.clock = clock  # handed in: the core never picks the platform's clock
        self.owner = legacy_state.new_owner()
        self.enforcement = Enforcement(self.clock, strict=strict)
        self.supervisor = Supervisor(self.clock, events, max_restarts, period_ms)
        impl = {}
        for name, flag in SERVICE_FLAGS:
            impl[name] = self._maker(name, NEW if flags.enabled(flag) else LEGACY)(None)
        self.registry = Registry("registry", impl["registry"])
        self.error_context = ErrorContext("error_context", impl["error_context"])
        self.telemetry = Telemetry("telemetry", impl["telemetry"])
        self.spans = SpanManager("spans", impl["spans"])
        self.sampled_events = SampledEvents("sampled_events", impl["sampled_events"],
                                            self.telemetry, self.clock)
        for name, _flag in SERVICE_FLAGS:
            self.supervisor.add_child(name, getattr(self, name), self._maker(name, LEGACY),
                                      self._maker(name, NEW))
        self.enforcement.set_active(flags.enabled(ENFORCE_FLAG))

    def _maker(self, name, impl_name):
        legacy_cls, new_cls = _IMPLS[name]
        owner, guard, clock = self.owner, self.enforcement, self.clock
        if impl_name == LEGACY:
            return lambda state: legacy_cls(owner, guard, state, clock)
        return lambda state: new_cls(state, clock)

    def apply_flags(self):
        """Move every service to the implementation its flag asks for, keeping its state.

        Call after any flag change. Returns the moves made, in start order:
        [{"service": name, "from": impl, "to": impl}, ...]. A service that
        cannot move (its state will not export) stays whole where it was; the
        others still move, and then SwitchFailed names the ones that did not.
        Calling again retries them.
        """
        moves = []
        failed = []
        for name, flag in SERVICE_FLAGS:
            want = NEW if self.flags.enabled(flag) else LEGACY
            was = self.supervisor.impl_of(name)
            try:
                moved = self.supervisor.switch(name, want)
            except Exception as exc:  # noqa: BLE001 - one broken service must not block the rest
                failed.append((name, type(exc).__name__))
                continue
            if moved:
                moves.append({"service": name, "from": was, "to": want})
        self.enforcement.set_active(self.flags.enabled(ENFORCE_FLAG))
        if failed:
            raise SwitchFailed(failed, moves)
        return moves

    def set_restart_listener(self, fn):
        """fn(name, now_ms) on every restart; the control feeds its health window with it."""
        self.supervisor.set_restart_listener(fn)

    def which_services(self):
        return self.supervisor.which_services()

    def status(self):
        """For troubleshooting: each service's figures, the guard and the supervisor."""
        services = {}
        for name, _flag in SERVICE_FLAGS:
            services[name] = getattr(self, name).status()
        return {"services": services, "enforcement": self.enforcement.status(),
                "supervisor": self.supervisor.status()}

    def close(self):
        """Drop this device's slot in the global state (a simulator closes every device)."""
        legacy_state.release(self.owner)
