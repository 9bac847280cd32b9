"""AgentRuntime with a fake link: acks, status, queueing, desired-state convergence.

Runs on CPython and MicroPython (no pytest imports)."""
from corekit import tmpdir
from runtimekit import FLEET, FLEET_KEY, Device, MemoryLink, device_key, signed_command

from agent import protocol as P
from agent.control import MigrationControl
from agent.runtime import AgentRuntime
from firmware_shim import codec
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

DEV = "dev-1"
KEY = device_key(DEV)


def make(link=None, queue_limit=256, groups=("g1",)):
    d = Device(DEV, groups, link=link, queue_limit=queue_limit)
    return d.rt, d.link, d.control, d.clock


def cmd(control, op, args, seq, target="device:" + DEV, key=FLEET_KEY, cid=None):
    return signed_command(control, op, args, seq, DEV, target=target, key=key, cid=cid)


def deliver(rt, target, payload, channel="cmd"):
    topic = (P.cmd_topic if channel == "cmd" else P.desired_topic)("fl", target)
    rt.on_message(topic, payload, False)
    rt.tick()  # the agent's loop ticks after each poll: events and status go out there


def test_subscribes_to_own_group_and_broadcast_topics():
    rt, link, control, _ = make()
    assert "fleetstage/fl/cmd/all" in link.subs
    assert "fleetstage/fl/cmd/group/g1" in link.subs
    assert "fleetstage/fl/desired/device/dev-1" in link.subs
    assert link.leaf("status")[0]["online"] is True
    control.close()


def test_signed_migrate_applies_once_and_reports():
    rt, link, control, _ = make()
    c = cmd(control, "migrate", {"stage": 1}, 10)
    deliver(rt, "device:" + DEV, c)
    deliver(rt, "device:" + DEV, c)  # QoS 1 redelivery
    acks = link.leaf("ack")
    assert [a["result"] for a in acks] == ["applied", "duplicate"]
    assert control.stage == 1
    assert link.leaf("status")[-1]["stage"] == 1
    names = [e["name"] for e in link.leaf("event")]
    assert "migration.stage_enabled" in names
    assert control.store.get(P.ReplayGuard.KEY_SEQ) == 10
    control.close()


def test_hostile_commands_are_rejected_and_state_untouched():
    rt, link, control, _ = make()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    forged = cmd(control, "migrate", {"stage": 2}, 11, key=bytes(32))
    other_plan = P.encode_command("migrate", {"stage": 2}, "device:" + DEV, 12, "f" * 64,
                                  FLEET_KEY, devices=[DEV], fleet=FLEET)
    stale = cmd(control, "rollback", {"stage": 0}, 5)
    skip = cmd(control, "migrate", {"stage": 3}, 13)
    for payload in (forged, other_plan, stale, b"", b"\xc1", b"\x93\x01\x02", skip):
        deliver(rt, "device:" + DEV, payload)
    reasons = [a.get("reason") for a in link.leaf("ack")[1:]]
    assert reasons == ["bad_signature", "wrong_plan", "stale_sequence", "malformed",
                       "malformed", "malformed", "not_ready"]
    assert control.stage == 1
    assert rt.counters["errors"] == 0
    control.close()


def test_a_message_the_link_read_past_is_acked_malformed_and_state_untouched():
    """payload None: the board's link skipped a PUBLISH too large to hold (issue 7 item 7)."""
    rt, link, control, _ = make()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    for channel in ("cmd", "desired"):
        deliver(rt, "device:" + DEV, None, channel)
    acks = link.leaf("ack")[1:]
    assert [(a["result"], a["reason"]) for a in acks] == [("rejected", "malformed")] * 2
    assert "too large" in acks[0]["detail"]
    assert control.stage == 1 and rt.counters["errors"] == 0
    control.close()


def test_reports_queue_while_down_bounded_and_flush_on_reconnect():
    link = MemoryLink(KEY, connected=False)
    rt, link, control, clock = make(link, queue_limit=5)
    for i in range(4):
        deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": i + 1}, 20 + i))
    assert control.stage == 4  # local flags keep working with no broker
    assert len(rt.queue) == 5 and rt.queue.dropped > 0
    link.connected = True
    rt.on_connect()
    assert len(rt.queue) == 0
    statuses = [s for s in link.leaf("status")]
    assert statuses[-1]["stage"] == 4
    control.close()


