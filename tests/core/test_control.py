"""agent.control: the transition table, every rollback path, cooldown, quarantine,
restart persistence, history, events, extra_changes and a power cut mid stage change."""
import corekit
import faultfs

from agent import transitions as tr
from agent.config import Config
from agent.control import (
    AT_STAGE,
    COOLDOWN,
    QUARANTINED,
    ControlError,
    MigrationControl,
    NotReady,
    Quarantined,
    TransitionRefused,
)
from agent.flags import FLAG_NAMES, UnknownFlag
from agent.plan import Plan, default_plan
from agent.store import Store, StoreError
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

MINUTE = 60000


def _open(d=None, clock=None, config=None, fs=None, plan=None):
    d = d or corekit.tmpdir("ctl")
    clock = clock or ManualClock()
    return MigrationControl.open(d, fs or FileSystem(), clock, plan=plan, config=config), d, clock


def _traffic(c, n=30, errors=0, latency=10):
    for i in range(n):
        c.record_outcome(i >= errors, latency)


def _advance_to(c, stage):
    while c.stage < stage:
        _traffic(c)
        c.migrate_to_stage(c.stage + 1)


def _violate(c):
    _traffic(c, 30, errors=10)
    return c.check_health_and_rollback()


def _events(c):
    seen = []
    c.events.subscribe("*", lambda name, payload: seen.append((name, payload)))
    return seen


def _stage_flags(stage):
    on = Plan.default().flags_for_stage(stage)
    return {name: bool(on.get(name)) for name in FLAG_NAMES}


# -- the table itself ---------------------------------------------------------

def test_table_answers_every_state_event_pair():
    for state in tr.STATES:
        for event in tr.EVENTS:
            if event in tr.TRANSITIONS[state]:
                assert tr.next_state(state, event) == tr.TRANSITIONS[state][event]
                assert tr.TRANSITIONS[state][event] in tr.STATES
            else:
                exc = corekit.raises(TransitionRefused, tr.next_state, state, event)
                assert exc.state == state and exc.event == event and exc.reason
                assert state in str(exc) and event in str(exc)
    assert isinstance(corekit.raises(TransitionRefused, tr.next_state, QUARANTINED,
                                     tr.MigrateRequested), Quarantined)
    assert not isinstance(corekit.raises(TransitionRefused, tr.next_state, COOLDOWN,
                                         tr.MigrateRequested), Quarantined)
    assert corekit.raises(TransitionRefused, tr.next_state, "LIMBO", tr.MigrateRequested).reason
    assert corekit.raises(TransitionRefused, tr.next_state, AT_STAGE, "Dance").reason
    # Going back is always allowed: every state accepts every kind of rollback.
    for state in tr.STATES:
        for event in (tr.RollbackRequested, tr.EmergencyRollback, tr.HealthViolation):
            assert event in tr.TRANSITIONS[state]


def test_table_text_lists_every_transition_and_refusal():
    lines = tr.table_text()
    allowed = sum(len(v) for v in tr.TRANSITIONS.values())
    refused = sum(len(v) for v in tr.REFUSALS.values())
    assert len(lines) == allowed + refused
    assert "COOLDOWN --CooldownExpired--> AT_STAGE" in lines
    assert any(line.startswith("QUARANTINED --MigrateRequested--x refused") for line in lines)
    for state in tr.STATES:  # refusals name only pairs the table leaves out
        for event in tr.REFUSALS.get(state, {}):
            assert event not in tr.TRANSITIONS[state]


# -- driving each state through the control ---------------------------------

TABLE_CONFIG = {"quarantine_after": 2, "cooldown_ms": 10 * MINUTE}


def _in_state(state):
    """A control at stage 2 in `state` (quarantine_after=2 leaves room for one more)."""
    c, d, clock = _open(config=TABLE_CONFIG)
    if state == AT_STAGE:
        _advance_to(c, 2)
    elif state == COOLDOWN:
        _advance_to(c, 3)
        assert _violate(c)["rolled_back_to"] == 2
    else:
        _advance_to(c, 3)
        _violate(c)
        clock.advance(10 * MINUTE)
        _advance_to(c, 3)
        assert _violate(c)["state"] == QUARANTINED
    assert c.state == state and c.stage == 2, (c.state, c.stage)
    return c, d, clock


def _fire(c, clock, event):
    """Make the control see `event` through its public operations."""
    if event == tr.MigrateRequested:
        _traffic(c)
        return c.migrate_to_stage(3)
    if event == tr.RollbackRequested:
        return c.rollback_to_stage(1)
    if event == tr.EmergencyRollback:
        return c.emergency_rollback("test")
    if event == tr.HealthViolation:
        return _violate(c)
    if event == tr.RepeatedHealthViolation:
        c._auto_rollbacks = {"2": 1}  # one earlier rollback from stage 2
        return _violate(c)
    if event == tr.CooldownExpired:
        clock.advance(10 * MINUTE)
        return c.status()
    if event == tr.QuarantineCleared:
        return c.clear_quarantine()
    if event == tr.FlagOverrideRequested:
        return c.set_flag_override("use_ets_sampled_events", True)
    raise AssertionError(event)


