"""Fleet binding on the field lab: two fleets share one fleet key, and an attacker holds
one device's key and broker login. A command captured from fleet A (the bytes fleet A's
operator signs for `publish-stage --target all`) does not apply on fleet B; neither does
one signed with the shared key for no fleet (the binding is strict)."""
import json

from agent import protocol as P
from tests.agentkit import PLAN
from tests.mqttkit import unique


def test_a_command_captured_from_another_fleet_with_the_same_key_does_not_apply(field_lab):
    lab = field_lab(devices=["gw-1", "gw-2"])  # fleet B
    for d in ("gw-1", "gw-2"):
        lab.start_agent(d)
        lab.wait_stage(d, 0)
    fleet_a = unique("fleet-a-")
    seq = P.next_seq(0, 2e9)  # far ahead: a stale sequence number is not why it fails
    captured = P.encode_command("migrate", {"stage": 1}, "all", seq, PLAN.hash, lab.fleet_key,
                                devices=["gw-1", "gw-2"], fleet=fleet_a)
    unbound = P.encode_command("migrate", {"stage": 1}, "all", seq + 1, PLAN.hash,
                               lab.fleet_key, devices=["gw-1", "gw-2"])
    # With gw-2's own login the broker's ACL drops it (a device cannot publish commands).
    evil = lab.device_link("gw-2")
    evil.publish(P.cmd_topic(lab.fleet, "all"), captured, qos=1)
    lab.loop.run_until(lambda: False, 1.0)
    assert not lab.observer.of("ack")
    # (Its session took gw-2's client id, so the real gw-2 was knocked off: let it back.)
    seen = len(lab.observer.of("status"))
    evil.close()
    lab.observer.wait_for(lambda: any(st["device"] == "gw-2" and st["online"]
                                      for st in lab.observer.of("status")[seen:]), 20)
    # Past the ACL (a leaked operator password, no fleet key): refused by every device.
    acks = lab.observer.of("ack")
    for payload, detail in ((captured, fleet_a), (unbound, "no fleet")):
        n = len(acks)
        lab.publish_raw("all", payload)
        lab.observer.wait_for(lambda n=n: len(lab.observer.of("ack")) >= n + 2)
        acks = lab.observer.of("ack")
        got = {a["device"]: a for a in acks[n:]}
        for d in ("gw-1", "gw-2"):
            assert got[d]["result"] == "rejected" and got[d]["reason"] == "bad_signature", got
            assert detail in got[d]["detail"], got
    for d in ("gw-1", "gw-2"):
        st = lab.wait_stage(d, 0)
        assert st["extra"]["guard_seq"] < seq, st  # the guard did not move either
    assert not [e for e in lab.observer.of("event") if e["name"] == "migration.stage_enabled"]
    # Fleet B's own operator still reaches both.
    done = lab.cli("publish-stage", "1", "--target", "all", "--json", "--timeout", "15")
    assert done.returncode == 0, done.stdout + done.stderr
    assert {d: r["result"] for d, r in json.loads(done.stdout)["devices"].items()} == \
        {"gw-1": "applied", "gw-2": "applied"}