def test_desired_state_converges_step_by_step_and_once():
    rt, link, control, clock = make()
    d = P.encode_desired("group:g1", 3, 50, control.plan.hash, FLEET_KEY, devices=[DEV],
                         fleet=FLEET)
    deliver(rt, "group:g1", d, "desired")
    assert control.stage == 3
    hist = [e["op"] for e in control.status()["migration_history"]]
    assert hist.count("migrate") == 3
    deliver(rt, "group:g1", d, "desired")  # retained copy again after a reconnect
    rt.tick()
    assert control.stage == 3
    assert [a["result"] for a in link.leaf("ack")] == ["applied"]
    control.close()


def test_emergency_desired_outranks_older_states_in_one_burst():
    rt, link, control, clock = make()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    em = P.encode_desired("all", 0, 40, control.plan.hash, FLEET_KEY, devices=[DEV],
                          emergency=True, reason="bad release", fleet=FLEET)
    older = P.encode_desired("device:" + DEV, 2, 30, control.plan.hash, FLEET_KEY, devices=[DEV],
                             fleet=FLEET)
    deliver(rt, "device:" + DEV, older, "desired")
    deliver(rt, "all", em, "desired")
    rt.tick()
    assert control.stage == 0
    assert control.status()["migration_history"][0]["op"] == "emergency_rollback"  # newest first
    control.close()


def test_the_retained_emergency_after_the_command_is_no_second_rollback():
    """emergency-rollback sends a command and retains an emergency desired state (the
    next seq): a device that obeyed the command only moves its guard for the second,
    so the history and the events hold one emergency rollback, not a 0 -> 0 one too."""
    rt, link, control, clock = make()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    deliver(rt, "device:" + DEV, cmd(control, "emergency_rollback", {"reason": "pager"}, 20))
    assert control.stage == 0
    em = P.encode_desired("all", 0, 21, control.plan.hash, FLEET_KEY, devices=[DEV],
                          emergency=True, reason="pager", fleet=FLEET)
    deliver(rt, "all", em, "desired")
    rt.tick()
    names = [e["name"] for e in link.leaf("event")]
    assert names.count("migration.emergency_rollback") == 1, names
    ops = [h["op"] for h in control.status()["migration_history"]]
    assert ops.count("emergency_rollback") == 1, ops
    assert control.store.get(P.ReplayGuard.KEY_SEQ) == 21  # the guard moved on
    # an override set since: the same retained emergency drops it (it still changes that)
    deliver(rt, "device:" + DEV, cmd(control, "set_flag", {"name": "use_ets_agent_registry",
                                                          "value": True}, 30))
    em = P.encode_desired("all", 0, 31, control.plan.hash, FLEET_KEY, devices=[DEV],
                          emergency=True, reason="pager", fleet=FLEET)
    deliver(rt, "all", em, "desired")
    rt.tick()
    assert control.status()["overrides"] == {}
    names = [e["name"] for e in link.leaf("event")]
    assert names.count("migration.emergency_rollback") == 2, names
    control.close()


def test_garbage_on_any_topic_never_raises():
    rt, link, control, _ = make()
    for topic in ("fleetstage/fl/cmd/all", "fleetstage/fl/desired/all", "junk", "fleetstage/x"):
        for payload in (b"", b"\xff" * 10, codec.packb({"id": 1}), codec.packb([1, 2])):
            rt.on_message(topic, payload, True)
    rt.tick()
    assert control.stage == 0
    control.close()


def test_ack_goes_out_before_events_and_status():
    rt, link, control, _ = make()
    link.sent = []
    rt.on_message(P.cmd_topic("fl", "device:" + DEV), cmd(control, "migrate", {"stage": 1}, 10))
    leaves = [t.rsplit("/", 1)[1] for t, _p, _q, _r in link.sent]
    assert leaves == ["ack"]
    rt.tick()
    leaves = [t.rsplit("/", 1)[1] for t, _p, _q, _r in link.sent]
    assert leaves[0] == "ack" and leaves[-1] == "status" and "event" in leaves
    assert leaves.count("status") == 1  # one status per tick, however many changes
    control.close()