def test_every_transition_and_refusal_through_the_control():
    for state in tr.STATES:
        for event in tr.EVENTS:
            c, d, clock = _in_state(state)
            expected = tr.TRANSITIONS[state].get(event)
            if event == tr.CooldownExpired and expected is None:
                _fire(c, clock, event)  # time passing is not an event outside cooldown
                expected = state
            elif expected is None:
                exc = corekit.raises(TransitionRefused, _fire, c, clock, event)
                assert exc.state == state and exc.event == event, (state, event)
                assert c.stage == 2
                expected = state
            else:
                _fire(c, clock, event)
            assert c.state == expected, (state, event, c.state, expected)
            c.close()
            # What the table decided is what is on flash.
            c, d, clock = _open(d, clock, config=TABLE_CONFIG)
            with corekit.closing(c):
                assert c.state == expected, (state, event, "after reopen", c.state)


# -- readiness and migration ------------------------------------------------

def test_readiness_reasons():
    c, d, clock = _open()
    with corekit.closing(c):
        assert c.validate_readiness_for_stage(1)["ready"]
        r = c.validate_readiness_for_stage(2)
        assert not r["ready"] and "stage 1 first" in r["reasons"][0]
        assert not c.validate_readiness_for_stage(5)["ready"]
        assert not c.validate_readiness_for_stage(0)["ready"]
        assert not c.validate_readiness_for_stage("1")["ready"]
        for _ in range(11):
            c.record_restart("spans")
        r = c.validate_readiness_for_stage(1)
        assert not r["ready"] and r["reasons"][0].startswith("unhealthy: restart frequency")
        exc = corekit.raises(NotReady, c.migrate_to_stage, 1)
        assert exc.refusal_detail() == r["reasons"] and exc.state == AT_STAGE
        assert exc.event == "MigrateRequested"
        assert c.stage == 0


def test_migrate_commits_stage_flags_history_and_seq_together():
    c, d, clock = _open()
    with corekit.closing(c):
        seen = _events(c)
        seq0 = c.seq
        _traffic(c, latency=7)
        result = c.migrate_to_stage(1, extra_changes={"proto.last_seq": 41})
        assert result["result"] == "ok" and result["stage"] == 1 and result["seq"] == seq0 + 1
        assert c.flags.values() == _stage_flags(1)
        assert c.store.get("ctl.stage") == 1 and c.store.get("ctl.seq") == seq0 + 1
        assert c.store.get("proto.last_seq") == 41
        for name in FLAG_NAMES:
            assert c.store.get("flag." + name) == _stage_flags(1)[name]
        entry = c.status()["migration_history"][0]
        assert entry["op"] == "migrate" and entry["from"] == 0 and entry["to"] == 1
        assert entry["seq"] == seq0 + 1
        names = [n for n, _ in seen]
        assert names == ["feature_flag.changed", "feature_flag.changed", "migration.stage_enabled"]
        payload = seen[-1][1]
        assert payload["stage"] == 1 and payload["name"] == "registry" and payload["from"] == 0
        assert c.metrics()["baseline"]["latency_p50"] == 7
        assert c.services.supervisor.impl_of("registry") == "new"
        assert c.services.supervisor.impl_of("spans") == "legacy"


def test_services_are_made_when_first_used_on_the_implementations_the_flags_pick():
    c, d, clock = _open()
    _advance_to(c, 2)
    assert c._services is None  # stage changes alone never load agent.services
    sup = c.services.supervisor
    assert [sup.impl_of(n) for n in ("registry", "error_context", "spans")] == [
        "new", "new", "legacy"]
    c.services.registry.register("agent-1", {"role": "worker"})
    _advance_to(c, 3)  # made: from now on a flag move moves them, state and all
    assert sup.impl_of("spans") == "new" and sup.impl_of("registry") == "new"
    assert c.services.registry.lookup("agent-1") == {"role": "worker"}
    c.rollback_to_stage(0)
    assert sup.impl_of("registry") == "legacy"
    assert c.services.registry.lookup("agent-1") == {"role": "worker"}
    c.close()
    reopened, _, _ = _open(d, clock)
    assert reopened._services is None and reopened.stage == 0
    reopened.close()


def test_extra_changes_may_not_touch_control_keys():
    c, d, clock = _open()
    with corekit.closing(c):
        for key in ("ctl.stage", "flag.use_ets_agent_registry", "health.restarts"):
            corekit.raises(ControlError, c.migrate_to_stage, 1, {key: 3})
        corekit.raises(ControlError, c.migrate_to_stage, 1, ["x"])
        assert c.stage == 0
        c.set_flag_override("use_ets_sampled_events", True, extra_changes={"proto.cmd": "a"})
        assert c.store.get("proto.cmd") == "a"


