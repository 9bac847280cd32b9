"""agent.plan's tables and checks: the default plan, the risks and success criteria a
stage may name, and validating a plan given as a dict, a JSON text or a file.

Owns: what a plan may hold (agent.plan.Plan is the loaded result; its constructors
call from_dict, from_json and load here). Must never: read files itself (a path is
read through the `fs` handed in). Only loading a plan needs this module, so a board
frees it once its agent runs (agent.boot.BOOT_ONLY_MODULES); agent.plan hands out
RISKS, CRITERIA and default_plan from here when asked for.
"""
import json

from agent.errors import PlanError
from agent.flags import CATALOGUE
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


def _is_number(value):
    return type(value) is int or type(value) is float


def from_dict(data, make_stage):
    """(name, stages, description) of the plan dict `data`, each stage made by
    make_stage(number, name, risk, flags, monitor_minutes, success_criteria,
    description) (agent.plan.Stage); raises PlanError naming what is wrong."""
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
        stage = make_stage(*_stage_fields(item, index + 1))
        for flag in stage.flags:
            if flag in seen_flags:
                raise PlanError(f"flag {flag} is turned on by both stage {seen_flags[flag]} " +
                                f"and stage {stage.number}")
            seen_flags[flag] = stage.number
        stages.append(stage)
    return name, stages, description


def from_json(text):
    """The plan dict in the JSON `text`."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PlanError(f"plan is not valid JSON: {exc}") from None
    return data


def load(path, fs):
    """The plan dict in the JSON file at `path` (read through `fs`)."""
    try:
        text = read_text(fs, path)
    except FileReadError as exc:
        raise PlanError("plan file: " + str(exc)) from None
    return from_json(text)


def _stage_fields(item, expected_number):
    """The Stage arguments of the stage dict `item`, checked."""
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
    return number, name, risk, list(flags), minutes, dict(criteria), description
