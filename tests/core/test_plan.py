"""agent.plan and agent.config: the runbook's plan and environments as validated data."""
import corekit

from agent.config import DEFAULT_THRESHOLDS, Config, ConfigError
from agent.flags import FLAG_NAMES
from agent.plan import Plan, PlanError, default_plan
from firmware_shim.files import FileSystem


def _copy(value):
    # A deep copy without the copy module (MicroPython has none).
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def test_default_plan_is_the_runbooks_four_stages():
    plan = Plan.default()
    assert plan.max_stage == 4
    assert [s.risk for s in plan.stages] == ["low", "medium", "high", "critical"]
    assert [s.monitor_minutes for s in plan.stages] == [30, 120, 240, 1440]
    assert plan.stage(1).flags == ["use_ets_agent_registry", "enable_migration_monitoring"]
    assert plan.stage(2).flags == ["use_logger_error_context"]
    assert sorted(plan.stage(3).flags) == sorted(
        ["use_genserver_telemetry", "use_genserver_span_management", "use_ets_sampled_events"])
    assert plan.stage(4).flags == ["enforce_no_process_dict"]
    assert plan.stage(3).success_criteria == {"max_performance_impact": 0.10}
    assert plan.stage(4).monitor_ms == 24 * 3600 * 1000


def test_stage_n_turns_on_the_flags_of_stages_one_to_n():
    plan = Plan.default()
    assert plan.flags_for_stage(0) == {}
    assert sorted(plan.flags_for_stage(2)) == sorted(
        ["use_ets_agent_registry", "enable_migration_monitoring", "use_logger_error_context"])
    assert sorted(plan.flags_for_stage(4)) == sorted(FLAG_NAMES)
    corekit.raises(PlanError, plan.flags_for_stage, 5)
    corekit.raises(PlanError, plan.stage, 0)
    corekit.raises(PlanError, plan.stage, "1")


def test_hash_is_hex_sha256_and_follows_content_not_key_order():
    a = Plan.default()
    assert len(a.hash) == 64 and int(a.hash, 16) >= 0
    assert Plan.from_dict(_copy(default_plan())).hash == a.hash
    assert Plan.from_dict(a.to_dict()).hash == a.hash
    changed = _copy(default_plan())
    changed["stages"][0]["monitor_minutes"] = 31
    assert Plan.from_dict(changed).hash != a.hash


def test_plan_loads_from_a_json_file():
    import json
    d = corekit.tmpdir("plan")
    with open(d + "/plan.json", "w") as f:
        f.write(json.dumps(default_plan()))
    assert Plan.load(d + "/plan.json", FileSystem()).hash == Plan.default().hash
    corekit.raises(PlanError, Plan.load, d + "/missing.json", FileSystem())
    with open(d + "/bad.json", "w") as f:
        f.write("{not json")
    corekit.raises(PlanError, Plan.load, d + "/bad.json", FileSystem())


def _bad(mutate, words):
    data = _copy(default_plan())
    mutate(data)
    exc = corekit.raises(PlanError, Plan.from_dict, data)
    for w in words:
        assert w in str(exc), (w, str(exc))


def test_invalid_plans_are_refused_with_the_reason():
    _bad(lambda d: d.update(extra=1), ["extra"])
    _bad(lambda d: d.update(name=""), ["name"])
    _bad(lambda d: d.update(stages=[]), ["stages"])
    _bad(lambda d: d["stages"][1].update(number=3), ["stage 2", "number"])
    _bad(lambda d: d["stages"][0].update(risk="spicy"), ["risk", "spicy"])
    _bad(lambda d: d["stages"][0].update(flags=["use_magic"]), ["use_magic"])
    _bad(lambda d: d["stages"][0].update(flags=[]), ["flags"])
    _bad(lambda d: d["stages"][1].update(flags=["use_ets_agent_registry"]),
         ["use_ets_agent_registry", "stage 1", "stage 2"])
    _bad(lambda d: d["stages"][0].update(monitor_minutes=0), ["monitor_minutes"])
    _bad(lambda d: d["stages"][0].update(monitor_minutes=True), ["monitor_minutes"])
    _bad(lambda d: d["stages"][2].update(success_criteria={"fast": 1}), ["fast"])
    _bad(lambda d: d["stages"][2].update(success_criteria={"max_error_rate": "x"}),
         ["max_error_rate"])
    _bad(lambda d: d["stages"][0].update(colour="red"), ["colour"])
    corekit.raises(PlanError, Plan.from_dict, [1, 2])
    corekit.raises(PlanError, Plan.from_json, "[")