def test_automatic_rollback_with_broker_down_is_reported_on_reconnect():
    clock = ManualClock()
    control = MigrationControl.open(tmpdir("rt"), FileSystem(), clock)
    link = MemoryLink(KEY, connected=False)
    rt = AgentRuntime(control, link, "fl", DEV, key=P.derive_device_key(FLEET_KEY, DEV),
                      clock=clock, monitor_interval_ms=1000, health_interval_ms=500)
    rt.start()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 2}, 11))
    assert control.stage == 2
    for _ in range(50):
        control.record_outcome(False, 5)
    clock.advance(1500)
    rt.tick()
    assert control.stage == 1  # judged and rolled back locally, no broker needed
    assert link.sent == [] and len(rt.queue) > 0
    link.connected = True
    rt.on_connect()
    names = [e["name"] for e in link.leaf("event")]
    assert "migration.rollback" in names and "health.violation" in names
    assert link.leaf("health"), "health reports made while offline are delivered"
    assert link.leaf("status")[-1]["stage"] == 1
    control.close()


def test_console_emergency_rollback_is_not_undone_by_an_older_desired_state():
    rt, link, control, clock = make()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    old_seq = int(clock.wall_time() * 1000) - 5000  # issued before the console rollback
    desired = P.encode_desired("all", 3, old_seq, control.plan.hash, FLEET_KEY, devices=[DEV],
                               fleet=FLEET)
    rt.local_emergency_rollback("gateway unreachable")
    assert control.stage == 0
    deliver(rt, "all", desired, "desired")  # the retained copy, seen on reconnect
    assert control.stage == 0
    newer = cmd(control, "migrate", {"stage": 1}, int(clock.wall_time() * 1000) + 1)
    deliver(rt, "device:" + DEV, newer)  # the operator speaks again: obeyed
    assert control.stage == 1
    assert control.store.get("rt.local_hold") is None
    control.close()


def _wall_ms(clock):
    return int(clock.wall_time() * 1000)


def test_console_hold_ignores_desired_states_whatever_the_operator_clock():
    # The operator's clock runs 5 min ahead of the gateway's (no NTP): a desired
    # state it retained BEFORE the console rollback carries a seq above the
    # gateway's wall ms at the rollback. It must still not undo the rollback.
    rt, link, control, clock = make()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    ahead = _wall_ms(clock) + 5 * 60 * 1000
    desired = P.encode_desired("all", 3, ahead, control.plan.hash, FLEET_KEY, devices=[DEV],
                               fleet=FLEET)
    rt.local_emergency_rollback("gateway unreachable")
    clock.advance(1000)
    deliver(rt, "all", desired, "desired")  # the retained copy, seen on reconnect
    rt.tick()
    assert control.stage == 0
    assert rt.counters["desired_held"] == 1
    extra = link.leaf("status")[-1]["extra"]
    assert extra["console_hold"] is True and extra["desired_held"] == 1
    # A later desired state (even a newer one) is ignored too: only a command lifts it.
    newer = P.encode_desired("all", 2, ahead + 60000, control.plan.hash, FLEET_KEY,
                             devices=[DEV], fleet=FLEET)
    deliver(rt, "all", newer, "desired")
    assert control.stage == 0 and rt.counters["desired_held"] == 2
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, ahead + 70000))
    assert control.stage == 1
    assert link.leaf("status")[-1]["extra"]["console_hold"] is False
    control.close()


def test_console_hold_on_a_board_without_rtc():
    # A board with no RTC reads a wall clock near 1970: any operator seq is above it.
    clock = ManualClock(wall_start=0.0)
    control = MigrationControl.open(tmpdir("rt"), FileSystem(), clock)
    rt = AgentRuntime(control, MemoryLink(KEY), "fl", DEV, key=P.derive_device_key(FLEET_KEY, DEV),
                      clock=clock)
    rt.start()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    desired = P.encode_desired("all", 2, 1700000000000, control.plan.hash, FLEET_KEY,
                               devices=[DEV], fleet=FLEET)
    rt.local_emergency_rollback("console")
    deliver(rt, "all", desired, "desired")
    assert control.stage == 0
    control.close()


