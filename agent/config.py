"""Per-environment agent configuration: flag defaults, health thresholds, timers.

Owns: the built-in environments (the runbook's config/config.exs, prod.exs and
staging.exs) and validating a config given as a dict or a JSON file.
Must never: apply anything. MigrationControl reads a Config and acts on it.

A config names an environment and may override that environment's flags and
any of the numbers below. A key we don't know or a value of the wrong kind is
a ConfigError naming the field, so a typo in a thresholds file cannot silently
leave a device with a default it was never meant to have.
"""
import json

from agent.errors import ConfigError  # one class for every config (re-exported)
from agent.flags import FlagError, check_flag_map
from firmware_shim.files import FileReadError, read_text

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
_NUMBERS = {
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


class Config:
    def __init__(self, environment="default", flags=None, thresholds=None, **numbers):
        data = {"environment": environment}
        if flags is not None:
            data["flags"] = flags
        if thresholds is not None:
            data["thresholds"] = thresholds
        data.update(numbers)
        self._load(data)

    def _load(self, data):
        if not isinstance(data, dict):
            raise ConfigError("(root)", "a config must be a mapping")
        known = ("environment", "flags", "thresholds") + tuple(_NUMBERS)
        for key in sorted(data):
            if key not in known:
                raise ConfigError(key, "unknown field (known: {})".format(", ".join(known)))
        env = data.get("environment", "default")
        if env not in ENVIRONMENTS:
            raise ConfigError("environment", "unknown environment {!r} (known: {})".format(
                env, ", ".join(sorted(ENVIRONMENTS))))
        self.environment = env
        overrides = data.get("flags", {})
        try:
            check_flag_map(overrides, "flags")
        except FlagError as exc:
            raise ConfigError("flags", str(exc)) from None
        self.flags = dict(ENVIRONMENTS[env])
        self.flags.update(overrides)
        self.thresholds = dict(DEFAULT_THRESHOLDS)
        given = data.get("thresholds", {})
        if not isinstance(given, dict):
            raise ConfigError("thresholds", "must be a mapping")
        for key in sorted(given):
            if key not in _THRESHOLD_LIMITS:
                raise ConfigError("thresholds." + str(key), "unknown threshold (known: {})".format(
                    ", ".join(sorted(_THRESHOLD_LIMITS))))
            minimum, integer = _THRESHOLD_LIMITS[key]
            self.thresholds[key] = _check_number("thresholds." + key, given[key], minimum,
                                                 integer)
        if self.thresholds["max_error_rate"] > 1:  # 5 for 5% would never roll back
            raise ConfigError("thresholds.max_error_rate", "is a fraction of calls, 0..1 "
                              "(0.05 is 5%), not {!r}".format(given["max_error_rate"]))
        for key in _NUMBERS:
            default, minimum, integer = _NUMBERS[key]
            value = data.get(key, default)
            value = _check_number(key, value, minimum, integer)
            if key in _MAXIMA and value > _MAXIMA[key]:
                raise ConfigError(key, f"must be <= {_MAXIMA[key]}, not {value!r}")
            setattr(self, key, value)

    @classmethod
    def from_dict(cls, data):
        config = cls()  # MicroPython has no cls.__new__ to skip __init__
        config._load(data)
        return config

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError("(root)", f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path, fs):
        try:
            text = read_text(fs, path)
        except FileReadError as exc:
            raise ConfigError("(file)", str(exc)) from None
        return cls.from_json(text)

    @classmethod
    def coerce(cls, value):
        """A Config from None (the default environment), a dict, or a Config."""
        if value is None:
            return cls()
        if isinstance(value, Config):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        raise ConfigError("(root)", f"expected a Config or a mapping, not {type(value).__name__}")

    def to_dict(self):
        out = {"environment": self.environment, "flags": dict(self.flags),
               "thresholds": dict(self.thresholds)}
        for key in _NUMBERS:
            out[key] = getattr(self, key)
        return out