def test_environments_follow_the_runbooks_config_files():
    assert Config().flags == {}
    assert Config("prod").flags == {"enable_migration_monitoring": True}
    staging = Config.from_dict({"environment": "staging"})
    assert staging.flags == {"use_ets_agent_registry": True, "use_logger_error_context": True,
                             "enable_migration_monitoring": True}
    tuned = Config.from_dict({"environment": "staging",
                              "flags": {"use_logger_error_context": False},
                              "thresholds": {"max_error_rate": 0.02},
                              "cooldown_ms": 1000, "quarantine_after": 2})
    assert tuned.flags["use_logger_error_context"] is False
    assert tuned.flags["use_ets_agent_registry"] is True
    assert tuned.thresholds["max_error_rate"] == 0.02
    assert tuned.thresholds["max_restarts_per_min"] == DEFAULT_THRESHOLDS["max_restarts_per_min"]
    assert tuned.cooldown_ms == 1000 and tuned.quarantine_after == 2
    assert tuned.monitoring_interval_ms == 30000
    assert Config.from_dict(tuned.to_dict()).to_dict() == tuned.to_dict()


def test_config_errors_name_the_field():
    cases = [
        ({"environment": "moon"}, "environment"),
        ({"colour": 1}, "colour"),
        ({"flags": {"use_magic": True}}, "flags"),
        ({"flags": {"use_ets_agent_registry": "on"}}, "flags"),
        ({"thresholds": {"max_error_rate": "high"}}, "thresholds.max_error_rate"),
        ({"thresholds": {"max_error_rate": -0.1}}, "thresholds.max_error_rate"),
        ({"thresholds": {"speed": 1}}, "thresholds.speed"),
        ({"thresholds": {"min_samples": 2.5}}, "thresholds.min_samples"),
        ({"cooldown_ms": -1}, "cooldown_ms"),
        ({"quarantine_after": 0}, "quarantine_after"),
        ({"history_length": True}, "history_length"),
        ({"monitoring_interval_ms": 1.5}, "monitoring_interval_ms"),
    ]
    for data, field in cases:
        exc = corekit.raises(ConfigError, Config.from_dict, data)
        assert exc.field == field, (data, exc.field)
        assert field in str(exc)
    corekit.raises(ConfigError, Config.coerce, 42)
    corekit.raises(ConfigError, Config.from_json, "{")


def test_config_loads_from_a_json_file():
    d = corekit.tmpdir("cfg")
    with open(d + "/prod.json", "w") as f:
        f.write('{"environment": "prod", "thresholds": {"min_samples": 5}}')
    config = Config.load(d + "/prod.json", FileSystem())
    assert config.environment == "prod" and config.thresholds["min_samples"] == 5
    exc = corekit.raises(ConfigError, Config.load, d + "/none.json", FileSystem())
    assert exc.field == "(file)"


def test_a_config_loads_its_checks_again_after_a_board_released_them():
    # A board frees agent.config_rules once its agent runs (agent.boot.BOOT_ONLY_MODULES):
    # a Config made later, or a table asked for, loads it again.
    import sys

    import agent.config
    from firmware_shim.board import Board

    name = "agent.config_rules"
    kept = sys.modules[name]
    try:
        Board().release_modules((name,))
        assert name not in sys.modules
        assert Config(environment="prod").flags == {"enable_migration_monitoring": True}
        assert name in sys.modules
        Board().release_modules((name,))
        assert agent.config.DEFAULT_THRESHOLDS["max_error_rate"] == 0.05
        corekit.raises(ConfigError, Config, environment="nope")
    finally:
        sys.modules[name] = kept
        agent.config_rules = kept  # type: ignore[attr-defined]
    corekit.raises(AttributeError, getattr, agent.config, "no_such_name")


def test_a_plan_loads_its_checks_again_after_a_board_released_them():
    # A board frees agent.plan_rules once its agent runs (agent.boot.BOOT_ONLY_MODULES):
    # a Plan made later, or a table asked for, loads it again.
    import sys

    import agent.plan
    from firmware_shim.board import Board

    name = "agent.plan_rules"
    expected = Plan.default().hash
    kept = sys.modules[name]
    try:
        Board().release_modules((name,))
        assert name not in sys.modules
        assert Plan.default().hash == expected and name in sys.modules
        Board().release_modules((name,))
        assert agent.plan.RISKS == ("low", "medium", "high", "critical")
        corekit.raises(PlanError, Plan.from_dict, {"name": "x"})
        corekit.raises(PlanError, Plan.from_json, "{")
    finally:
        sys.modules[name] = kept
        agent.plan_rules = kept  # type: ignore[attr-defined]
    corekit.raises(AttributeError, getattr, agent.plan, "no_such_name")
