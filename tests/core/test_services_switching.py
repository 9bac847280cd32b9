"""Moving services between implementations with the flags, both ways, without loss;
and stage-4 enforcement, which records legacy use only when its flag is on."""
import corekit
from test_services_kit import make

from agent.services import (
    LEGACY,
    NEW,
    SERVICE_FLAGS,
    LegacyPathViolation,
    SwitchFailed,
    legacy_state,
)
from agent.services import enforcement as enforcement_mod


def fill(s, tag):
    """Put some of everything into every service; return what must survive a switch."""
    s.registry.register(tag + "-agent", {"tag": tag})
    s.registry.lookup("nobody")
    s.error_context.set_context({"tag": tag})
    s.error_context.spawn_task(tag + "-task")
    span = s.spans.start_span(tag + "-span", {"tag": tag})
    s.sampled_events.set_window_ms(60000)
    s.sampled_events.set_rate("sampled", 0.5)
    s.sampled_events.emit_event("evt", {"v": 1}, {"tag": tag}, now_ms=0)
    s.sampled_events.emit_event("sampled", {}, {"n": 1}, now_ms=0)
    return span


def check(s, tag, span):
    assert s.registry.lookup(tag + "-agent") == {"tag": tag}
    assert s.registry.status()["failures"] == 1
    assert s.error_context.get_context() == {"tag": tag}
    assert s.error_context.context_for_task(tag + "-task") == {"tag": tag}
    assert [x["id"] for x in s.spans.get_stack()] == [span]
    se = s.sampled_events
    # dedup window, sampling accumulator and telemetry buffer all came along
    assert se.emit_event("evt", {"v": 2}, {"tag": tag}, now_ms=10) == "duplicate"
    assert se.emit_event("sampled", {}, {"n": 2}, now_ms=10) == "sampled_out"
    assert [e["name"] for e in s.telemetry.drain()] == ["evt", "sampled"]
    assert s.spans.end_span(span)["name"] == tag + "-span"


def impls(s):
    return {row["name"]: row["impl"] for row in s.supervisor.which_services()}


def test_forward_switch_keeps_every_entry():
    s, flags, _clock, _events = make(stage=0)
    assert set(impls(s).values()) == {LEGACY}
    span = fill(s, "fwd")
    flags.set_stage(3)
    moves = s.apply_flags()
    assert [m["service"] for m in moves] == [name for name, _flag in SERVICE_FLAGS]
    assert all(m["from"] == LEGACY and m["to"] == NEW for m in moves)
    assert set(impls(s).values()) == {NEW}
    assert legacy_state.owner_keys(s.owner) == []  # nothing left behind in global state
    check(s, "fwd", span)


def test_backward_switch_on_rollback_keeps_every_entry():
    s, flags, _clock, _events = make(stage=3)
    assert set(impls(s).values()) == {NEW}
    span = fill(s, "back")
    flags.set_stage(0)
    moves = s.apply_flags()
    assert len(moves) == len(SERVICE_FLAGS)
    assert all(m["to"] == LEGACY for m in moves)
    assert legacy_state.owner_keys(s.owner) == sorted(
        ["registry", "error_context", "telemetry", "spans", "sampled_events"])
    check(s, "back", span)


def test_stage_by_stage_walk_moves_only_the_stage_services():
    s, flags, _clock, _events = make(stage=0)
    s.registry.register("keep-me")
    expected = {1: ["registry"], 2: ["error_context"],
                3: ["telemetry", "spans", "sampled_events"], 4: []}
    for stage in (1, 2, 3, 4):
        flags.set_stage(stage)
        assert [m["service"] for m in s.apply_flags()] == expected[stage]
        assert s.apply_flags() == []  # applying again is a no-op
    for stage in (3, 2, 1, 0):
        flags.set_stage(stage)
        assert [m["service"] for m in s.apply_flags()] == expected[stage + 1]
    assert s.registry.list_agents() == ["keep-me"]


def test_callers_holding_a_front_follow_the_switch():
    s, flags, _clock, _events = make(stage=0)
    reg = s.registry
    reg.register("a")
    flags.set_stage(1)
    s.apply_flags()
    assert reg.impl_name == NEW and reg.lookup("a") == {}


