"""agent.flags and agent.events: catalogue, layers and sources, hot path, change events."""
import corekit

from agent.events import EventBus
from agent.flags import CATALOGUE, FLAG_NAMES, FeatureFlags, FlagError, UnknownFlag


def _recorder(bus, name="feature_flag.changed"):
    seen = []
    bus.subscribe(name, lambda n, p: seen.append(p))
    return seen


def test_catalogue_holds_the_runbooks_seven_flags_all_off_by_default():
    assert len(FLAG_NAMES) == 7 and sorted(FLAG_NAMES) == sorted(CATALOGUE)
    flags = FeatureFlags()
    listed = flags.list_all()
    for name in FLAG_NAMES:
        assert flags.enabled(name) is False
        assert listed[name]["value"] is False
        assert listed[name]["source"] == "default"
        assert listed[name]["description"]


def test_sources_follow_override_over_stage_over_config_over_default():
    flags = FeatureFlags({"enable_migration_monitoring": True, "use_ets_agent_registry": False})
    assert flags.source("enable_migration_monitoring") == "config"
    assert flags.source("use_ets_agent_registry") == "config"
    flags.apply(stage_flags={"use_ets_agent_registry": True, "enable_migration_monitoring": True})
    assert flags.source("use_ets_agent_registry") == "stage"
    assert flags.enabled("use_ets_agent_registry") is True
    flags.set_override("use_ets_agent_registry", False)
    assert flags.enabled("use_ets_agent_registry") is False
    assert flags.list_all()["use_ets_agent_registry"]["source"] == "override"
    flags.clear_override("use_ets_agent_registry")
    assert flags.enabled("use_ets_agent_registry") is True
    assert flags.source("use_ets_agent_registry") == "stage"
    flags.apply(stage_flags={})
    # Back to the environment's config once the stage no longer turns it on.
    assert flags.source("enable_migration_monitoring") == "config"
    assert flags.enabled("enable_migration_monitoring") is True
    assert flags.source("use_logger_error_context") == "default"


def test_change_events_carry_name_old_new_and_source():
    bus = EventBus()
    flags = FeatureFlags(events=bus)
    seen = _recorder(bus)
    flags.set_override("enforce_no_process_dict", True)
    assert seen == [{"name": "enforce_no_process_dict", "old": False, "new": True,
                     "source": "override"}]
    flags.set_override("enforce_no_process_dict", True)  # no change, no event
    assert len(seen) == 1
    flags.apply(stage_flags={"use_ets_agent_registry": True})
    assert seen[-1] == {"name": "use_ets_agent_registry", "old": False, "new": True,
                        "source": "stage"}


def test_unknown_name_is_an_error_when_set_and_counted_when_read():
    flags = FeatureFlags()
    exc = corekit.raises(UnknownFlag, flags.set_override, "use_magic", True)
    assert exc.name == "use_magic" and "use_magic" in str(exc)
    corekit.raises(UnknownFlag, flags.clear_override, "use_magic")
    corekit.raises(FlagError, flags.set_override, "use_ets_agent_registry", "yes")
    corekit.raises(FlagError, flags.set_override, "use_ets_agent_registry", 1)
    corekit.raises(FlagError, FeatureFlags, {"nope": True})
    assert flags.enabled("use_magic") is False
    assert flags.enabled("use_magic") is False
    assert flags.enabled("other") is False
    assert flags.unknown_read_total == 3
    assert flags.unknown_reads == {"use_magic": 2, "other": 1}
    assert flags.enabled(["not", "hashable"]) is False
    assert flags.unknown_read_total == 4


def test_unknown_read_counts_stay_bounded():
    flags = FeatureFlags()
    for i in range(100):
        flags.enabled("random_" + str(i))
    assert flags.unknown_read_total == 100
    assert len(flags.unknown_reads) <= 33
    assert sum(flags.unknown_reads.values()) == 100


def test_preview_does_not_change_anything():
    bus = EventBus()
    flags = FeatureFlags(events=bus)
    seen = _recorder(bus)
    values = flags.preview({"use_genserver_telemetry": True}, {"enforce_no_process_dict": True})
    assert values["use_genserver_telemetry"] and values["enforce_no_process_dict"]
    assert not flags.enabled("use_genserver_telemetry")
    assert seen == []


def test_raising_handler_is_counted_and_others_still_run():
    bus = EventBus()
    got = []

    def bad(name, payload):
        raise RuntimeError("dashboard down")

    bus.subscribe("feature_flag.changed", bad)
    bus.subscribe("feature_flag.changed", lambda n, p: got.append(n))
    bus.subscribe("*", lambda n, p: got.append("*" + n))
    flags = FeatureFlags(events=bus)
    flags.set_override("use_ets_sampled_events", True)
    assert got == ["feature_flag.changed", "*feature_flag.changed"]
    assert bus.errors == 1 and "dashboard down" in bus.last_error
    bus.unsubscribe("feature_flag.changed", bad)
    flags.set_override("use_ets_sampled_events", False)
    assert bus.errors == 1
    corekit.raises(TypeError, bus.subscribe, "x", 42)
