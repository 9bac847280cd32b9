"""Per-environment agent configuration: flag defaults, health thresholds, timers.

Owns: Config, a loaded config (from a dict or a JSON file). The built-in
environments (the runbook's config/config.exs, prod.exs and staging.exs), the
default thresholds and the checks are agent.config_rules (see below).
Must never: apply anything. MigrationControl reads a Config and acts on it.

A config names an environment and may override that environment's flags and
any of the numbers below. A key we don't know or a value of the wrong kind is
a ConfigError naming the field, so a typo in a thresholds file cannot silently
leave a device with a default it was never meant to have.
"""
import json

from agent.errors import ConfigError  # one class for every config (re-exported)
from firmware_shim.files import FileReadError, read_text

# The tables (ENVIRONMENTS, DEFAULT_THRESHOLDS) and the checks live in agent.config_rules,
# loaded when a config is (or a table is asked for: __getattr__ below, on CPython and
# MicroPython alike): a board frees it once its agent runs (agent.boot.BOOT_ONLY_MODULES)
# and keeps only the loaded Config.
_LAZY_MODULE = "agent.config_rules"
_LAZY_NAMES = ("ENVIRONMENTS", "DEFAULT_THRESHOLDS")


def __getattr__(name):
    if name in _LAZY_NAMES:
        import agent.config_rules

        return getattr(agent.config_rules, name)
    raise AttributeError("module 'agent.config' has no attribute '%s'" % name)


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
        from agent.config_rules import load_into

        load_into(self, data)

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
        from agent.config_rules import NUMBERS

        for key in NUMBERS:
            out[key] = getattr(self, key)
        return out
