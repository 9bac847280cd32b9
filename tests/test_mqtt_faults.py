"""Faults on the field lab (tests/fieldlab.py: the shipped mosquitto config, agents and
operator tools as processes with their own logins): the broker dies in the middle of a
rollout, the agent is SIGKILLed during a stage change, a device is offline when the
command goes out, and the operator CLI's exit codes."""
import json
import signal
import time

import pytest

from agent import protocol as P
from tests.agentkit import PLAN


@pytest.fixture
def lab(field_lab):
    return field_lab(devices=["gw1"], groups={"gw1": ["pilot"]})


def _consistent(status):
    on = PLAN.flags_for_stage(status["stage"])
    return all(status["flags"].get(name, False) == on.get(name, False)
               for name in PLAN.flags_for_stage(PLAN.max_stage))


def test_broker_killed_mid_rollout_agent_keeps_working_and_converges(lab):
    # A slower reconnect than the observer's, so the observer is back first.
    agent = lab.start_agent("gw1", backoff_min_s=0.8, backoff_max_s=1.2)
    obs = lab.observer
    lab.wait_stage("gw1", 0)
    done = lab.cli("publish-stage", "1", "--target", "device:gw1", "--timeout", "15")
    assert done.returncode == 0, done.stdout + done.stderr
    lab.wait_stage("gw1", 1)

    lab.kill_broker()
    down_at = int(time.time() * 1000)
    sessions = obs.link.sessions
    assert lab.loop.run_until(lambda: "broker link lost" in agent.log()
                              and not obs.link.connected, 10)
    # No broker: the agent still answers on its console and still acts.
    r = agent.cli("local", "emergency-rollback", "--reason", "outage drill",
                  "--config", agent.config_path, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["via"] == "agent" and out["status"]["current_stage"] == 0
    assert agent.alive()

    lab.restart_broker()
    up_at = int(time.time() * 1000)
    # The observer (a clean session: the broker was SIGKILLed before its autosave) is
    # back and subscribed before the agent's slower reconnect.
    assert lab.loop.run_until(lambda: obs.link.sessions > sessions, 15)
    lab.loop.run_until(lambda: False, 0.2)  # its SUBSCRIBE is through
    seen = len(obs.of("status"))
    # The rollout goes on (a new operator process: command + retained desired state)
    # while the agent is still reconnecting.
    rollout = lab.cli_bg("publish-stage", "1", "--target", "device:gw1", "--json",
                         "--timeout", "20")
    stdout, stderr = rollout.communicate(timeout=40)
    # Applied by the command, or (the SIGKILLed broker lost the agent's session, so the
    # command found no subscriber) reported missing: the operator is told the truth.
    assert rollout.returncode in (0, 3), stdout + stderr
    sent = json.loads(stdout)
    if rollout.returncode == 3:
        assert sent["missing"] == ["gw1"] and sent["desired_signed_for"] == ["gw1"], sent
        # The retained desired state alone does not undo the console's emergency
        # rollback: the device holds it (and says so) until an operator command comes.
        def held():
            return [st for st in obs.of("status")[seen:]
                    if st["online"] and st["extra"].get("desired_held", 0) > 0]
        obs.wait_for(lambda: held(), 20)
        st = held()[-1]
        assert st["stage"] == 0 and st["extra"]["console_hold"] is True, st
        again = lab.cli("publish-stage", "1", "--target", "device:gw1", "--json",
                        "--timeout", "20")
        assert again.returncode == 0, again.stdout + again.stderr
        sent = json.loads(again.stdout)
    assert sent["devices"]["gw1"]["result"] == "applied", sent
    obs.wait_for(lambda: any(st["online"] and st["stage"] == 1
                             for st in obs.of("status")[seen:]), 20)
    assert _consistent(lab.wait_stage("gw1", 1))
    obs.wait_for(lambda: any(a["id"] == sent["command_id"] and a["result"] == "applied"
                             for a in obs.of("ack")))
    # The event from the outage was queued and sent after the reconnect.
    obs.wait_for(lambda: any(e["name"] == "migration.emergency_rollback"
                             for e in obs.of("event")))
    ev = [e for e in obs.of("event") if e["name"] == "migration.emergency_rollback"][0]
    assert down_at <= ev["at"] <= up_at
    assert agent.alive()


def test_sigkill_during_stage_change_restarts_consistent(lab):
    agent = lab.start_agent("gw1")
    obs = lab.observer
    lab.wait_stage("gw1", 0)
    # Each round: a retained desired state that takes several commits to reach
    # (0 -> 4 is four migrations), and a SIGKILL at a different moment of it.
    for target, delay in ((4, 0.0), (0, 0.005), (4, 0.02), (0, 0.0), (4, 0.05)):
        seen = len(obs.of("status"))
        desired = P.encode_desired("device:gw1", target, P.next_seq(0, time.time()), PLAN.hash,
                                   lab.fleet_key, devices=["gw1"], fleet=lab.fleet,
                                   emergency=target == 0, reason="drill" if target == 0 else None)
        lab.publish_raw("device:gw1", desired, desired=True, retain=True)
        lab.loop.run_until(lambda: False, delay)
        agent.kill(signal.SIGKILL)
        obs.wait_for(lambda s=seen: any(st["online"] is False for st in obs.of("status")[s:]))
        seen = len(obs.of("status"))
        agent.start()
        obs.wait_for(lambda s=seen: any(st["online"] for st in obs.of("status")[s:]))
        first = [st for st in obs.of("status")[seen:] if st["online"]][0]
        assert _consistent(first), first  # stage and flags agree, whatever the moment
        st = lab.wait_stage("gw1", target)  # and the retained desired state finishes the job
        assert _consistent(st)


def test_offline_device_converges_from_retained_desired(lab):
    agent = lab.start_agent("gw1")  # known to the fleet (its retained status), then offline
    lab.wait_stage("gw1", 0)
    agent.stop()
    lab.wait_status("gw1", lambda st: st["online"] is False)
    r = lab.cli("publish-stage", "2", "--target", "group:pilot", "--devices", "gw1",
                "--timeout", "1", "--json")
    assert r.returncode == 3, r.stdout + r.stderr  # timeout: nobody answered
    out = json.loads(r.stdout)
    assert out["missing"] == ["gw1"] and out["desired_signed_for"] == ["gw1"]
    lab.start_agent("gw1")
    st = lab.wait_stage("gw1", 2)
    assert _consistent(st)
    lab.observer.wait_for(lambda: any(a["id"] == out["desired_id"] and
                                      a["result"] == "applied"
                                      for a in lab.observer.of("ack")))


def test_dead_device_stays_in_its_group_and_converges_when_back(lab):
    agent = lab.start_agent("gw1")
    lab.wait_stage("gw1", 0)
    agent.kill(signal.SIGKILL)
    st = lab.wait_status("gw1", lambda st: st["online"] is False)
    assert st["groups"] == ["pilot"]  # the will keeps the groups
    # Discovery from retained status (a profile with no inventory, no --devices): the
    # dead device is still in group pilot.
    r = lab.cli("publish-stage", "1", "--profile", "lab-discovery", "--target", "group:pilot",
                "--timeout", "1", "--json")
    assert r.returncode == 3, r.stdout + r.stderr
    assert json.loads(r.stdout)["desired_signed_for"] == ["gw1"]
    lab.start_agent("gw1")
    assert _consistent(lab.wait_stage("gw1", 1))


def test_cli_exit_codes_and_a_refusing_device_stays_put(lab):
    agent = lab.start_agent("gw1")
    lab.wait_stage("gw1", 0)
    r = lab.cli("publish-stage", "3", "--target", "all", "--expect", "1", "--timeout", "10")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not_ready" in r.stdout
    r = lab.cli("publish-stage", "1", "--target", "all", "--json", "--timeout", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["devices"]["gw1"]["result"] == "applied"
    lab.wait_stage("gw1", 1)
    # The refused stage-3 desired state was never signed for gw1: it stays at 1.
    lab.loop.run_until(lambda: False, 0.5)  # let any stray desired state arrive
    assert lab.status_of("gw1")["stage"] == 1
    r = lab.cli("rollback", "0", "--target", "device:gw1", "--timeout", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    lab.wait_stage("gw1", 0)
    r = lab.cli("publish-stage", "1", "--target", "all", "--key", agent.key_file)
    assert r.returncode == 2 and "device key" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
