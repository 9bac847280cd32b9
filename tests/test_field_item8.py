"""Item 8 of issue 7 ("other weaknesses") on the field lab, one test each."""
import json
import os
import stat
import struct
import subprocess
import time

from agent import protocol as P
from agent.plan import Plan
from firmware_shim.crypto import crc32

PLAN = Plan.default()


def _up(lab, devices=None):
    for d in devices or lab.devices:
        lab.start_agent(d)
    for d in devices or lab.devices:
        lab.wait_status(d, lambda st: st.get("online") and st.get("stage") == 0)


def test_item8_last_will_carries_the_current_guard_seq(field_lab):
    lab = field_lab(devices=["gw-1"])
    _up(lab)
    assert lab.cli("publish-stage", "1").returncode == 0
    # publish-stage signs the command at seq N and the retained desired state at N + 1
    # (each acked once the agent takes it; N is the smaller). Wait until the agent has
    # taken both, so nothing moves its guard after this: the will is registered at
    # CONNECT, and MQTT cannot change it while the session lasts
    # (agent.runtime.will_message: the guard "as of connecting").
    lab.observer.wait_for(lambda: any(a.get("seq") is not None for a in lab.observer.of("ack")))
    command_seq = min(a["seq"] for a in lab.observer.of("ack") if a.get("seq") is not None)
    settled = lab.wait_status("gw-1", lambda st: st.get("stage") == 1 and
                              (st.get("extra") or {}).get("guard_seq") == command_seq + 1)
    # The link drops and comes back (someone with gw-1's login takes its session for a
    # moment): the will registered at the new CONNECT carries the guard as it is now.
    reconnects = len([r for r in lab.observer.of("status") if r.get("device") == "gw-1"])
    intruder = lab.device_link("gw-1")
    intruder.close()
    lab.observer.wait_for(lambda: len([r for r in lab.observer.of("status")
                                       if r.get("device") == "gw-1"]) > reconnects + 1)
    guard = lab.wait_status("gw-1", lambda st: st.get("online") is True)["extra"]["guard_seq"]
    assert guard == settled["extra"]["guard_seq"]
    assert "connected to broker" in lab.agents["gw-1"].log().split("link lost")[-1]
    lab.agents["gw-1"].kill()
    will = lab.wait_status("gw-1", lambda st: st.get("online") is False)
    assert will["extra"]["guard_seq"] == guard, will


def test_item8_fleet_name_is_bound_into_what_is_signed(field_lab):
    lab = field_lab(devices=["gw-1"])
    _up(lab)
    op = lab.operator_link()
    # A command for another fleet under the same key, replayed onto this fleet's topic.
    seq = int(time.time() * 1000) + 5000
    cmd = P.encode_command(P.OP_MIGRATE, {"stage": 1}, "device:gw-1", seq, PLAN.hash,
                           lab.fleet_key, devices=["gw-1"], issued_at=int(time.time()),
                           fleet="other-fleet")
    n = len(lab.observer.of("ack"))
    op.publish(P.cmd_topic(lab.fleet, "device:gw-1"), cmd, qos=1)
    lab.observer.wait_for(lambda: len(lab.observer.of("ack")) > n)
    ack = lab.observer.of("ack")[n]
    assert (ack["result"], ack["reason"]) == ("rejected", "bad_signature"), ack
    assert "other-fleet" in ack["detail"]
    assert lab.status_of("gw-1")["stage"] == 0
    # A device report names its fleet under its MAC: one from another fleet is refused.
    login = lab.device_login("gw-1")
    report = P.encode_status("gw-1", 4, {}, key=login.key, now=int(time.time() * 1000),
                             fleet="other-fleet", online=True)
    assert P.decode_report(report, login.key, fleet="other-fleet")["stage"] == 4
    try:
        P.decode_report(report, login.key, fleet=lab.fleet)
        raise AssertionError("a report of another fleet verified")
    except P.ReportError:
        pass


