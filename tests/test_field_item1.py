"""Item 1 of issue 7, end to end on the field lab: one device's key cannot lock the
operator out of the fleet.

The attacker holds gw-3's device key and broker login (its agent is stopped: the
device is theirs). It publishes a validly signed, retained status claiming a guard
sequence at the end of the number space. The operator's numbers are its own
(tools/operator_seq.py), so an emergency rollback still reaches every honest device,
`status` shows gw-3's guard as ahead (not followed), the numbers the honest devices
hold stay near the operator's clock, and gw-3, once reflashed, obeys the retained
emergency rollback.
"""
import json
import time

from agent import protocol as P


def _poison(lab, device, guard_seq):
    login = lab.device_login(device)
    link = lab.device_link(device)
    payload = P.encode_status(device, 1, {}, plan_hash=None, online=True, groups=[],
                              extra={"guard_seq": guard_seq}, key=login.key,
                              now=int(time.time() * 1000), fleet=lab.fleet)
    link.publish(lab.topic(device, "status"), payload, qos=1, retain=True)
    assert lab.loop.run_until(lambda: not link.pending_out(), 5)
    lab.wait_status(device, lambda st: (st.get("extra") or {}).get("guard_seq") == guard_seq)
    link.close()


def test_item1_poisoned_guard_seq_cannot_lock_out_fleet(field_lab):
    lab = field_lab(devices=["gw-1", "gw-2", "gw-3"])
    for d in lab.devices:
        lab.start_agent(d)
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("online") and st.get("stage") == 0)
    done = lab.cli("publish-stage", "1", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    for d in lab.devices:
        lab.wait_status(d, lambda st: st.get("stage") == 1)

    # gw-3 is taken over: its agent stops, the attacker speaks with its key and login.
    lab.agents["gw-3"].kill()
    lab.wait_status("gw-3", lambda st: st.get("online") is False)
    for poisoned in (2**63 - 2, 2**63 - 5, P.MAX_SEQ - 1):
        _poison(lab, "gw-3", poisoned)
        st = lab.cli("status", "--json")
        summary = json.loads(st.stdout)["summary"]
        assert st.returncode == 1 and summary["guard_ahead"] == ["gw-3"], st.stdout + st.stderr

    # An ordinary command does not drag the honest devices to the poisoned number...
    done = lab.cli("publish-stage", "2", "--devices", "gw-1,gw-2", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    seq = json.loads(done.stdout)["seq"]
    assert abs(seq - time.time() * 1000) < 3_600_000, seq
    # ...and the emergency rollback still reaches every honest device.
    done = lab.cli("emergency-rollback", "--reason", "gw-3 taken over", "--timeout", "8",
                   "--json")
    out = json.loads(done.stdout)
    assert done.returncode == 3, done.stdout + done.stderr  # gw-3 is silent
    assert {d: (a or {}).get("result") for d, a in out["devices"].items()} == \
        {"gw-1": "applied", "gw-2": "applied", "gw-3": None}
    assert out["desired_signed_for"] == ["gw-1", "gw-2", "gw-3"]
    for d in ("gw-1", "gw-2"):
        st = lab.wait_status(d, lambda st: st.get("stage") == 0)
        assert st["extra"]["guard_seq"] < time.time() * 1000 + 3_600_000

    # gw-3 reflashed (same flash, honest firmware): the retained emergency state wins.
    lab.start_agent("gw-3")
    lab.wait_status("gw-3", lambda st: st.get("online") and st.get("stage") == 0)
