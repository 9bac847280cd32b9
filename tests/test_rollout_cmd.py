"""`fleetstage rollout` on agent processes in the field lab (shipped broker config, ACL, TLS)."""
import json

import pytest

from agent.plan import Plan
from tests.orchkit import LabWorld


@pytest.fixture
def world(field_lab):
    """The field lab: shipped broker config, ACL, passwords, TLS, agents with own logins."""
    return LabWorld(field_lab(devices=["gw1", "gw2", "gw3"]))


def _rollout(world, agent, state, *extra):
    return agent.cli("rollout", "--broker", world.broker.url, "--key", world.fleet_key_file,
                     "--fleet", world.fleet, "--expect", "3", "--soak", "0.5", "--timeout", "15",
                     "--waves", "0.5,1", "--state", state, "--to-stage", "4", *extra,
                     timeout=120)


def _stages(world):
    latest = {}
    for r in world.observer.of("status"):
        if "stage" in r:
            latest[r["device"]] = r["stage"]
    return latest


def test_rollout_takes_the_fleet_through_the_stages_and_resumes_as_done(world, tmp_path):
    agents = [world.agent(d).start() for d in ("gw1", "gw2", "gw3")]
    world.observer.wait_for(lambda: len(_stages(world)) == 3, 30)
    state = str(tmp_path / "rollout.store")
    r = _rollout(world, agents[0], state, "--to-stage", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stage 1 wave 1" in r.stdout and "stage 2 wave 2" in r.stdout
    world.observer.wait_for(lambda: _stages(world) == {"gw1": 2, "gw2": 2, "gw3": 2}, 20)
    # a second run finds every wave done in its state file and sends nothing new
    r = _rollout(world, agents[0], state, "--to-stage", "2")
    assert r.returncode == 0 and "wave" not in r.stdout.replace("rollout done", ""), r.stdout


def test_a_failing_wave_halts_and_rolls_back_what_it_reached(world, tmp_path):
    other = Plan.default().to_dict()
    other["description"] = "a different plan: its hash differs, so gw3 refuses our commands"
    plan_file = tmp_path / "other-plan.json"
    plan_file.write_text(json.dumps(other))
    agents = [world.agent("gw1").start(), world.agent("gw2").start(),
              world.agent("gw3", config={"plan_file": str(plan_file)}).start()]
    world.observer.wait_for(lambda: len(_stages(world)) == 3, 30)
    state = str(tmp_path / "rollout.store")
    r = _rollout(world, agents[0], state, "--to-stage", "3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "HALT stage 1" in r.stdout and "wrong_plan" in r.stdout
    world.observer.wait_for(lambda: _stages(world) == {"gw1": 0, "gw2": 0, "gw3": 0}, 20)
    # a halted rollout stays halted
    r = _rollout(world, agents[0], state, "--to-stage", "3")
    assert r.returncode == 1 and "halted earlier" in r.stdout
    # ... and says so to machines too: the outcome object on stdout
    r = _rollout(world, agents[0], state, "--to-stage", "3", "--json")
    out = json.loads(r.stdout)
    assert r.returncode == 1 and out["outcome"] == "halted" and out["earlier"] is True
    assert out["exit_code"] == 1 and "--abort" in out["reason"]
    # a mistake in the new arguments is named, not hidden behind the recorded halt
    r = _rollout(world, agents[0], state, "--to-stage", "3", "--waves", "group:nosuch,100%")
    assert r.returncode == 2 and "nosuch" in r.stderr and "halted earlier" not in r.stdout