def test_console_hold_survives_a_reboot_and_only_an_applied_command_lifts_it():
    clock = ManualClock()
    state_dir = tmpdir("rt")
    control = MigrationControl.open(state_dir, FileSystem(), clock)
    key = P.derive_device_key(FLEET_KEY, DEV)
    rt = AgentRuntime(control, MemoryLink(KEY), "fl", DEV, key=key, clock=clock)
    rt.start()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    rt.local_emergency_rollback("console")
    control.close()
    control = MigrationControl.open(state_dir, FileSystem(), clock)  # the gateway reboots
    link = MemoryLink(KEY)
    rt = AgentRuntime(control, link, "fl", DEV, key=key, clock=clock)
    rt.start()
    seq = _wall_ms(clock) + 600000
    desired = P.encode_desired("device:" + DEV, 2, seq, control.plan.hash, FLEET_KEY, fleet=FLEET)
    deliver(rt, "device:" + DEV, desired, "desired")
    assert control.stage == 0
    # A command the device refuses does not lift the hold either.
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 3}, seq + 1))
    assert link.leaf("ack")[-1]["reason"] == "not_ready"
    deliver(rt, "device:" + DEV, desired, "desired")
    assert control.stage == 0 and rt.counters["desired_held"] == 2
    deliver(rt, "device:" + DEV, cmd(control, "rollback", {"stage": 0}, seq + 2))
    assert link.leaf("ack")[-1]["result"] == "applied"
    assert control.store.get("rt.local_hold") is None
    desired = P.encode_desired("device:" + DEV, 2, seq + 3, control.plan.hash, FLEET_KEY,
                               fleet=FLEET)
    deliver(rt, "device:" + DEV, desired, "desired")
    assert control.stage == 2  # the hold is gone: desired states apply again
    control.close()


def test_console_hold_set_through_the_store_while_the_agent_is_down():
    # `fleetstage local emergency-rollback` with no agent running commits the
    # hold with the rollback straight to the store; the agent honours it at start.
    from agent.runtime import local_hold_changes

    clock = ManualClock()
    state_dir = tmpdir("rt")
    control = MigrationControl.open(state_dir, FileSystem(), clock)
    control.migrate_to_stage(1)
    control.emergency_rollback("local: console", extra_changes=local_hold_changes(clock))
    control.close()
    control = MigrationControl.open(state_dir, FileSystem(), clock)
    rt = AgentRuntime(control, MemoryLink(KEY), "fl", DEV, key=P.derive_device_key(FLEET_KEY, DEV),
                      clock=clock)
    rt.start()
    desired = P.encode_desired("all", 1, _wall_ms(clock) + 600000, control.plan.hash,
                               FLEET_KEY, devices=[DEV], fleet=FLEET)
    deliver(rt, "all", desired, "desired")
    assert control.stage == 0 and rt.counters["desired_held"] == 1
    control.close()


def test_migrate_command_after_desired_state_got_there_is_an_applied_noop():
    # The desired/command race: the retained desired state brings the device to
    # stage 2, then the operator's `migrate 2` (a retry, or a slow command) arrives.
    rt, link, control, clock = make()
    d = P.encode_desired("group:g1", 2, 50, control.plan.hash, FLEET_KEY, devices=[DEV],
                         fleet=FLEET)
    deliver(rt, "group:g1", d, "desired")
    assert control.stage == 2
    seq_before = control.seq
    c = cmd(control, "migrate", {"stage": 2}, 51)
    deliver(rt, "device:" + DEV, c)
    ack = link.leaf("ack")[-1]
    assert ack["result"] == "applied" and ack["detail"] == "already at stage 2", ack
    assert control.stage == 2 and control.seq == seq_before  # no stage change committed
    assert control.store.get(P.ReplayGuard.KEY_SEQ) == 51  # but the command is recorded
    deliver(rt, "device:" + DEV, c)  # QoS 1 redelivery
    assert link.leaf("ack")[-1]["result"] == "duplicate"
    control.close()


def test_rollback_to_current_or_higher_stage_is_an_applied_noop_and_never_migrates():
    rt, link, control, clock = make()
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 1}, 10))
    deliver(rt, "device:" + DEV, cmd(control, "rollback", {"stage": 1}, 11))
    ack = link.leaf("ack")[-1]
    assert ack["result"] == "applied" and ack["detail"] == "already at stage 1", ack
    deliver(rt, "device:" + DEV, cmd(control, "rollback", {"stage": 3}, 12))
    ack = link.leaf("ack")[-1]
    assert ack["result"] == "applied" and ack["detail"] == "already below stage 3", ack
    assert control.stage == 1  # a rollback never moves the device up
    assert control.store.get(P.ReplayGuard.KEY_SEQ) == 12
    deliver(rt, "device:" + DEV, cmd(control, "migrate", {"stage": 3}, 13))
    assert link.leaf("ack")[-1]["reason"] == "not_ready"  # skipping a stage still refused
    deliver(rt, "device:" + DEV, cmd(control, "rollback", {"stage": 0}, 14))
    assert control.stage == 0 and "detail" not in link.leaf("ack")[-1]
    control.close()


