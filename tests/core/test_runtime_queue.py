"""The report queue while the broker is down: what a full queue gives up.

Acks and events (the automatic rollback, health.violation) must outlive the
periodic health reports and the status. Runs on CPython and MicroPython."""
from corekit import tmpdir
from runtimekit import FLEET, FLEET_KEY, MemoryLink, device_key

from agent import protocol as P
from agent.control import MigrationControl
from agent.report_queue import ReportQueue
from agent.runtime import AgentRuntime
from firmware_shim.files import FileSystem
from firmware_shim.machine import ManualClock

DEV = "dev-q"
KEY = device_key(DEV)


def _topic(leaf):
    return "fleetstage/fl/device/" + DEV + "/" + leaf


def test_full_queue_gives_up_health_then_status_then_the_oldest_event():
    q = ReportQueue(limit=4)
    q.push(_topic("event"), b"e1", 1, False)
    q.push(_topic("health"), b"h1", 0, False)
    q.push(_topic("status"), b"s1", 1, True)
    q.push(_topic("ack"), b"a1", 1, False)
    q.push(_topic("health"), b"h2", 0, False)  # 5 > 4: the oldest health goes
    assert [it[1] for it in q.items] == [b"e1", b"s1", b"a1", b"h2"]
    q.push(_topic("event"), b"e2", 1, False)  # then the newer health
    q.push(_topic("event"), b"e3", 1, False)  # then the status
    assert [it[1] for it in q.items] == [b"e1", b"a1", b"e2", b"e3"]
    q.push(_topic("ack"), b"a2", 1, False)  # only acks and events left: the oldest goes
    assert [it[1] for it in q.items] == [b"a1", b"e2", b"e3", b"a2"]
    assert q.dropped_by_kind == {"health": 2, "status": 1, "event": 1}
    assert q.dropped == 4


def test_a_retained_status_replaces_the_queued_one_without_counting_a_drop():
    q = ReportQueue(limit=4)
    q.push(_topic("status"), b"s1", 1, True)
    q.push(_topic("event"), b"e1", 1, False)
    q.push(_topic("status"), b"s2", 1, True)
    assert [it[1] for it in q.items] == [b"e1", b"s2"] and q.dropped == 0
    assert q.first() == (_topic("event"), b"e1", 1, False)


def test_long_outage_keeps_acks_and_the_automatic_rollback_events():
    clock = ManualClock()
    control = MigrationControl.open(tmpdir("rtq"), FileSystem(), clock)
    link = MemoryLink(KEY, connected=False)
    rt = AgentRuntime(control, link, "fl", DEV, key=KEY, clock=clock, queue_limit=24,
                      monitor_interval_ms=1000, health_interval_ms=500,
                      status_interval_ms=60000)
    rt.start()
    for stage, seq in ((1, 10), (2, 11)):
        cmd = P.encode_command("migrate", {"stage": stage}, "device:" + DEV, seq,
                               control.plan.hash, FLEET_KEY, fleet=FLEET)
        rt.on_message(P.cmd_topic("fl", "device:" + DEV), cmd)
        rt.tick()
    for _ in range(50):
        control.record_outcome(False, 5)
    clock.advance(1000)
    rt.tick()
    assert control.stage == 1  # rolled back on its own, broker still down
    for _ in range(300):  # hours of health reports pile up behind those
        clock.advance(500)
        rt.tick()
    link.connected = True
    rt.on_connect()
    assert [a["result"] for a in link.reports("ack")] == ["applied", "applied"]
    names = [e["name"] for e in link.reports("event")]
    assert names.count("migration.stage_enabled") == 2
    assert "migration.rollback" in names and "health.violation" in names
    assert rt.queue.dropped_by_kind.get("health", 0) > 250
    assert rt.queue.dropped_by_kind.get("ack", 0) == 0
    assert rt.queue.dropped_by_kind.get("event", 0) == 0
    status = link.reports("status")[-1]
    assert status["stage"] == 1
    assert status["extra"]["queue_dropped_by_kind"]["health"] == rt.queue.dropped_by_kind["health"]
    assert status["extra"]["queue_dropped"] == rt.queue.dropped
    control.close()