# -- rollback paths ---------------------------------------------------------

def test_manual_rollback_to_any_lower_stage_and_refusals():
    c, d, clock = _open()
    with corekit.closing(c):
        _advance_to(c, 4)
        seen = _events(c)
        for bad in (4, 5, -1, "2", None):
            exc = corekit.raises(TransitionRefused, c.rollback_to_stage, bad)
            assert exc.state == AT_STAGE and exc.event == "RollbackRequested"
        r = c.rollback_to_stage(1, extra_changes={"proto.last_seq": 9})
        assert r["stage"] == 1 and c.flags.values() == _stage_flags(1)
        assert c.store.get("proto.last_seq") == 9
        rb = [p for n, p in seen if n == "migration.rollback"]
        assert rb == [{"from": 4, "to": 1, "reason": "operator", "automatic": False, "seq": c.seq}]
        flag_events = [p["name"] for n, p in seen if n == "feature_flag.changed"]
        assert sorted(flag_events) == sorted(["use_logger_error_context", "use_genserver_telemetry",
                                              "use_genserver_span_management",
                                              "use_ets_sampled_events", "enforce_no_process_dict"])
        assert c.state == AT_STAGE
        c.rollback_to_stage(0)
        assert c.flags.values() == _stage_flags(0)
        corekit.raises(TransitionRefused, c.rollback_to_stage, 0)


def test_emergency_rollback_goes_to_zero_and_drops_overrides():
    c, d, clock = _open()
    with corekit.closing(c):
        _advance_to(c, 3)
        c.set_flag_override("enforce_no_process_dict", True)
        seen = _events(c)
        corekit.raises(ControlError, c.emergency_rollback, "")
        corekit.raises(ControlError, c.emergency_rollback, None)
        r = c.emergency_rollback("System unresponsive")
        assert r["stage"] == 0 and c.flags.values() == _stage_flags(0)
        assert c.flags.overrides() == {}
        payload = [p for n, p in seen if n == "migration.emergency_rollback"][0]
        assert payload["from"] == 3 and payload["reason"] == "System unresponsive"
        assert payload["overrides_dropped"] == ["enforce_no_process_dict"]
        entry = c.status()["migration_history"][0]
        assert entry["op"] == "emergency_rollback" and entry["reason"] == "System unresponsive"
        c.emergency_rollback("again, at stage 0")  # accepted even with nothing to undo
        assert c.stage == 0


def test_automatic_rollback_is_one_stage_with_violations_recorded():
    c, d, clock = _open()
    with corekit.closing(c):
        _advance_to(c, 3)
        seen = _events(c)
        # 8 of 40 (20%): the Wilson lower bound (10.5%) is above 5%, and 8 failed calls
        # meet min_errors. (3 of 30 was the old rule's example; its lower bound, 3.5%,
        # is noise under issue 8's rule; 6 of 30 is under issue 10's min_errors.)
        _traffic(c, 40, errors=8)
        r = c.check_health_and_rollback()
        assert r["result"] == "rollback_triggered" and r["rolled_back_to"] == 2
        assert [v["metric"] for v in r["violations"]] == ["error_rate"]
        assert c.stage == 2 and c.state == COOLDOWN
        assert c.flags.values() == _stage_flags(2)
        entry = c.status()["migration_history"][0]
        assert entry["op"] == "auto_rollback" and entry["violations"] == r["violations"]
        names = [n for n, _ in seen]
        assert names[0] == "health.violation" and names[-1] == "migration.rollback"
        payload = seen[-1][1]
        assert payload["automatic"] and payload["from"] == 3 and payload["to"] == 2
        # The new stage starts with a clean window: no second rollback from old data
        # (and, with no outcomes yet, the verdict is inconclusive; it was "ok").
        assert c.check_health_and_rollback()["result"] == "inconclusive"


def test_unhealthy_at_stage_zero_reports_without_rolling_back():
    c, d, clock = _open()
    with corekit.closing(c):
        seq = c.seq
        r = _violate(c)
        assert r["result"] == "unhealthy" and r["rolled_back_to"] is None and r["violations"]
        assert c.stage == 0 and c.state == AT_STAGE and c.seq == seq


def test_healthy_check_returns_figures():
    c, d, clock = _open()
    with corekit.closing(c):
        _advance_to(c, 1)
        _traffic(c, 40, errors=1, latency=12)
        r = c.check_health_and_rollback()
        assert r["result"] == "ok"
        h = r["health"]
        assert h["error_rate"] == 1 / 40 and h["samples"] == 40 and h["restart_frequency"] == 0
        assert h["latency_vs_baseline"] == 1.2 and h["baseline_latency_p50"] == 10
        m = c.metrics()
        assert abs(m["performance_impact"] - 0.2) < 1e-9
        assert m["error_rate"] == 1 / 40


