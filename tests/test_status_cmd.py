"""`fleetstage status` / `watch` on the field lab (tests/fieldlab.py): the shipped broker
config, agent processes with their own logins, operator tools as processes at once."""
import json
import signal

import pytest

from agent import protocol as P


@pytest.fixture
def lab(field_lab):
    return field_lab(devices=["gw1", "gw2"], groups={"gw1": ["pilot"], "gw2": ["pilot"]})


def _publish(lab, stage, device):
    done = lab.cli("publish-stage", str(stage), "--target", "device:" + device, "--json",
                   "--timeout", "15")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["devices"][device]["result"] == "applied"


def test_status_shows_each_device_and_refuses_forged_reports(lab):
    lab.start_agent("gw1")
    b = lab.start_agent("gw2")
    for d in ("gw1", "gw2"):
        lab.wait_stage(d, 0)
    _publish(lab, 1, "gw1")
    lab.wait_stage("gw1", 1)
    # a status for gw3 signed with a key that is not gw3's: must not count as a device
    forged = P.encode_status("gw3", 4, {}, key=P.derive_device_key(P.new_fleet_key(), "gw3"))
    raw = lab.operator_link()
    raw.publish(lab.topic("gw3", "status"), forged, 1, True)
    assert lab.loop.run_until(lambda: not raw.pending_out(), 5)
    for profile in ("lab", "lab-discovery"):  # with the inventory and without
        r = lab.cli("status", "--profile", profile, "--timeout", "10", "--json")
        assert r.returncode == 1, r.stdout + r.stderr  # two stages in the fleet: not uniform
        report = json.loads(r.stdout)
        summary = report["summary"]
        assert summary["devices"] == 2 and summary["stages"] == {"0": 1, "1": 1}, report
        assert summary["bad_reports"] >= 1 and "gw3" not in report["devices"]
        assert report["devices"]["gw1"]["stage"] == 1 and summary["offline"] == []
    # a report that cannot be read keeps the exit code non-zero until it is gone
    raw.publish(lab.topic("gw3", "status"), b"", 1, True)
    assert lab.loop.run_until(lambda: not raw.pending_out(), 5)
    # bring gw2 along: one stage, all online -> exit 0; then gw2 dies -> offline, exit 1
    _publish(lab, 1, "gw2")
    lab.wait_stage("gw2", 1)
    r = lab.cli("status", "--timeout", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 devices; per stage {'1': 2}" in r.stdout
    b.kill()
    lab.wait_status("gw2", lambda st: st.get("online") is False)
    r = lab.cli("status", "--timeout", "10", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["summary"]["offline"] == ["gw2"]


def test_watch_follows_events(lab):
    a = lab.start_agent("gw1")
    lab.wait_stage("gw1", 0)
    # --for bounds the test if the event never comes; a loaded machine gets the time it needs
    proc = lab.cli_bg("watch", "--for", "60")
    head = []

    def read_until(text):
        while not any(text in line for line in head):
            line = proc.stdout.readline()
            assert line, "".join(head) + proc.stderr.read()
            head.append(line)

    read_until(" devices; ")  # watch has subscribed
    _publish(lab, 1, "gw1")  # another operator tool, while watch runs
    read_until("migration.stage_enabled")
    read_until("stage 1 ")  # the status that follows the event
    proc.send_signal(signal.SIGINT)  # the operator's Ctrl-C
    stdout, stderr = proc.communicate(timeout=30)
    stdout = "".join(head) + stdout
    # the exit code is for the fleet as watch ends, as status's: gw1 at stage 1 by this
    # operator's own command (no false GUARD AHEAD or REPLACED), but the lab's inventory
    # names gw2, which never reported: 1
    assert proc.returncode == 1 and "Traceback" not in stderr, stdout + stderr
    assert "never seen (in the inventory, no status yet): gw2" in stdout
    assert "GUARD AHEAD" not in stdout and "REPLACED" not in stdout, stdout
    assert any("gw1" in line and "migration.stage_enabled" in line for line in head), stdout
    assert a.alive()


def test_watch_judges_a_guard_against_this_operators_newest_sequence_number():
    """A device that took this operator's newest command (publish-stage beside `watch`)
    is not GUARD AHEAD: the view re-reads the operator's last sequence number before
    it calls a guard ahead, and only then."""
    import time

    from tools.status_cmd import FleetView

    issued = int(time.time() * 1000) + 60_000  # this operator's clock ran ahead of the wall
    st = {"extra": {"guard_seq": issued}}
    stale = FleetView("f", b"k" * 32, our_last_seq=issued - 5)
    assert stale.ahead(st)  # nothing to re-read: ahead of what this view knows
    reads = []
    view = FleetView("f", b"k" * 32, our_last_seq=issued - 5)
    view.read_our_last_seq = lambda: reads.append(1) or issued
    assert not view.ahead(st) and view.our_last_seq == issued and reads == [1]
    assert view.ahead({"extra": {"guard_seq": issued + 1}})  # really ahead: still said
    assert not view.ahead({"extra": {"guard_seq": 5}}) and len(reads) == 2
