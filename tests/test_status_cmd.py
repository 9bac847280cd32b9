"""`fleetstage status` / `watch` against a real mosquitto and real agent processes."""
import json
import subprocess
import sys

import pytest

from agent import protocol as P
from tests.agentkit import REPO, World


@pytest.fixture
def world(broker, tmp_path):
    w = World(broker, tmp_path)
    yield w
    w.close()


def _status(world, agent, *extra):
    return agent.cli("status", "--broker", world.broker.url, "--key", world.fleet_key_file,
                     "--fleet", world.fleet, "--timeout", "10", *extra)


def test_status_shows_each_device_and_refuses_forged_reports(world):
    a, b = world.agent("gw1").start(), world.agent("gw2").start()
    obs, op = world.observer, world.operator
    obs.wait_for(lambda: {r["device"] for r in obs.of("status")} >= {"gw1", "gw2"}, 20)
    out = op.publish_stage(1, "device:gw1", ["gw1"], timeout=15)
    assert out.acks["gw1"]["result"] == "applied"
    obs.wait_for(lambda: any(r["device"] == "gw1" and r.get("stage") == 1
                             for r in obs.of("status")))
    # a status for gw3 signed with a key that is not gw3's: must not count as a device
    forged = P.encode_status("gw3", 4, {}, key=P.derive_device_key(P.new_fleet_key(), "gw3"))
    world.operator.link.publish(P.device_topic(world.fleet, "gw3", "status"), forged, 1, True)
    assert world.loop.run_until(lambda: not world.operator.link.pending_out(), 5)
    r = _status(world, a, "--json")
    assert r.returncode == 1, r.stderr  # two stages in the fleet: not uniform
    report = json.loads(r.stdout)
    summary = report["summary"]
    assert summary["devices"] == 2 and summary["stages"] == {"0": 1, "1": 1}
    assert summary["bad_reports"] >= 1 and "gw3" not in report["devices"]
    assert report["devices"]["gw1"]["stage"] == 1 and summary["offline"] == []
    # a report that cannot be read keeps the exit code non-zero until it is gone
    world.operator.link.publish(P.device_topic(world.fleet, "gw3", "status"), b"", 1, True)
    # bring gw2 along: one stage, all online -> exit 0; then gw2 dies -> offline, exit 1
    assert op.publish_stage(1, "device:gw2", ["gw2"], timeout=15).acks["gw2"]["result"] == "applied"
    obs.wait_for(lambda: any(r["device"] == "gw2" and r.get("stage") == 1
                             for r in obs.of("status")))
    r = _status(world, a)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 devices; per stage {'1': 2}" in r.stdout
    b.kill()
    obs.wait_for(lambda: any(r["device"] == "gw2" and r.get("online") is False
                             for r in obs.of("status")), 20)
    r = _status(world, a, "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["summary"]["offline"] == ["gw2"]


def test_watch_follows_events(world):
    a = world.agent("gw1").start()
    world.observer.wait_stage(0, timeout=20)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.cli", "watch", "--broker", world.broker.url, "--key",
         world.fleet_key_file, "--fleet", world.fleet, "--for", "6"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        head = []
        while not any(" devices; " in line for line in head):  # watch has subscribed
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            head.append(line)
        out = world.operator.publish_stage(1, "device:gw1", ["gw1"], timeout=15)
        assert out.acks["gw1"]["result"] == "applied"
        stdout, stderr = proc.communicate(timeout=30)
        stdout = "".join(head) + stdout
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "migration.stage_enabled" in stdout, stdout + stderr
    assert "gw1" in stdout and a.alive()