# -- cooldown and quarantine ------------------------------------------------

def test_cooldown_blocks_advancing_until_it_expires_even_across_reboot():
    c, d, clock = _open(config={"cooldown_ms": 5 * MINUTE})
    with corekit.closing(c):
        _advance_to(c, 2)
        _violate(c)
        assert c.state == COOLDOWN and c.stage == 1
        exc = corekit.raises(TransitionRefused, c.migrate_to_stage, 2)
        assert exc.state == COOLDOWN and "cooling down" in exc.reason
        assert "cooling down" in c.validate_readiness_for_stage(2)["reasons"][0]
        assert c.status()["cooldown"]["remaining_ms"] == 5 * MINUTE
    clock2 = ManualClock(start_ms=0, wall_start=clock.wall_time() + 60)  # reboot a minute later
    c, d, _ = _open(d, clock2, config={"cooldown_ms": 5 * MINUTE})
    with corekit.closing(c):
        assert c.state == COOLDOWN and c.status()["cooldown"]["remaining_ms"] == 4 * MINUTE
        clock2.advance(4 * MINUTE)
        assert c.status()["state"] == AT_STAGE and c.status()["cooldown"] is None
        _traffic(c)
        assert c.migrate_to_stage(2)["stage"] == 2


def test_repeated_rollbacks_at_one_stage_quarantine_the_device():
    c, d, clock = _open(config={"quarantine_after": 3, "cooldown_ms": MINUTE})
    with corekit.closing(c):
        for _ in range(3):
            _advance_to(c, 2)
            r = _violate(c)
            assert r["rolled_back_to"] == 1
            clock.advance(MINUTE)
        assert c.state == QUARANTINED and c.stage == 1
        q = c.status()["quarantine"]
        assert q["stage"] == 1 and q["from_stage"] == 2 and q["rollbacks"] == 3
        exc = corekit.raises(Quarantined, c.migrate_to_stage, 2)
        assert exc.state == QUARANTINED and "clear_quarantine" in exc.reason
        assert any("quarantined" in why for why in c.validate_readiness_for_stage(2)["reasons"])
        clock.advance(60 * MINUTE)  # time alone does not lift a quarantine
    c, d, clock = _open(d, clock, config={"quarantine_after": 3, "cooldown_ms": MINUTE})
    with corekit.closing(c):
        assert c.state == QUARANTINED
        corekit.raises(Quarantined, c.migrate_to_stage, 2)
        c.emergency_rollback("still bad")
        assert c.state == QUARANTINED and c.stage == 0
        c.clear_quarantine()
        assert c.state == AT_STAGE and c.status()["quarantine"] is None
        assert c.status()["auto_rollbacks"] == {}
        assert c.status()["migration_history"][0]["op"] == "quarantine_cleared"
        _advance_to(c, 2)
        assert c.stage == 2


def test_rollbacks_at_different_stages_do_not_add_up():
    c, d, clock = _open(config={"quarantine_after": 2, "cooldown_ms": MINUTE})
    with corekit.closing(c):
        _advance_to(c, 3)
        _violate(c)  # from 3
        clock.advance(MINUTE)
        c.rollback_to_stage(1)
        _advance_to(c, 2)
        _violate(c)  # from 2
        assert c.state == COOLDOWN and c.status()["auto_rollbacks"] == {"3": 1, "2": 1}


def test_a_stage_that_held_for_its_monitoring_time_is_forgiven():
    c, d, clock = _open(config={"quarantine_after": 2, "cooldown_ms": MINUTE})
    with corekit.closing(c):
        _advance_to(c, 2)
        _violate(c)
        assert c.status()["auto_rollbacks"] == {"2": 1}
        clock.advance(MINUTE)
        _advance_to(c, 2)
        clock.advance(119 * MINUTE)  # stage 2 is monitored for 2 hours
        _traffic(c)  # a check with no traffic is inconclusive, never "ok" (issue 8)
        assert c.check_health_and_rollback()["result"] == "ok"
        assert c.status()["auto_rollbacks"] == {"2": 1}
        clock.advance(MINUTE)
        _traffic(c)
        assert c.check_health_and_rollback()["result"] == "ok"
        assert c.status()["auto_rollbacks"] == {}
        _violate(c)
        assert c.state == COOLDOWN  # a fresh first rollback, not a repeat


def test_cooldown_expiry_that_cannot_be_committed_stays_in_cooldown():
    fs = faultfs.FaultFS()
    c, d, clock = _open(fs=fs, config={"cooldown_ms": MINUTE})
    with corekit.closing(c):
        _advance_to(c, 1)
        _violate(c)
        clock.advance(MINUTE)
        fs.fail("write", times=1)
        assert c.status()["state"] == COOLDOWN
        assert c.status()["state"] == AT_STAGE  # the next call commits it


