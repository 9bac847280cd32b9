"""The flags and health door for applications that run in the agent's own
interpreter (a MicroPython board): the same things as the Pi's files, API and
metrics socket, as an import.

    from agent import apps

    if apps.enabled("use_genserver_telemetry"):
        ...
    apps.on_change(lambda name, value: ...)   # after every committed flag change
    apps.record(True, 12)                     # one call's outcome (ok, latency_ms)

agent.boot attaches the running MigrationControl (`attach`); before that,
enabled() answers the default and record() drops the outcome (counted).
"""
DEFAULT_SOURCE = "app"

_control = None
_callbacks = []
dropped = 0
callback_errors = 0


def attach(control):
    """Make `control` the one these functions use (agent.boot does this)."""
    global _control
    if _control is not None:
        _control.events.unsubscribe("feature_flag.changed", _on_flag_changed)
    _control = control
    control.events.subscribe("feature_flag.changed", _on_flag_changed)


def detach():
    global _control
    if _control is not None:
        _control.events.unsubscribe("feature_flag.changed", _on_flag_changed)
    _control = None


def enabled(name, default=False):
    if _control is None:
        return default
    values = _control.flags.values()
    return values.get(name, default)


def revision():
    return -1 if _control is None else _control.seq


def on_change(callback):
    """callback(name, value) after each flag change; returns callback (a decorator too)."""
    if callback not in _callbacks:
        _callbacks.append(callback)
    return callback


def remove_callback(callback):
    if callback in _callbacks:
        _callbacks.remove(callback)


def record(ok, latency_ms=None, source=DEFAULT_SOURCE):
    """One outcome into the health window; False when no agent is attached."""
    global dropped
    if _control is None:
        dropped += 1
        return False
    _control.record_outcome(ok, latency_ms, source=source)
    return True


def _on_flag_changed(name, payload):
    global callback_errors
    for cb in list(_callbacks):
        try:
            cb(payload["name"], payload["new"])
        except Exception:  # an application's bug must not stop the agent's commit path
            callback_errors += 1