def test_item8_old_signed_status_replayed_shows_stale(field_lab):
    lab = field_lab(devices=["gw-1"])
    _up(lab)
    captured = []
    link = lab.operator_link(on_message=lambda t, p, r: captured.append(p) if p else None)
    link.subscribe(lab.topic("gw-1", "status"))
    assert lab.loop.run_until(lambda: captured, 10)
    lab.agents["gw-1"].kill()
    lab.wait_status("gw-1", lambda st: st.get("online") is False)
    time.sleep(2.5)
    # Someone republishes the old "online" status (validly signed by gw-1, long ago).
    link.publish(lab.topic("gw-1", "status"), captured[0], qos=1, retain=True)
    lab.wait_status("gw-1", lambda st: st.get("online") is True)
    done = lab.cli("status", "--stale-after", "2", "--json")
    summary = json.loads(done.stdout)["summary"]
    assert done.returncode == 1 and summary["stale"] == ["gw-1"], done.stdout
    text = lab.cli("status", "--stale-after", "2").stdout
    assert "STALE" in text, text


def test_item8_groups_from_the_inventory_are_authoritative(field_lab):
    lab = field_lab(devices=["gw-1", "gw-2"], groups={"gw-1": ["line-a"]})
    lab.start_agent("gw-1")
    lab.start_agent("gw-2", groups=["line-a"])  # gw-2 claims a group it is not in
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("online") and st.get("stage") == 0)
    done = lab.cli("publish-stage", "1", "--target", "group:line-a", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert list(json.loads(done.stdout)["devices"]) == ["gw-1"]
    lab.wait_status("gw-1", lambda st: st.get("stage") == 1)
    assert lab.status_of("gw-2")["stage"] == 0
    done = lab.cli("status", "--json")
    assert json.loads(done.stdout)["summary"]["groups_mismatch"] == ["gw-2"], done.stdout


def test_item8_status_survives_odd_types_and_fails_on_unreadable_reports(field_lab):
    lab = field_lab(devices=["gw-1", "gw-2"])
    _up(lab, ["gw-1"])
    login = lab.device_login("gw-2")
    evil = lab.device_link("gw-2")
    odd = P.encode_status("gw-2", "x", {"a": 1}, health="boom", online=True, groups="g",
                          quarantined="yes", extra=5, key=login.key, now="late",
                          fleet=lab.fleet)
    evil.publish(lab.topic("gw-2", "status"), odd, qos=1, retain=True)
    lab.wait_status("gw-2", lambda st: st.get("health") == "boom")
    for args in (("status",), ("status", "--json")):
        done = lab.cli(*args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "ODD REPORT" in lab.cli("status").stdout
    # Unreadable (garbage under gw-2's login): counted, and the exit code says so.
    evil.publish(lab.topic("gw-2", "status"), b"\x81\xa1k\xc1", qos=1, retain=True)
    assert lab.loop.run_until(lambda: not evil.pending_out(), 5)
    time.sleep(0.5)
    done = lab.cli("status", "--json")
    summary = json.loads(done.stdout)["summary"]
    assert done.returncode == 1 and summary["bad_reports"] >= 1, done.stdout


def test_item8_state_dir_is_0700_and_the_store_0600(field_lab):
    lab = field_lab(devices=["gw-1"])
    _up(lab)
    state = lab.agents["gw-1"].state_dir
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    files = [os.path.join(state, f) for f in os.listdir(state)]
    assert files
    for f in files:
        if os.path.isfile(f):
            assert stat.S_IMODE(os.stat(f).st_mode) & 0o077 == 0, f


def _full_filesystem(path):
    """A 16 KiB tmpfs at `path`, filled up: a real full disk. True if it could be mounted."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs", path],
                          capture_output=True)
    if done.returncode:
        return False
    fd = os.open(os.path.join(path, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return True


def test_item8_full_disk_and_unknown_store_format_are_one_line(field_lab, tmp_path):
    lab = field_lab(devices=["gw-1", "gw-2"])
    full = str(tmp_path / "full")
    if _full_filesystem(full):
        try:
            a = lab.start_agent("gw-1", state_dir=full)
            assert a.proc.wait(20) == 2
        finally:
            subprocess.run(["umount", "-l", full], capture_output=True)
        lines = [ln for ln in a.log().splitlines() if "cannot start" in ln]
        assert lines and "No space left on device" in lines[-1], a.log()
    else:
        # No mount in this sandbox: the stand-in is a lock file on /dev/full, where
        # every write fails as it does on a full disk (the message says why).
        a = lab.start_agent("gw-1")
        lab.wait_status("gw-1", lambda st: st.get("online"))
        a.kill()
        lock = os.path.join(a.state_dir, "agent.lock")
        os.unlink(lock)
        os.symlink("/dev/full", lock)
        a.start()
        assert a.proc.wait(20) == 2
        lines = [ln for ln in a.log().splitlines() if "cannot start" in ln]
        assert lines and "cannot write the lock file" in lines[-1], a.log()
    assert "Traceback" not in a.log()
    # A store written by a newer agent (format version 99): refused, left untouched.
    b = lab.start_agent("gw-2")
    lab.wait_status("gw-2", lambda st: st.get("online"))
    b.stop()
    stores = [os.path.join(b.state_dir, n) for n in os.listdir(b.state_dir)
              if open(os.path.join(b.state_dir, n), "rb").read(4) == b"FSTG"]
    assert stores
    data = bytearray(open(stores[0], "rb").read())
    data[4] = 99  # an intact header (its CRC redone) of format version 99
    data[12:16] = struct.pack("<I", crc32(bytes(data[:12])))
    open(stores[0], "wb").write(bytes(data))
    b.start()
    assert b.proc.wait(20) == 2
    last = [ln for ln in b.log().splitlines() if "cannot start" in ln][-1]
    assert "store" in last and "version 99" in last and "Traceback" not in b.log()
    assert open(stores[0], "rb").read() == bytes(data)


def test_item8_captured_desired_state_replayed_after_emergency_is_caught(field_lab):
    lab = field_lab(devices=["gw-1", "gw-2"])
    # gw-2's broker session is purged whenever it reconnects (clean session).
    lab.start_agent("gw-1")
    lab.start_agent("gw-2", clean_session=True)
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("online") and st.get("stage") == 0)
    captured = {}
    spy = lab.operator_link(on_message=lambda t, p, r: captured.__setitem__(t, p) if p else None)
    spy.subscribe("fleetstage/%s/desired/all" % lab.fleet)
    assert lab.cli("publish-stage", "1").returncode == 0
    assert lab.loop.run_until(lambda: captured, 10)
    stage1 = dict(captured)
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("stage") == 1)
    lab.agents["gw-2"].stop()  # offline through the emergency
    lab.wait_status("gw-2", lambda st: st.get("online") is False)
    done = lab.cli("emergency-rollback", "--reason", "drill", "--timeout", "5")
    assert done.returncode == 3, done.stdout + done.stderr  # gw-2 silent
    lab.wait_status("gw-1", lambda st: st.get("stage") == 0)
    # Someone with the operator's broker password (not the fleet key) puts back the
    # captured stage-1 desired state.
    topic, payload = next(iter(stage1.items()))
    spy.publish(topic, payload, qos=1, retain=True)
    assert lab.loop.run_until(lambda: not spy.pending_out(), 5)
    done = lab.cli("status", "--json")
    summary = json.loads(done.stdout)["summary"]
    assert done.returncode == 1 and summary["desired_replaced"] == [topic], done.stdout
    done = lab.cli("status", "--repair")
    assert "REPLACED" in done.stdout and "republished" in done.stdout, done.stdout
    assert json.loads(lab.cli("status", "--json").stdout)["summary"]["desired_replaced"] == []
    # gw-2 comes back with its session purged: the emergency state is what it finds.
    lab.start_agent("gw-2", clean_session=True)
    lab.wait_status("gw-2", lambda st: st.get("online") and st.get("stage") == 0)