def test_bad_outcomes_are_refused_by_name():
    c, d, clock = _open()
    with corekit.closing(c):
        corekit.raises(ControlError, c.record_outcome, "yes", 5)
        corekit.raises(ControlError, c.record_outcome, True, "5ms")
        c.record_outcome(True, None)
        c.record_outcome(False, 2.5)
        assert c.metrics()["samples"] == 2


# -- restarts survive reboots ---------------------------------------------------

def test_restart_counts_persist_so_a_crash_loop_is_caught_after_reboot():
    c, d, clock = _open()
    with corekit.closing(c):
        _advance_to(c, 1)
        for _ in range(6):
            c.record_restart("registry")
    clock2 = ManualClock(start_ms=0, wall_start=clock.wall_time() + 5)
    c, d, _ = _open(d, clock2)
    with corekit.closing(c):
        # 6 in the last minute: no violation; with no outcomes at all the verdict is
        # inconclusive (issue 8; it was "ok"), and nothing is rolled back.
        assert c.check_health_and_rollback()["result"] == "inconclusive"
        for _ in range(5):
            c.services.supervisor.restart_child("registry")  # the supervisor feeds the window
        r = c.check_health_and_rollback()
        assert r["result"] == "rollback_triggered"
        assert r["violations"][0]["metric"] == "restart_frequency"
        assert r["violations"][0]["value"] == 11


def test_persisted_restarts_expire_with_the_window():
    c, d, clock = _open()
    with corekit.closing(c):
        for _ in range(11):
            c.record_restart("spans")
    clock2 = ManualClock(start_ms=0, wall_start=clock.wall_time() + 61)
    c, d, _ = _open(d, clock2)
    with corekit.closing(c):
        assert c.status()["system_health"]["restarts"] == 0


def test_restart_commit_failure_is_counted_not_raised():
    fs = faultfs.FaultFS()
    c, d, clock = _open(fs=fs)
    with corekit.closing(c):
        fs.fail("write", times=1)
        c.record_restart("spans")
        assert c.restart_persist_errors == 1
        assert c.status()["system_health"]["restarts"] == 1


# -- flags, overrides, history, events, monitoring --------------------------

def test_overrides_persist_and_show_their_source():
    c, d, clock = _open(config={"environment": "staging"})
    with corekit.closing(c):
        listed = c.flags.list_all()
        assert listed["use_logger_error_context"] == {
            "value": True, "source": "config", "default": False,
            "description": listed["use_logger_error_context"]["description"]}
        c.set_flag_override("use_genserver_telemetry", True)
        corekit.raises(UnknownFlag, c.set_flag_override, "use_magic", True)
        corekit.raises(UnknownFlag, c.clear_flag_override, "use_magic")
    c, d, clock = _open(d, clock, config={"environment": "staging"})
    with corekit.closing(c):
        assert c.flags.enabled("use_genserver_telemetry")
        assert c.flags.source("use_genserver_telemetry") == "override"
        assert c.services.supervisor.impl_of("telemetry") == "new"
        c.clear_flag_override("use_genserver_telemetry")
        assert not c.flags.enabled("use_genserver_telemetry")
        assert c.store.get("flag.use_genserver_telemetry") is False
        assert c.status()["migration_history"][0]["op"] == "flag_override_cleared"


def test_history_is_newest_first_bounded_and_persisted():
    c, d, clock = _open(config={"history_length": 3})
    with corekit.closing(c):
        _advance_to(c, 4)
        ops = [(e["from"], e["to"]) for e in c.status()["migration_history"]]
        assert ops == [(3, 4), (2, 3), (1, 2)]
        keys = [k for k, _ in c.store.items() if k.startswith("ctl.hist.")]
        assert len(keys) == 3
    c, d, clock = _open(d, clock, config={"history_length": 2})
    with corekit.closing(c):
        assert [e["to"] for e in c.status()["migration_history"]] == [4, 3]
        c.rollback_to_stage(3)
        assert [e["to"] for e in c.status()["migration_history"]] == [3, 4]
        assert len([k for k, _ in c.store.items() if k.startswith("ctl.hist.")]) == 2


def test_a_raising_handler_does_not_break_a_migration():
    c, d, clock = _open()
    with corekit.closing(c):

        def broken(name, payload):
            raise ValueError("boom")

        for name in ("migration.stage_enabled", "feature_flag.changed", "migration.rollback"):
            c.events.subscribe(name, broken)
        _advance_to(c, 1)
        c.rollback_to_stage(0)
        assert c.stage == 0 and c.store.get("ctl.stage") == 0
        assert c.metrics()["event_handler_errors"] == 6  # 2 flags + stage_enabled, 2 + rollback


