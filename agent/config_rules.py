"""agent.config's tables and checks: the built-in environments, the default health
thresholds, and validating a config given as a dict.

Owns: what every field of a Config may hold (agent.config.Config is the loaded
result; its constructors call load_into). Must never: apply anything.
Only loading a config needs this module, so a board frees it once its agent runs
(agent.boot.BOOT_ONLY_MODULES); agent.config hands out ENVIRONMENTS and
DEFAULT_THRESHOLDS from here when asked for.
"""
from agent.errors import ConfigError
from agent.flags import FlagError, check_flag_map

# config/config.exs sets every flag off; the environments add to it.
ENVIRONMENTS = {
    "default": {},
    "dev": {},
    "prod": {"enable_migration_monitoring": True},
    "staging": {
        "use_ets_agent_registry": True,
        "use_logger_error_context": True,
        "enable_migration_monitoring": True,
    },
}

DEFAULT_THRESHOLDS = {
    "max_error_rate": 0.05,       # runbook: error rate > 5% rolls back
    "max_restarts_per_min": 10,   # runbook: restart frequency > 10/minute
    "max_latency_ratio": 2.0,     # runbook: response time > 2x baseline
    "min_samples": 20,            # fewer outcomes than this: "inconclusive" (per source)
    "min_errors": 8,              # fewer failed calls than this never trip the error rate
}

# name -> (default, minimum allowed, integer only)
NUMBERS = {
    "cooldown_ms": (600000, 0, True),
    "quarantine_after": (3, 1, True),
    "monitoring_interval_ms": (30000, 1, True),
    "history_length": (50, 1, True),
    "window_ms": (300000, 1000, True),        # how far back error rate and latency look
    "restart_window_ms": (60000, 1000, True),  # restarts are counted per minute
    "max_samples": (160, 10, True),   # latencies kept per source over the window (memory bound)
}

# name -> maximum allowed (memory: each latency kept is a float in every source's window)
_MAXIMA = {"max_samples": 2000}

_THRESHOLD_LIMITS = {
    "max_error_rate": (0, False),
    "max_restarts_per_min": (0, False),
    "max_latency_ratio": (1, False),
    "min_samples": (1, True),
    "min_errors": (1, True),
}


def _check_number(field, value, minimum, integer):
    if type(value) is int:
        pass
    elif type(value) is float and not integer:
        pass
    else:
        kind = "an integer" if integer else "a number"
        raise ConfigError(field, f"must be {kind}, not {value!r}")
    if value < minimum:
        raise ConfigError(field, f"must be >= {minimum}, not {value!r}")
    return value


def load_into(config, data):
    """Validate the config dict `data` and set its values on `config` (a Config);
    raises ConfigError naming the field at fault."""
    if not isinstance(data, dict):
        raise ConfigError("(root)", "a config must be a mapping")
    known = ("environment", "flags", "thresholds") + tuple(NUMBERS)
    for key in sorted(data):
        if key not in known:
            raise ConfigError(key, "unknown field (known: {})".format(", ".join(known)))
    env = data.get("environment", "default")
    if env not in ENVIRONMENTS:
        raise ConfigError("environment", "unknown environment {!r} (known: {})".format(
            env, ", ".join(sorted(ENVIRONMENTS))))
    config.environment = env
    overrides = data.get("flags", {})
    try:
        check_flag_map(overrides, "flags")
    except FlagError as exc:
        raise ConfigError("flags", str(exc)) from None
    config.flags = dict(ENVIRONMENTS[env])
    config.flags.update(overrides)
    config.thresholds = dict(DEFAULT_THRESHOLDS)
    given = data.get("thresholds", {})
    if not isinstance(given, dict):
        raise ConfigError("thresholds", "must be a mapping")
    for key in sorted(given):
        if key not in _THRESHOLD_LIMITS:
            raise ConfigError("thresholds." + str(key), "unknown threshold (known: {})".format(
                ", ".join(sorted(_THRESHOLD_LIMITS))))
        minimum, integer = _THRESHOLD_LIMITS[key]
        config.thresholds[key] = _check_number("thresholds." + key, given[key], minimum,
                                               integer)
    if config.thresholds["max_error_rate"] > 1:  # 5 for 5% would never roll back
        raise ConfigError("thresholds.max_error_rate", "is a fraction of calls, 0..1 "
                          "(0.05 is 5%), not {!r}".format(given["max_error_rate"]))
    for key in NUMBERS:
        default, minimum, integer = NUMBERS[key]
        value = data.get(key, default)
        value = _check_number(key, value, minimum, integer)
        if key in _MAXIMA and value > _MAXIMA[key]:
            raise ConfigError(key, f"must be <= {_MAXIMA[key]}, not {value!r}")
        setattr(config, key, value)
