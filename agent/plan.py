"""Migration plans as data: the stages, their flags, risks and monitoring times.

Owns: validating a plan, the default plan (the runbook's four stages), and the
plan hash that commands carry so a device refuses a command meant for another
plan. Must never: read files itself (a path is read through the `fs` handed
in) or change flags (MigrationControl does that).

Stage n turns on the flags of stages 1..n; stage 0 is "no migration flags".
The hash is the hex SHA-256 of the canonical msgpack of `to_dict()`, so it is
the same on CPython and MicroPython and does not depend on key order.
"""
import hashlib
import json

from agent.errors import AgentError
from agent.flags import CATALOGUE
from firmware_shim.codec import canonical_digest
from firmware_shim.files import FileReadError, read_text

RISKS = ("low", "medium", "high", "critical")

# Success criteria a stage may add to the environment's health thresholds.
CRITERIA = ("max_error_rate", "max_restarts_per_min", "max_latency_ratio", "max_performance_impact")

_STAGE_KEYS = ("number", "name", "risk", "flags", "monitor_minutes", "success_criteria",
               "description")
_PLAN_KEYS = ("name", "stages", "description")


def default_plan():
    """The default plan's data: the runbook's four stages (a fresh dict each call, made
    only when asked: a board keeps the Plan built from it, not this table too)."""
    return {
        "name": "otp-cleanup",
        "description": "The runbook's migration from hidden global state to supervised services.",
        "stages": [
            {"number": 1, "name": "registry", "risk": "low", "monitor_minutes": 30,
             "flags": ["use_ets_agent_registry", "enable_migration_monitoring"],
             "description": "Agent registry moves to a supervised service."},
            {"number": 2, "name": "error_context", "risk": "medium", "monitor_minutes": 120,
             "flags": ["use_logger_error_context"],
             "description": "Error context moves into log-record metadata."},
            {"number": 3, "name": "telemetry", "risk": "high", "monitor_minutes": 240,
             "flags": ["use_genserver_telemetry", "use_genserver_span_management",
                       "use_ets_sampled_events"],
             "success_criteria": {"max_performance_impact": 0.10},
             "description": "Spans and sampled events move to supervised services."},
            {"number": 4, "name": "enforcement", "risk": "critical", "monitor_minutes": 1440,
             "flags": ["enforce_no_process_dict"],
             "description": "Any use of a legacy global-state path is a violation."},
        ],
    }


class PlanError(AgentError):
    """A plan that cannot be used, with the reason."""


def _hex(data):
    return "".join(f"{b:02x}" for b in data)


def _is_number(value):
    return type(value) is int or type(value) is float


class Stage:
    def __init__(self, number, name, risk, flags, monitor_minutes, success_criteria, description):
        self.number = number
        self.name = name
        self.risk = risk
        self.flags = flags
        self.monitor_minutes = monitor_minutes
        self.success_criteria = success_criteria
        self.description = description

    @property
    def monitor_ms(self):
        return self.monitor_minutes * 60000

    def to_dict(self):
        return {
            "number": self.number, "name": self.name, "risk": self.risk,
            "flags": list(self.flags), "monitor_minutes": self.monitor_minutes,
            "success_criteria": dict(self.success_criteria), "description": self.description,
        }

    def __repr__(self):
        return f"Stage({self.number}, {self.name!r})"