def test_monitoring_polls_when_due():
    c, d, clock = _open(config={"monitoring_interval_ms": 5000})
    with corekit.closing(c):
        _advance_to(c, 2)
        assert c.poll() is None  # not started
        corekit.raises(ControlError, c.start_health_monitoring, 0)
        assert c.start_health_monitoring()["interval_ms"] == 5000
        _traffic(c, 30, errors=10)
        clock.advance(4999)
        assert c.poll() is None
        clock.advance(1)
        assert c.poll()["rolled_back_to"] == 1
        assert c.poll() is None
        clock.advance(5000)
        assert c.poll()["result"] == "inconclusive"  # a fresh window, no traffic (was "ok")
        c.start_health_monitoring(30000)
        clock.advance(29999)
        assert c.poll() is None


def test_unknown_flag_reads_and_store_stats_in_metrics():
    c, d, clock = _open()
    with corekit.closing(c):
        assert c.flags.enabled("use_quantum_registry") is False
        m = c.metrics()
        assert m["flag_unknown_reads"] == 1
        assert m["flag_unknown_names"] == {"use_quantum_registry": 1}
        assert "bytes_written" in m["store"]
        s = c.status()
        assert s["plan"] == {"name": "otp-cleanup", "hash": Plan.default().hash, "stages": 4}
        assert s["current_stage"] == 0 and s["state"] == AT_STAGE


# -- reopening with damaged or changed state --------------------------------

def test_invalid_stored_values_fall_back_to_safe_ones():
    d = corekit.tmpdir("ctl")
    store = Store(d + "/agent.store", FileSystem())
    store.commit({"ctl.stage": "three", "ctl.state": "LIMBO", "ctl.overrides": {"nope": 1},
                  "ctl.seq": 12})
    store.close()
    c, d, clock = _open(d)
    with corekit.closing(c):
        assert c.stage == 0 and c.state == AT_STAGE and c.flags.overrides() == {}
        assert len(c.recovered_notes) == 3
        assert c.seq == 13  # the repaired flags were committed


def test_plan_and_config_may_be_json_files():
    import json
    d = corekit.tmpdir("files")
    short = dict(default_plan())
    short["stages"] = default_plan()["stages"][:2]
    with open(d + "/plan.json", "w") as f:
        f.write(json.dumps(short))
    with open(d + "/config.json", "w") as f:
        f.write(json.dumps({"environment": "prod", "cooldown_ms": 1234}))
    c, _, clock = _open(d + "/state", plan=d + "/plan.json", config=d + "/config.json")
    with corekit.closing(c):
        assert c.plan.max_stage == 2 and c.config.cooldown_ms == 1234
        assert c.flags.enabled("enable_migration_monitoring")


def test_boot_survives_a_store_that_cannot_take_the_flag_commit():
    fs = faultfs.FaultFS()
    c, d, clock = _open(fs=fs)
    c.close()
    fs.fail("write", times=1)
    c, d, clock = _open(d, clock, fs=fs, config={"environment": "staging"})
    with corekit.closing(c):
        assert c.flags.enabled("use_logger_error_context")  # the config is in force anyway
        assert c.store.get("flag.use_logger_error_context") is False
        assert any("could not commit" in note for note in c.recovered_notes)
        c.set_flag_override("use_genserver_telemetry", True)  # writes every flag again
        assert c.store.get("flag.use_logger_error_context") is True


def test_a_shorter_plan_clamps_the_stage_and_is_recorded():
    c, d, clock = _open()
    with corekit.closing(c):
        _advance_to(c, 4)
    short = dict(default_plan())
    short["stages"] = default_plan()["stages"][:3]
    plan = Plan.from_dict(short)
    c, d, clock = _open(d, clock, plan=plan)
    with corekit.closing(c):
        assert c.stage == 3 and not c.flags.enabled("enforce_no_process_dict")
        assert c.status()["migration_history"][0]["op"] == "plan_changed"
        assert c.store.get("ctl.plan_hash") == plan.hash


# -- a power cut during a stage change ------------------------------------------

def _snapshot(store):
    out = {}
    for k, v in store.items():
        out[k] = v
    return out


def _power_cut_runs(arm, lose_unsynced=False):
    """Cut power at fault point 1, 2, 3... of a migration until it completes uncut.

    After each cut: reboot, reopen, and check the device holds exactly the old
    stage or exactly the new one (stage, every flag, history, seq, extras).
    """
    outcomes = {"old": 0, "new": 0}
    point = 0
    while True:
        point += 1
        fs = faultfs.FaultFS(seed=point, lose_unsynced=lose_unsynced)
        c, d, clock = _open(fs=fs)
        _advance_to(c, 2)
        before = _snapshot(c.store)
        arm(fs, point)
        try:
            c.migrate_to_stage(3, extra_changes={"proto.last_seq": 77})
        except (faultfs.PowerCut, StoreError, OSError):
            pass
        try:
            c.close()
        except Exception:  # noqa: BLE001 - the power is off; closing may fail
            pass
        if fs.powered:
            break  # the change finished before the fault point: all points tried
        fs.reboot(pad=faultfs.PADS[point % len(faultfs.PADS)])
        c2, d, _ = _open(d, ManualClock(wall_start=clock.wall_time() + 1), fs=FileSystem())
        with corekit.closing(c2):
            after = _snapshot(c2.store)
            if c2.stage == 2:
                outcomes["old"] += 1
                assert c2.store.get("proto.last_seq") is None
                assert c2.flags.values() == _stage_flags(2)
                for k in before:
                    assert after.get(k) == before[k], (point, k)
            else:
                outcomes["new"] += 1
                assert c2.stage == 3 and c2.store.get("proto.last_seq") == 77
                assert c2.flags.values() == _stage_flags(3)
                assert c2.seq == before["ctl.seq"] + 1
                assert c2.status()["migration_history"][0]["to"] == 3
            for name in FLAG_NAMES:
                assert c2.store.get("flag." + name) == c2.flags.enabled(name), (point, name)
    return point, outcomes


