"""End to end on the field lab (tests/fieldlab.py): an agent PROCESS with its own broker
login and device key on the shipped mosquitto config (ACL, passwords, TLS), driven by
the operator tools as processes.

Stage 0 -> 4 -> back with acks, retained status and events; hostile payloads
each answered with their reason code while the state stays put; the local
console path with and without a running agent; a bad config stops the agent
at start naming the field.
"""
import json
import os
import time

import pytest

from agent import protocol as P
from firmware_shim import codec
from tests.agentkit import PLAN, wait_until
from tests.fieldlab import FieldLab
from tools.local_cmd import StateDirLock, StateDirLocked


@pytest.fixture
def lab(field_lab):
    return field_lab(devices=["gw1"], groups={"gw1": ["pilot"]})


@pytest.fixture(scope="module")
def config_lab(tmp_path_factory, field_pki):
    """One lab for the tests whose agent must stop at start (no broker traffic)."""
    lab = FieldLab(tmp_path_factory.mktemp("config-lab"), devices=["gw1"],
                   groups={"gw1": ["pilot"]}, pki=field_pki)
    yield lab
    lab.close()


def _cli_json(lab, *args):
    done = lab.cli(*args, "--json", "--timeout", "15")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def _resigned(payload, fleet_key, **changes):
    """A validly signed envelope with fields the encoder would refuse (e.g. an unknown op)."""
    env = codec.unpackb(codec.unpackb(payload)["body"])
    env.update(changes)
    return P.seal(env, P.KIND_CMD, fleet_key, ["gw1"])


def _flags_at(stage):
    on = PLAN.flags_for_stage(stage)
    return {name: on.get(name, False) for name in sorted(PLAN.flags_for_stage(PLAN.max_stage))}


def _subset(flags):
    return {k: flags[k] for k in _flags_at(0)}


def test_stage_0_to_4_and_back(lab):
    agent = lab.start_agent("gw1")
    obs = lab.observer
    st = lab.wait_stage("gw1", 0)
    assert st["plan"] == PLAN.hash and st["groups"] == ["pilot"] and st["agent_version"]
    assert st["extra"]["memory"]["rss"] > 5 * 1024 * 1024  # the Pi reports its resident set
    for stage in (1, 2, 3, 4):
        out = _cli_json(lab, "publish-stage", str(stage), "--target", "device:gw1")
        assert out["ok"] and out["devices"]["gw1"]["result"] == "applied", out
        st = lab.wait_stage("gw1", stage)
        assert _subset(st["flags"]) == _flags_at(stage)
    out = _cli_json(lab, "rollback", "2", "--target", "group:pilot")
    assert out["devices"]["gw1"]["result"] == "applied", out
    lab.wait_stage("gw1", 2)
    out = _cli_json(lab, "emergency-rollback", "--reason", "e2e drill", "--target", "all")
    assert out["devices"]["gw1"]["result"] == "applied", out
    st = lab.wait_stage("gw1", 0)
    assert _subset(st["flags"]) == _flags_at(0)
    events = [(e["name"], e["payload"]) for e in obs.of("event")]
    enabled = [p["stage"] for n, p in events if n == "migration.stage_enabled"]
    assert enabled == [1, 2, 3, 4]
    assert [p["to"] for n, p in events if n == "migration.rollback"] == [2]
    assert [p["reason"] for n, p in events if n == "migration.emergency_rollback"] == \
        ["e2e drill"]
    assert any(n == "feature_flag.changed" for n, _ in events)
    assert obs.of("health"), "health metrics go out on an interval"
    # The retained status a newcomer (another operator session) reads is the latest one.
    fresh = []
    late = lab.operator_link(on_message=lambda t, p, r: fresh.append((t, p, r)))
    late.subscribe(lab.topic("gw1", "status"), qos=1)
    assert lab.loop.run_until(lambda: fresh, 10)
    retained = P.decode_report(fresh[0][1], P.derive_device_key(lab.fleet_key, "gw1"))
    assert fresh[0][2] is True and retained["stage"] == 0 and retained["online"] is True
    assert agent.alive()


