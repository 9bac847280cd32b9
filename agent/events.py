"""EventBus: the agent's telemetry events, delivered to subscribed handlers.

Owns: the handler lists and the count of handlers that raised.
Must never: let a handler's exception reach the caller. A migration that has
committed must finish even if a dashboard hook is broken, so a raising handler
is counted (`errors`), remembered (`last_error`) and skipped.

Event names follow the runbook: "migration.stage_enabled", "migration.rollback",
"migration.emergency_rollback", "feature_flag.changed", plus "health.violation"
and "services.restart". A handler subscribed to "*" sees every event.
"""

WILDCARD = "*"


class EventBus:
    def __init__(self, log=None):
        self._handlers = {}
        self._log = log  # optional callable(str); the core prints nothing itself
        self.errors = 0
        self.emitted = 0
        self.last_error = None

    def subscribe(self, name, handler):
        if not callable(handler):
            raise TypeError("event handler must be callable")
        handlers = self._handlers.setdefault(name, [])
        if handler not in handlers:
            handlers.append(handler)

    def unsubscribe(self, name, handler):
        handlers = self._handlers.get(name)
        if handlers and handler in handlers:
            handlers.remove(handler)

    def emit(self, name, payload):
        self.emitted += 1
        # Copy the lists: a handler may unsubscribe itself while we iterate.
        named = self._handlers.get(name)
        wild = self._handlers.get(WILDCARD)
        if named:
            targets = named + wild if wild else named[:]
        else:
            targets = wild[:] if wild else ()
        for handler in targets:
            try:
                handler(name, payload)
            except Exception as exc:  # noqa: BLE001 - handlers must never break the caller
                self.errors += 1
                self.last_error = f"{name}: {type(exc).__name__}: {exc}"
                if self._log is not None:
                    try:
                        self._log("event handler failed: " + self.last_error)
                    except Exception:  # noqa: BLE001 - a broken logger is no reason to crash
                        pass

    def handler_count(self, name=None):
        if name is None:
            return sum(len(h) for h in self._handlers.values())
        return len(self._handlers.get(name, ()))