def test_hot_path_reads_no_flags():
    s, flags, _clock, _events = make(stage=3)
    s.registry.register("a")
    before = flags.reads
    for _ in range(50):
        s.registry.lookup("a")
        s.error_context.get_context()
        s.spans.with_span("x", None, s.sampled_events.emit_event, "e", {})
    assert flags.reads == before


def test_enforcement_records_nothing_before_stage_4():
    s, flags, _clock, _events = make(stage=0)
    for stage in (0, 1, 2, 3):
        flags.set_stage(stage)
        s.apply_flags()
        s.registry.register(f"s{stage}")  # legacy until stage 1
        s.error_context.set_context({"stage": stage})  # legacy until stage 2
        s.spans.with_span("x", None, s.sampled_events.emit_event, "e", {"s": stage})
    assert s.enforcement.total == 0 and s.enforcement.violations() == []
    assert s.enforcement.status()["active"] is False


def test_enforcement_records_legacy_use_at_stage_4():
    s, flags, clock, _events = make(stage=3)
    s.registry.register("a")
    flags.set_stage(4)
    flags.override("use_ets_agent_registry", False)  # an operator keeps one legacy path
    moves = s.apply_flags()
    assert moves == [{"service": "registry", "from": NEW, "to": LEGACY}]
    assert s.enforcement.total == 0  # the migration itself is not a violation
    clock.advance(5)
    assert s.registry.lookup("a") == {}  # still works: recorded, not refused
    s.error_context.set_context({"fine": True})  # new path: not a violation
    assert s.enforcement.violations() == [
        {"service": "registry", "operation": "lookup", "now_ms": 1005}]
    assert s.enforcement.counts() == {"registry": 1}
    flags.override("use_ets_agent_registry", True)
    s.apply_flags()
    s.registry.lookup("a")
    assert s.enforcement.total == 1


def test_strict_enforcement_raises_before_touching_state():
    s, flags, _clock, _events = make(stage=4, strict=True)
    flags.override("use_logger_error_context", False)
    s.apply_flags()
    err = corekit.raises(LegacyPathViolation, s.error_context.set_context, {"x": 1})
    assert (err.service, err.operation) == ("error_context", "set_context")
    flags.override("use_logger_error_context", True)
    s.apply_flags()
    assert s.error_context.get_context() == {}


def test_violations_list_is_bounded_and_keeps_the_newest():
    s, flags, _clock, _events = make(stage=4)
    flags.override("use_ets_agent_registry", False)
    s.apply_flags()
    n = enforcement_mod.MAX_VIOLATIONS + 10
    for _ in range(n):
        s.registry.count()
    s.registry.lookup("x")
    assert s.enforcement.total == n + 1
    assert len(s.enforcement.violations()) == enforcement_mod.MAX_VIOLATIONS
    assert s.enforcement.violations()[-1]["operation"] == "lookup"
    assert s.enforcement.status()["dropped"] == 11
    s.enforcement.reset()
    assert s.enforcement.violations() == [] and s.enforcement.total == 0


def test_many_devices_in_one_process_stay_apart_through_switches():
    devices = [make(stage=0) for _ in range(20)]
    for i, (s, flags, _clock, _events) in enumerate(devices):
        s.registry.register(f"dev-{i}")
        if i % 2:
            flags.set_stage(1)
            s.apply_flags()
    for i, (s, _flags, _clock, _events) in enumerate(devices):
        assert s.registry.list_agents() == [f"dev-{i}"]
        assert s.registry.impl_name == (NEW if i % 2 else LEGACY)
        s.close()


def test_a_service_that_cannot_move_stays_whole_and_the_rest_move():
    s, flags, _clock, _events = make(stage=2)
    sid = s.spans.start_span("held")
    stuck = s.spans.impl

    def unreadable():
        raise RuntimeError("state unreadable")

    stuck.export_state = unreadable
    flags.set_stage(3)
    err = corekit.raises(SwitchFailed, s.apply_flags)
    assert err.failed == [("spans", "RuntimeError")]
    assert [m["service"] for m in err.moves] == ["telemetry", "sampled_events"]
    assert s.spans.impl is stuck and s.spans.impl_name == LEGACY
    assert [x["id"] for x in s.spans.get_stack()] == [sid]
    del stuck.export_state  # the fault clears: applying again finishes the move
    assert s.apply_flags() == [{"service": "spans", "from": LEGACY, "to": NEW}]
    assert [x["id"] for x in s.spans.get_stack()] == [sid]
