"""Every op through AgentRuntime: flag overrides, clear_quarantine, the desired
no-op and the pending desired state retried after a cooldown.

Signed payloads, a ManualClock, a real MigrationControl on a temp directory and
an in-memory link. Runs on CPython and MicroPython."""
import runtimekit

from agent import protocol as P
from agent.runtime import DESIRED_RETRY_MS

DEV = "gw-ops"
FLAG = "use_logger_error_context"


def Device(config=None, fs=None):
    """The harness's device (runtimekit.Device), polling its health every second."""
    return runtimekit.Device(DEV, config=config, fs=fs, monitor_interval_ms=1000)


def test_set_and_clear_flag_override_by_command():
    d = Device()
    assert d.control.flags.enabled(FLAG) is False
    ack = d.command("set_flag", {"name": FLAG, "value": True})
    assert ack["result"] == "applied", ack
    assert d.control.flags.enabled(FLAG) is True
    assert d.control.status()["overrides"] == {FLAG: True}
    assert d.link.reports("status")[-1]["flags"][FLAG] is True
    changed = [e for e in d.link.reports("event") if e["name"] == "feature_flag.changed"]
    assert changed, "the flag change is reported as an event"
    assert d.control.store.get(P.ReplayGuard.KEY_SEQ) == d.seq
    ack = d.command("clear_flag", {"name": FLAG})
    assert ack["result"] == "applied", ack
    assert d.control.flags.enabled(FLAG) is False  # back to what stage 0 says
    assert d.control.status()["overrides"] == {}
    assert d.link.reports("status")[-1]["flags"][FLAG] is False
    ack = d.command("set_flag", {"name": "no_such_flag", "value": True})
    assert ack["result"] == "rejected" and ack["reason"] == "malformed"
    assert d.control.status()["overrides"] == {}
    d.control.close()


def test_clear_quarantine_by_command_lets_the_device_advance_again():
    d = Device(config={"quarantine_after": 1})
    assert d.command("migrate", {"stage": 1})["result"] == "applied"
    d.fail_health()
    assert d.control.stage == 0 and d.control.state == "QUARANTINED"
    ack = d.command("migrate", {"stage": 1})
    assert ack["result"] == "rejected" and ack["reason"] == "quarantined", ack
    assert d.link.reports("status")[-1]["quarantined"] is True
    ack = d.command("clear_quarantine", {})
    assert ack["result"] == "applied", ack
    assert d.control.status()["quarantine"] is None
    assert d.link.reports("status")[-1]["quarantined"] is False
    assert d.command("migrate", {"stage": 1})["result"] == "applied"
    assert d.control.stage == 1
    d.control.close()


def test_desired_state_already_met_is_an_applied_noop():
    d = Device()
    d.command("migrate", {"stage": 1})
    seq_before = d.control.seq
    history_before = len(d.control.status()["migration_history"])
    cid = d.desired(1)
    acks = d.link.acks_for(cid)
    assert [a["result"] for a in acks] == ["applied"], acks
    assert d.control.stage == 1 and d.control.seq == seq_before  # no stage change committed
    assert len(d.control.status()["migration_history"]) == history_before
    assert d.control.store.get(P.ReplayGuard.KEY_SEQ) == d.seq  # only the guard moved on
    d.control.close()


def test_desired_state_blocked_by_cooldown_is_retried_and_applies_when_it_ends():
    cooldown = 12000
    d = Device(config={"cooldown_ms": cooldown})
    d.command("migrate", {"stage": 1})
    d.command("migrate", {"stage": 2})
    d.fail_health()
    assert d.control.stage == 1 and d.control.state == "COOLDOWN"
    cid = d.desired(2)
    acks = d.link.acks_for(cid)
    assert len(acks) == 1 and acks[0]["reason"] == "not_ready", acks  # said once, at once
    waited = 0
    while d.control.stage == 1 and waited < 4 * cooldown:
        d.clock.advance(500)
        waited += 500
        d.rt.tick()
    assert d.control.stage == 2
    # Retried every DESIRED_RETRY_MS: it lands on the first retry after the cooldown.
    first_retry_after = (cooldown // DESIRED_RETRY_MS + 1) * DESIRED_RETRY_MS
    assert waited == first_retry_after, waited
    acks = d.link.acks_for(cid)
    assert [a["result"] for a in acks] == ["rejected", "applied"], acks  # no ack per retry
    assert d.control.store.get(P.ReplayGuard.KEY_SEQ) == d.seq
    for _ in range(3):  # and it is not applied again
        d.clock.advance(DESIRED_RETRY_MS)
        d.rt.tick()
    assert len(d.link.acks_for(cid)) == 2
    d.control.close()


def test_last_will_keeps_groups_and_the_guard_sequence():
    from agent import protocol as P
    from agent.runtime import will_message

    key = P.derive_device_key(b"k" * 32, "gw1")
    topic, payload = will_message("f1", "gw1", ["b", "a"], key, 1234)
    report = P.decode_report(payload, key, "status", "gw1")
    assert topic == "fleetstage/f1/device/gw1/status"
    assert report["online"] is False and report["groups"] == ["a", "b"]
    assert report["extra"]["guard_seq"] == 1234


def test_a_commit_whose_fate_on_flash_is_unknown_leaves_runtime_and_flash_agreeing():
    import faultfs

    fs = faultfs.FaultFS()
    dev = Device(fs=fs)
    control, rt = dev.control, dev.rt
    # a no-op (already at stage 0) commits only the guard: its fsync fails after the
    # bytes landed and the store cannot roll it back
    fs.fail("fsync", faultfs.EIO)
    fs.fail("open_write", faultfs.ENOSPC)
    ack = dev.command("rollback", {"stage": 0})
    assert ack["result"] == "rejected"
    # whatever flash now says, the runtime believes flash, and the next command works
    reopened = P.ReplayGuard.from_store(control.store)
    assert rt.guard.last_seq == reopened.last_seq
    ack = dev.command("migrate", {"stage": 1})
    assert ack["result"] == "applied" and control.stage == 1


def test_an_automatic_rollback_is_logged_with_its_target_and_each_violation():
    lines = []
    with runtimekit.Device(DEV, monitor_interval_ms=1000, log=lines.append) as d:
        d.command("migrate", {"stage": 1})
        d.command("migrate", {"stage": 2})
        d.fail_health()
        assert d.control.stage == 1
    health = [line for line in lines if line.startswith("health: ")]
    assert len(health) == 1, lines
    line = health[0]
    assert line.startswith("health: rollback_triggered to stage 1: error rate 100.0%"), line
    assert "(source app)" in line, line
