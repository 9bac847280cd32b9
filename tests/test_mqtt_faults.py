"""Faults against a real mosquitto and a real agent process: the broker dies in
the middle of a rollout, the agent is SIGKILLed during a stage change, a device
is offline when the command goes out, and the operator CLI's exit codes."""
import json
import signal
import time

import pytest

from agent import protocol as P
from tests.agentkit import PLAN, World
from tests.mqttkit import Broker


@pytest.fixture
def own_broker(tmp_path):
    b = Broker(str(tmp_path / "mosq")).start()
    yield b
    b.stop()


def _consistent(status):
    on = PLAN.flags_for_stage(status["stage"])
    return all(status["flags"].get(name, False) == on.get(name, False)
               for name in PLAN.flags_for_stage(PLAN.max_stage))


def test_broker_killed_mid_rollout_agent_keeps_working_and_converges(own_broker, tmp_path):
    world = World(own_broker, tmp_path)
    try:
        # A slower reconnect than the observer's, so the observer is back first.
        agent = world.agent(config={"backoff_min_s": 0.8, "backoff_max_s": 1.2}).start()
        obs, op = world.observer, world.operator
        obs.wait_stage(0)
        assert op.publish_stage(1, "device:gw1", ["gw1"], timeout=15).exit_code() == 0
        obs.wait_stage(1)

        own_broker.kill()
        down_at = int(time.time() * 1000)
        assert world.loop.run_until(lambda: "broker link lost" in agent.log(), 10)
        # No broker: the agent still answers on its console and still acts.
        r = agent.cli("local", "emergency-rollback", "--reason", "outage drill",
                      "--config", agent.config_path, "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["via"] == "agent" and out["status"]["current_stage"] == 0
        assert agent.alive()

        own_broker.start()
        up_at = int(time.time() * 1000)
        assert world.loop.run_until(lambda: op.link.connected and obs.link.connected, 15)
        # The rollout goes on: command + retained desired state while the agent is
        # still reconnecting.
        outcome = op.send(P.OP_MIGRATE, {"stage": 1}, "device:gw1", ["gw1"])
        op.publish_desired(outcome, 1)
        st = obs.wait_stage(1, timeout=20)
        assert _consistent(st)
        # The event from the outage was queued and sent after the reconnect.
        obs.wait_for(lambda: any(e["name"] == "migration.emergency_rollback"
                                 for e in obs.of("event")))
        ev = [e for e in obs.of("event") if e["name"] == "migration.emergency_rollback"][0]
        assert down_at <= ev["at"] <= up_at
        assert agent.alive()
    finally:
        world.close()


def test_sigkill_during_stage_change_restarts_consistent(world_factory):
    world = world_factory()
    agent = world.agent().start()
    obs = world.observer
    obs.wait_stage(0)
    # Each round: a retained desired state that takes several commits to reach
    # (0 -> 4 is four migrations), and a SIGKILL at a different moment of it.
    for target, delay in ((4, 0.0), (0, 0.005), (4, 0.02), (0, 0.0), (4, 0.05)):
        seen = len(obs.of("status"))
        desired = P.encode_desired("device:gw1", target, P.next_seq(0, time.time()), PLAN.hash,
                                   world.fleet_key, devices=["gw1"],
                                   emergency=target == 0, reason="drill" if target == 0 else None)
        world.publish_raw("device:gw1", desired, desired=True, retain=True)
        world.loop.run_until(lambda: False, delay)
        agent.kill(signal.SIGKILL)
        obs.wait_for(lambda s=seen: any(st["online"] is False for st in obs.of("status")[s:]))
        seen = len(obs.of("status"))
        agent.start()
        obs.wait_for(lambda s=seen: any(st["online"] for st in obs.of("status")[s:]))
        first = [st for st in obs.of("status")[seen:] if st["online"]][0]
        assert _consistent(first), first  # stage and flags agree, whatever the moment
        st = obs.wait_stage(target)  # and the retained desired state finishes the job
        assert _consistent(st)


def test_offline_device_converges_from_retained_desired(world_factory):
    world = world_factory()
    agent = world.agent().start()  # known to the fleet (its retained status), then offline
    world.observer.wait_stage(0)
    agent.stop()
    world.observer.wait_for(lambda: world.observer.last_status()["online"] is False)
    r = agent.cli("publish-stage", "2", "--target", "group:pilot", "--devices", "gw1",
                  "--broker", world.broker.url, "--key", world.fleet_key_file,
                  "--fleet", world.fleet, "--timeout", "1", "--json")
    assert r.returncode == 3, r.stdout + r.stderr  # timeout: nobody answered
    out = json.loads(r.stdout)
    assert out["missing"] == ["gw1"] and out["desired_signed_for"] == ["gw1"]
    agent.start()
    st = world.observer.wait_stage(2)
    assert _consistent(st)
    world.observer.wait_for(lambda: any(a["id"] == out["desired_id"] and
                                        a["result"] == "applied"
                                        for a in world.observer.of("ack")))


def test_dead_device_stays_in_its_group_and_converges_when_back(world_factory):
    world = world_factory()
    agent = world.agent().start()
    world.observer.wait_stage(0)
    agent.kill(signal.SIGKILL)
    world.observer.wait_for(lambda: world.observer.last_status()["online"] is False)
    assert world.observer.last_status()["groups"] == ["pilot"]  # the will keeps the groups
    # Discovery from retained status (no --devices): the dead device is still in group pilot.
    r = agent.cli("publish-stage", "1", "--target", "group:pilot", "--broker", world.broker.url,
                  "--key", world.fleet_key_file, "--fleet", world.fleet, "--timeout", "1",
                  "--json")
    assert r.returncode == 3, r.stdout + r.stderr
    assert json.loads(r.stdout)["desired_signed_for"] == ["gw1"]
    agent.start()
    assert _consistent(world.observer.wait_stage(1))


def test_cli_exit_codes_and_a_refusing_device_stays_put(world_factory):
    world = world_factory()
    agent = world.agent().start()
    world.observer.wait_stage(0)
    base = ["--broker", world.broker.url, "--key", world.fleet_key_file, "--fleet",
            world.fleet, "--timeout", "10"]
    r = agent.cli("publish-stage", "3", "--target", "all", "--expect", "1", *base)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "not_ready" in r.stdout
    r = agent.cli("publish-stage", "1", "--target", "all", "--json", *base)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["devices"]["gw1"]["result"] == "applied"
    world.observer.wait_stage(1)
    # The refused stage-3 desired state was never signed for gw1: it stays at 1.
    world.loop.run_until(lambda: False, 0.5)  # let any stray desired state arrive
    assert world.observer.last_status()["stage"] == 1
    r = agent.cli("rollback", "0", "--target", "device:gw1", *base)
    assert r.returncode == 0, r.stdout + r.stderr
    r = agent.cli("publish-stage", "1", "--target", "all", "--broker", world.broker.url,
                  "--key", agent.key_file, "--fleet", world.fleet)
    assert r.returncode == 2 and "device key" in r.stderr


@pytest.fixture
def world_factory(broker, tmp_path):
    made = []

    def make():
        w = World(broker, tmp_path)
        made.append(w)
        return w
    yield make
    for w in made:
        w.close()