def test_hostile_input_gets_reason_codes_and_changes_nothing(lab):
    agent = lab.start_agent("gw1")
    obs = lab.observer
    lab.wait_stage("gw1", 0)
    good = _cli_json(lab, "publish-stage", "1", "--target", "device:gw1")
    assert good["devices"]["gw1"]["result"] == "applied"
    lab.wait_stage("gw1", 1)
    # The retained desired state that follows is acked too; let it land first.
    obs.wait_for(lambda: any(a["id"] == good["desired_id"] for a in obs.of("ack")))

    target, fleet = "device:gw1", lab.fleet
    seq = good["seq"] + 10
    applied = P.encode_command("migrate", {"stage": 2}, target, seq, PLAN.hash,
                               lab.fleet_key, devices=["gw1"], fleet=fleet)
    cid = P.decode_command(applied, None, "gw1", insecure=True).id
    cases = [
        ("forged", P.encode_command("migrate", {"stage": 2}, target, seq + 1, PLAN.hash,
                                    P.new_fleet_key(), devices=["gw1"], fleet=fleet),
         "bad_signature"),
        ("other plan", P.encode_command("migrate", {"stage": 2}, target, seq + 2, "ab" * 32,
                                        lab.fleet_key, devices=["gw1"], fleet=fleet),
         "wrong_plan"),
        ("unsigned", P.encode_command("migrate", {"stage": 2}, target, seq + 3, PLAN.hash,
                                      None, devices=["gw1"], fleet=fleet), "bad_signature"),
        ("truncated", applied[: len(applied) // 2], "malformed"),
        # under the broker's max_packet_size (270,000), over the agent's 256 KiB
        ("oversized", b"\xc6" + (265000).to_bytes(4, "big") + b"\x00" * 265000, "malformed"),
        ("random", os.urandom(64), "malformed"),
        ("empty", b"", "malformed"),
        ("unknown op", _resigned(applied, lab.fleet_key, op="reboot", args={},
                                 seq=seq + 4, id=P.new_command_id()), "unknown_op"),
    ]
    state_before = lab.status_of("gw1")
    for name, payload, reason in cases:
        n = len(obs.of("ack"))
        lab.publish_raw(target, payload)
        obs.wait_for(lambda n=n: len(obs.of("ack")) > n)
        ack = obs.of("ack")[n]
        assert ack["result"] == "rejected" and ack["reason"] == reason, (name, ack)
        assert agent.alive(), name
    # Now the real one, twice (QoS 1 redelivery), then a replay of its id with
    # other content, then an older sequence number (out of order).
    for expected in ("applied", "duplicate"):
        n = len(obs.of("ack"))
        lab.publish_raw(target, applied)
        obs.wait_for(lambda n=n: len(obs.of("ack")) > n)
        assert obs.of("ack")[n]["result"] == expected
    replay = P.encode_command("rollback", {"stage": 0}, target, seq + 20, PLAN.hash,
                              lab.fleet_key, devices=["gw1"], command_id=cid, fleet=fleet)
    older = P.encode_command("rollback", {"stage": 0}, target, seq - 5, PLAN.hash,
                             lab.fleet_key, devices=["gw1"], fleet=fleet)
    for payload, reason in ((replay, "replayed"), (older, "stale_sequence")):
        n = len(obs.of("ack"))
        lab.publish_raw(target, payload)
        obs.wait_for(lambda n=n: len(obs.of("ack")) > n)
        assert obs.of("ack")[n]["reason"] == reason
    st = lab.wait_stage("gw1", 2)
    assert st["stage"] == 2 and state_before["stage"] == 1
    history = [e for e in obs.of("event") if e["name"] == "migration.stage_enabled"]
    assert [e["payload"]["stage"] for e in history] == [1, 2]  # nothing hostile applied
    assert agent.alive()


def test_local_console_with_and_without_agent(lab):
    agent = lab.agent("gw1")
    # No agent has ever run with this config: there is no store to act on, and an empty
    # one made here would answer for a device whose state is elsewhere (a wrong
    # state_dir): refused in one line, nothing written
    for args in (("status",), ("emergency-rollback", "--reason", "drill")):
        r = agent.cli("local", *args, "--config", agent.config_path)
        assert r.returncode == 2 and "no agent state in" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not r.stdout
    assert not os.path.exists(os.path.join(agent.state_dir, "agent.store"))
    r = agent.cli("local", "emergency-rollback", "--reason", "x" * 194,
                  "--config", agent.config_path)
    assert r.returncode == 2 and "must be 1..193 characters, not 194" in r.stderr
    agent.start()
    lab.wait_stage("gw1", 0)
    agent.stop()
    # No agent: act on the store directly (and hold the lock while doing so).
    r = agent.cli("local", "status", "--config", agent.config_path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["via"] == "store" and out["status"]["current_stage"] == 0
    assert out["status"]["console_hold"] is False
    agent.start()
    lab.wait_stage("gw1", 0)
    _cli_json(lab, "publish-stage", "1", "--target", "device:gw1")
    lab.wait_stage("gw1", 1)
    # The running agent holds the lock: nobody else may open its store.
    with pytest.raises(StateDirLocked):
        StateDirLock(agent.state_dir).acquire()
    r = agent.cli("local", "emergency-rollback", "--reason", "console drill",
                  "--config", agent.config_path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["via"] == "agent" and out["status"]["current_stage"] == 0
    lab.wait_stage("gw1", 0)  # the agent told the broker too
    agent.stop()
    lab.wait_status("gw1", lambda st: st["online"] is False)
    # A clean stop is not a lost link: the log says what happened.
    tail = agent.log().rsplit("connected to broker", 1)[-1]
    assert "disconnected from broker" in tail and "link lost" not in tail, tail
    # While it is down the operator retains "stage 3"; then the console rolls it back.
    stale = P.encode_desired("device:gw1", 3, P.next_seq(0, time.time()), PLAN.hash,
                             lab.fleet_key, devices=["gw1"], fleet=lab.fleet)
    lab.publish_raw("device:gw1", stale, desired=True, retain=True)
    r = agent.cli("local", "emergency-rollback", "--reason", "again", "--config",
                  agent.config_path, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["via"] == "store"
    assert json.loads(r.stdout)["status"]["console_hold"] is True  # the console sees it
    r = agent.cli("local", "status", "--config", agent.config_path)
    assert r.returncode == 0 and "console hold: on" in r.stdout, r.stdout
    # Back online, the older retained desired state does not undo the console rollback;
    # the next command from the operator is obeyed.
    lab.start_agent("gw1")
    lab.wait_stage("gw1", 0)
    out = _cli_json(lab, "publish-stage", "1", "--target", "device:gw1")
    assert out["devices"]["gw1"]["result"] == "applied", out
    lab.wait_stage("gw1", 1)
    enabled = [e["payload"]["stage"] for e in lab.observer.of("event")
               if e["name"] == "migration.stage_enabled"]
    assert enabled == [1, 1]  # never 2 or 3: the stale desired state was not applied


@pytest.mark.parametrize("field,value,needle", [
    ("broker", "http://x:1", "'broker'"),
    ("device_id", "a/b", "'device_id'"),
    ("groups", "pilot", "'groups'"),
    ("insecure", "yes", "'insecure'"),
])
def test_bad_config_stops_agent_at_start(config_lab, field, value, needle):
    agent = config_lab.start_agent("gw1", **{field: value})
    assert agent.proc.wait(20) == 2
    assert needle in agent.log()


def test_missing_key_file_stops_agent(config_lab):
    agent = config_lab.start_agent("gw1", key_file="/nonexistent/gw1.key")
    assert agent.proc.wait(20) == 2
    assert "'key_file'" in agent.log()


def test_insecure_mode_warns_and_accepts_unsigned(lab):
    agent = lab.start_agent("gw1", insecure=True)
    lab.wait_stage("gw1", 0)
    assert wait_until(lambda: "insecure" in agent.log())
    assert "WARNING" in agent.log()
    unsigned = P.encode_command("migrate", {"stage": 1}, "device:gw1", 5, PLAN.hash, None,
                                fleet=lab.fleet)
    lab.publish_raw("device:gw1", unsigned)
    lab.wait_stage("gw1", 1)


def test_keygen_fleet_and_device_keys(tmp_path):
    from tools.cli import main

    fleet_file = str(tmp_path / "fleet.key")
    assert main(["keygen", "--out", fleet_file]) == 0
    assert os.stat(fleet_file).st_mode & 0o777 == 0o600
    with open(fleet_file, "rb") as f:
        first = f.read()
    info = P.parse_key_file(first)
    assert info.kind == "fleet" and len(info.key) == 32
    assert main(["keygen", "--out", fleet_file]) == 2  # never overwrite silently: exit 2
    with open(fleet_file, "rb") as f:
        assert f.read() == first
    dev_file = str(tmp_path / "gw7.key")
    assert main(["keygen", "--device", "gw7", "--fleet-key", fleet_file, "--out", dev_file]) == 0
    with open(dev_file, "rb") as f:
        dev = P.parse_key_file(f.read())
    assert dev.kind == "device" and dev.device_id == "gw7"
    assert dev.key == P.derive_device_key(info.key, "gw7")
    assert os.stat(dev_file).st_mode & 0o777 == 0o600
    assert main(["keygen", "--device", "gw8", "--fleet-key", dev_file,
                 "--out", str(tmp_path / "x.key")]) == 2  # a device key derives nothing
    assert main(["keygen", "--out", fleet_file, "--force"]) == 0
    with open(fleet_file, "rb") as f:
        assert f.read() != first