def test_status_and_last_will_carry_the_hardware_revision():
    clock = ManualClock()
    control = MigrationControl.open(tmpdir("rt-hw"), FileSystem(), clock)
    link = MemoryLink(KEY)
    rt = AgentRuntime(control, link, "fl", DEV, ("g1",), key=P.derive_device_key(FLEET_KEY, DEV),
                      clock=clock, hw="rev-b")
    rt.start()
    assert link.leaf("status")[-1]["hw"] == "rev-b"
    _topic, will = rt.will()
    assert P.decode_report(will, P.derive_device_key(FLEET_KEY, DEV))["hw"] == "rev-b"
    control.close()


def test_a_bucket_command_not_signed_for_this_device_gets_no_ack():
    """Bucket neighbours hear a command meant for others: it names them not, so no ack."""
    rt, link, control, _ = make()
    mine = P.bucket_of(DEV)
    other = next(d for d in ("dev-%d" % i for i in range(2, 500)) if P.bucket_of(d)[:1] == mine[:1])
    payload = P.encode_command("migrate", {"stage": 1}, "bucket:" + mine[:1], 9,
                               control.plan.hash, FLEET_KEY, devices=[other], fleet=FLEET)
    deliver(rt, "bucket:" + mine[:1], payload)
    assert link.leaf("ack") == [] and control.stage == 0
    signed = P.encode_command("migrate", {"stage": 1}, "bucket:" + mine[:1], 10,
                              control.plan.hash, FLEET_KEY, devices=[other, DEV], fleet=FLEET)
    deliver(rt, "bucket:" + mine[:1], signed)
    assert link.leaf("ack")[-1]["result"] == "applied" and control.stage == 1
    control.close()


def test_the_harness_closes_its_store_even_when_a_test_fails():
    import corekit

    from agent.store import CLOSED, Store

    try:
        with Device("dev-ctx") as d:
            raise ValueError("a failing test body")
    except ValueError:
        pass
    assert d.control.store.state == CLOSED
    try:
        with corekit.closing(Store(tmpdir("rt") + "/s.db", FileSystem())) as s:
            s.commit({"k": 1})
            raise ValueError("another")
    except ValueError:
        pass
    assert s.state == CLOSED


def test_a_command_or_desired_state_not_bound_to_this_fleet_is_refused():
    """Fleet binding is strict: the fleet key is shared by two fleets here (fl and fleet-b);
    a body signed with it for gw's key that names another fleet, or none, is refused as
    bad_signature and changes nothing; the same command bound to this fleet applies."""
    rt, link, control, _ = make()
    seq = 10
    for fleet in ("fleet-b", None):
        for channel in ("cmd", "desired"):
            seq += 1
            cid = P.new_command_id()
            if channel == "cmd":
                payload = P.encode_command("migrate", {"stage": 1}, "device:" + DEV, seq,
                                           control.plan.hash, FLEET_KEY, command_id=cid,
                                           fleet=fleet)
            else:
                payload = P.encode_desired("device:" + DEV, 2, seq, control.plan.hash,
                                           FLEET_KEY, command_id=cid, fleet=fleet)
            deliver(rt, "device:" + DEV, payload, channel)
            acks = [a for a in link.leaf("ack") if a["id"] == cid]
            assert len(acks) == 1 and acks[0]["result"] == "rejected", (fleet, channel, acks)
            assert acks[0]["reason"] == "bad_signature", acks
            assert ("no fleet" if fleet is None else "fleet-b") in acks[0]["detail"], acks
            assert control.stage == 0 and rt.guard.last_seq == 0, (fleet, channel)
    good = P.encode_command("migrate", {"stage": 1}, "device:" + DEV, seq + 1,
                            control.plan.hash, FLEET_KEY, fleet=FLEET)
    deliver(rt, "device:" + DEV, good)
    assert control.stage == 1 and link.leaf("ack")[-1]["result"] == "applied"