def test_power_cut_at_every_byte_of_a_stage_change():
    points, outcomes = _power_cut_runs(lambda fs, n: fs.cut_after(n))
    assert points > 100 and outcomes["old"] > 0, outcomes


def test_power_cut_before_every_file_operation_of_a_stage_change():
    points, outcomes = _power_cut_runs(lambda fs, n: fs.cut_at_op(n), lose_unsynced=True)
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes


def test_failed_commit_leaves_memory_unchanged_and_control_usable():
    fs = faultfs.FaultFS()
    c, d, clock = _open(fs=fs)
    with corekit.closing(c):
        _advance_to(c, 1)
        seq = c.seq
        fs.fail("write", times=1)
        exc = corekit.raises(StoreError, c.migrate_to_stage, 2)
        assert exc is not None
        assert c.stage == 1 and c.seq == seq and c.flags.values() == _stage_flags(1)
        assert c.status()["migration_history"][0]["to"] == 1
        _traffic(c)
        assert c.migrate_to_stage(2)["stage"] == 2
    c, d, clock = _open(d, clock)
    with corekit.closing(c):
        assert c.stage == 2 and c.seq == seq + 1


# -- a long random walk against the invariants ------------------------------

class _Lcg:
    """A tiny seeded generator: the same walk on CPython and MicroPython."""

    def __init__(self, seed):
        self.x = seed

    def below(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.x >> 8) % n


def _check_invariants(c, last_seq):
    assert c.seq >= last_seq
    store = c.store
    assert store.get("ctl.stage") in (None, c.stage) and store.get("ctl.seq") == c.seq
    assert store.get("ctl.state", AT_STAGE) == c.state
    expected = c.flags.preview(Plan.default().flags_for_stage(c.stage), c.flags.overrides())
    assert c.flags.values() == expected
    for name in FLAG_NAMES:
        assert store.get("flag." + name) == expected[name], name
    seqs = [e["seq"] for e in c.status()["migration_history"]]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    assert (c.state == QUARANTINED) == (c.status()["quarantine"] is not None)
    return c.seq


def test_random_walk_keeps_memory_store_and_flags_consistent():
    rng = _Lcg(2024)
    config = {"quarantine_after": 2, "cooldown_ms": 2 * MINUTE, "history_length": 8,
              "environment": "staging"}
    c, d, clock = _open(config=config)
    last = c.seq
    ops = ("migrate", "migrate", "migrate", "migrate", "rollback", "emergency", "override",
           "clear_override", "violate", "violate", "clear_quarantine", "wait", "restart",
           "reopen")
    done = {}
    seen = {}
    for _ in range(250):
        op = ops[rng.below(len(ops))]
        flag = FLAG_NAMES[rng.below(len(FLAG_NAMES))]
        try:
            if op == "migrate":
                _traffic(c)
                c.migrate_to_stage(c.stage + 1)
            elif op == "rollback":
                c.rollback_to_stage(rng.below(c.stage + 1))
            elif op == "emergency":
                c.emergency_rollback("walk")
            elif op == "override":
                c.set_flag_override(flag, rng.below(2) == 1)
            elif op == "clear_override":
                c.clear_flag_override(flag)
            elif op == "violate":
                _violate(c)
            elif op == "clear_quarantine":
                c.clear_quarantine()
            elif op == "wait":
                clock.advance(rng.below(3) * MINUTE)
            elif op == "restart":
                c.record_restart("spans")
            else:
                before = (c.stage, c.state, c.seq, c.flags.values(),
                          c.status()["migration_history"])
                c.close()
                c, d, clock = _open(d, clock, config=config)
                assert (c.stage, c.state, c.seq, c.flags.values(),
                        c.status()["migration_history"]) == before
            done[op] = done.get(op, 0) + 1
        except TransitionRefused:
            done["refused"] = done.get("refused", 0) + 1
        last = _check_invariants(c, last)
        seen[(c.state, c.stage)] = True
    c.close()
    states = sorted(set(state for state, _ in seen))
    stages = sorted(set(stage for _, stage in seen))
    assert states == [AT_STAGE, COOLDOWN, QUARANTINED] and stages == [0, 1, 2, 3, 4], seen
    assert done.get("refused", 0) > 0 and done.get("reopen", 0) > 0