class Plan:
    def __init__(self, name, stages, description=""):
        self.name = name
        self.stages = stages
        self.description = description
        self.hash = _hex(canonical_digest(self.to_dict(), hashlib.sha256()).digest())

    # -- constructors -------------------------------------------------------

    @classmethod
    def default(cls):
        return cls.from_dict(default_plan())

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict):
            raise PlanError(f"a plan must be a mapping, not {type(data).__name__}")
        for key in sorted(data):
            if key not in _PLAN_KEYS:
                raise PlanError(f"unknown plan field {key!r}")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise PlanError("plan field 'name' must be a non-empty string")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise PlanError("plan field 'description' must be a string")
        raw = data.get("stages")
        if not isinstance(raw, list) or not raw:
            raise PlanError("plan field 'stages' must be a non-empty list")
        stages = []
        seen_flags = {}
        for index, item in enumerate(raw):
            stage = _stage_from_dict(item, index + 1)
            for flag in stage.flags:
                if flag in seen_flags:
                    raise PlanError(f"flag {flag} is turned on by both stage {seen_flags[flag]} " +
                                    f"and stage {stage.number}")
                seen_flags[flag] = stage.number
            stages.append(stage)
        return cls(name, stages, description)

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise PlanError(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path, fs):
        try:
            text = read_text(fs, path)
        except FileReadError as exc:
            raise PlanError("plan file: " + str(exc)) from None
        return cls.from_json(text)

    # -- reading ------------------------------------------------------------

    @property
    def max_stage(self):
        return len(self.stages)

    def stage(self, n):
        if type(n) is not int or n < 1 or n > len(self.stages):
            raise PlanError(f"plan {self.name} has stages 1..{len(self.stages)}, not {n!r}")
        return self.stages[n - 1]

    def flags_for_stage(self, n):
        """{flag: True} for every flag that stages 1..n turn on (n = 0: none)."""
        if type(n) is not int or n < 0 or n > len(self.stages):
            raise PlanError(f"plan {self.name} has stages 0..{len(self.stages)}, not {n!r}")
        on = {}
        for stage in self.stages[:n]:
            for flag in stage.flags:
                on[flag] = True
        return on

    def to_dict(self):
        return {
            "name": self.name, "description": self.description,
            "stages": [s.to_dict() for s in self.stages],
        }

    def summary(self):
        return {"name": self.name, "hash": self.hash, "stages": len(self.stages)}


def _stage_from_dict(item, expected_number):
    if not isinstance(item, dict):
        raise PlanError(f"stage {expected_number} must be a mapping")
    for key in sorted(item):
        if key not in _STAGE_KEYS:
            raise PlanError(f"stage {expected_number}: unknown field {key!r}")
    number = item.get("number")
    if number != expected_number or type(number) is not int:
        raise PlanError(f"stage {expected_number}: 'number' must be {expected_number} "
                        "(stages count up from 1)")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise PlanError(f"stage {number}: 'name' must be a non-empty string")
    risk = item.get("risk")
    if risk not in RISKS:
        raise PlanError("stage {}: 'risk' must be one of {}, not {!r}".format(
            number, ", ".join(RISKS), risk))
    flags = item.get("flags")
    if not isinstance(flags, list) or not flags:
        raise PlanError(f"stage {number}: 'flags' must be a non-empty list")
    for flag in flags:
        if flag not in CATALOGUE:
            raise PlanError(f"stage {number}: unknown flag {flag!r}")
    if len(set(flags)) != len(flags):
        raise PlanError(f"stage {number}: a flag is listed twice")
    minutes = item.get("monitor_minutes")
    if type(minutes) is not int or minutes <= 0:
        raise PlanError(f"stage {number}: 'monitor_minutes' must be a positive integer")
    criteria = item.get("success_criteria", {})
    if not isinstance(criteria, dict):
        raise PlanError(f"stage {number}: 'success_criteria' must be a mapping")
    for key in sorted(criteria):
        if key not in CRITERIA:
            raise PlanError("stage {}: unknown success criterion {!r} (known: {})".format(
                number, key, ", ".join(CRITERIA)))
        if not _is_number(criteria[key]) or criteria[key] < 0:
            raise PlanError(f"stage {number}: success criterion {key} must be a number >= 0")
    description = item.get("description", "")
    if not isinstance(description, str):
        raise PlanError(f"stage {number}: 'description' must be a string")
    return Stage(number, name, risk, list(flags), minutes, dict(criteria), description)