# -- issue 8: inconclusive verdicts ---------------------------------------------

def test_inconclusive_extends_monitoring_rolls_nothing_back_and_does_not_block():
    c, d, clock = _open(config={"monitoring_interval_ms": 5000})
    with corekit.closing(c):
        _advance_to(c, 2)
        c.start_health_monitoring()
        c.record_outcome(False, 5, source="gateway-http")  # one error: no evidence yet
        clock.advance(5000)
        r = c.poll()
        assert r["result"] == "inconclusive" and "gateway-http 1/20" in r["reason"]
        clock.advance(5000)
        assert c.poll()["result"] == "inconclusive" and c.stage == 2
        mon = c.status()["monitoring"]
        assert mon["verdict"] == "inconclusive" and mon["extended_ms"] == 5000
        health = c.status()["system_health"]
        assert health["verdict"] == "inconclusive"
        assert health["sources"]["gateway-http"]["errors"] == 1
        assert c.validate_readiness_for_stage(3)["ready"]  # no evidence against it


def test_violation_in_history_names_source_and_threshold():
    c, d, clock = _open()
    with corekit.closing(c):
        _advance_to(c, 1)
        for i in range(40):
            c.record_outcome(i % 3 != 0, 5, source="http:gateway")
        r = c.check_health_and_rollback()
        assert r["rolled_back_to"] == 0
        v = c.status()["migration_history"][0]["violations"][0]
        assert v["source"] == "http:gateway" and v["metric"] == "error_rate" and v["limit"] == 0.05
        m = c.metrics()  # what the periodic health report carries
        assert m["last_auto_rollback"]["violations"][0]["source"] == "http:gateway"
        assert m["verdict"] == "inconclusive" and m["violations"] == []
        for i in range(40):
            c.record_outcome(i % 2 == 0, 5, source="http:gateway")
        m = c.metrics()
        assert m["verdict"] == "unhealthy" and m["sources"]["http:gateway"]["errors"] == 20
        assert m["violations"][0] == dict(m["violations"][0], source="http:gateway",
                                          metric="error_rate", limit=0.05)
        corekit.raises(ControlError, c.record_outcome, True, 1, source=5)
        corekit.raises(ControlError, c.record_outcome, True, -1.0)
        corekit.raises(ControlError, c.record_outcome, True, float("nan"))


def test_the_rules_beside_the_table():
    assert tr.violation_event(1, 3) == tr.HealthViolation
    assert tr.violation_event(3, 3) == tr.RepeatedHealthViolation
    assert tr.migrate_target_problem(2, 1, 4, "p") is None
    assert "needs stage 1 first" in tr.migrate_target_problem(2, 0, 4, "p")
    assert "stages 1..4" in tr.migrate_target_problem(5, 4, 4, "p")
    assert "stages 1..4" in tr.migrate_target_problem(True, 0, 4, "p")
    assert tr.rollback_target_problem(0, 2) is None
    assert "from 0 to 1" in tr.rollback_target_problem(2, 2)
    assert tr.automatic_rollback_target(3) == 2 and tr.automatic_rollback_target(0) is None
    assert tr.cooldown_deadline(1000, 500) == 1500
    assert tr.clamp_cooldown(10**12, 1000, 500) == 1500  # the wall clock went back
    assert tr.clamp_cooldown(1200, 1000, 500) == 1200
    assert tr.cooldown_remaining_ms(1200, 1000, 500) == 200
    assert tr.cooldown_remaining_ms(900, 1000, 500) == 0
    assert not hasattr(tr, "allowed_events")  # the table itself is the list


def test_history_is_held_once_by_the_store_and_read_from_it():
    config = Config.from_dict({"history_length": 3})
    c, d, clock = _open(config=config)
    with corekit.closing(c):
        for i in range(5):
            c.set_flag_override("use_ets_agent_registry", i % 2 == 0)
        keys = [k for k, _ in c.store.items() if k.startswith("ctl.hist.")]
        assert len(keys) == 3 and len(c.history) == 3
        # the history keeps keys only; each entry is the store's own value
        assert all(e is None for _, e in c.history._entries)
        shown = c.status()["migration_history"]
        assert [e["seq"] for e in shown] == sorted((c.store.get(k)["seq"] for k in keys),
                                                   reverse=True)
        assert shown[0] == c.store.peek(max(keys)) and shown[0] is not c.store.peek(max(keys))
        shown[0]["reason"] = "edited"  # a copy: the store and the next read keep theirs
        assert c.status()["migration_history"][0]["reason"] != "edited"
    again, _, _ = _open(d, clock, config=config)
    with corekit.closing(again):
        assert [e["seq"] for e in again.status()["migration_history"]] == [
            e["seq"] for e in shown]
