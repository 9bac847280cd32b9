"""`fleetstage rollout` end to end in the field lab (tests/fieldlab.py): mosquitto on the
shipped config with the generated ACL, password file and TLS; agents as processes with
their own logins (or in process with a gateway's traffic and their own logins, for the
cohort that breaks at stage 3); the rollout and the other operator tools as processes
with the operator profile, running at the same time. Soak times are scaled to
fractions of a second; nothing here asserts on the wall clock.

Issue 7 items 3, 4, 5 and issue 10's proof list.
"""
import json
import signal
import time

import pytest

from agent import protocol as P
from agent.plan import Plan
from tests.orchkit import InProcessGateways, LabWorld, run_rollout, start_rollout


@pytest.fixture
def make_world(field_lab):
    def make(devices, groups=None):
        return LabWorld(field_lab(devices=devices, groups={
            d: list((groups or {}).get(d, ["pilot"])) for d in devices}))
    return make


def _stages(world):
    latest = {}
    for r in world.observer.of("status"):
        if "stage" in r:
            latest[r["device"]] = r["stage"]
    return latest


def _fleet(world, ids):
    agents = [world.agent(d).start() for d in ids]
    world.observer.wait_for(lambda: len(_stages(world)) == len(ids), 30)
    return agents


def _stage_enabled(world):
    """device -> [stage, ...] of every migration.stage_enabled event, in order."""
    out = {}
    for r in world.observer.of("event"):
        if r.get("name") == "migration.stage_enabled":
            out.setdefault(r["device"], []).append(r["payload"]["stage"])
    return out


def test_rollout_completes_every_wave_of_every_stage(make_world, tmp_path):
    world = make_world(["gw1", "gw2", "gw3", "gw4"], {"gw1": ["canary"]})
    ids = ["gw1", "gw2", "gw3", "gw4"]
    _fleet(world, ids)
    r = run_rollout(world, str(tmp_path / "r.store"), "--expect", "4", "--soak", "0.3",
                    "--waves", "group:canary,50%,100%", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["outcome"] == "completed"
    assert [(w["stage"], w["label"], w["devices"], w["decision"]) for w in out["waves"]] == [
        (s, label, n, "advance") for s in (1, 2, 3, 4)
        for label, n in (("group:canary", 1), ("50%", 1), ("100%", 2))]
    world.observer.wait_for(lambda: _stages(world) == {d: 4 for d in ids}, 20)
    world.loop.run_until(lambda: False, 1.0)  # events still on their way
    assert all(v == [1, 2, 3, 4] for v in _stage_enabled(world).values())


def test_a_group_failing_at_stage_3_halts_at_its_wave_names_the_group_and_rolls_back(
        make_world, tmp_path):
    specs = {"gw-c": {"groups": ["canary"], "hw": "rev-a"}}
    for i in range(5):
        specs["gw-a%d" % i] = {"groups": ["line-1"], "hw": "rev-a"}
    for i in range(3):
        specs["gw-b%d" % i] = {"groups": ["line-2"], "hw": "rev-b", "bad_from_stage": 3}
    world = make_world(list(specs), {d: spec["groups"] for d, spec in specs.items()})
    fleet = InProcessGateways(world, specs)
    try:
        fleet.loop.run_until(lambda: False, 0.5)
        proc = start_rollout(world, str(tmp_path / "r.store"), "--expect", str(len(specs)),
                             "--soak", "1.5", "--waves", "group:canary,100%", "--json",
                             "--error-threshold", "2")
        out, err = fleet.run_while(proc)
        assert proc.returncode == 1, out + err
        result = json.loads(out)
        halted = result["waves"][-1]
        assert (halted["stage"], halted["label"], halted["decision"]) == (3, "100%", "halt")
        assert halted["rolled_back"] == 3, halted
        assert set(halted["failing"]) == {
            "gw-b0", "gw-b1", "gw-b2"}
        blamed = result["blamed"]
        assert blamed["cohort"] in ("line-2", "rev-b")
        assert blamed["text"].endswith("3 of 3 failed; others: 0 of 5")
        by_hw = {row["cohort"]: row for row in halted["cohorts"]["by_hw"]}
        assert by_hw["rev-b"]["failed"] == 3 and "rev-a" not in by_hw
        assert "blamed cohort" in result["reason"]
        assert [w["decision"] for w in result["waves"][:-1]] == ["advance"] * 5
        # every device that reached stage 3 went back to 2 (the bad ones were at 2 already)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and set(fleet.stages().values()) != {2}:
            fleet.pump()
        assert fleet.stages() == {d: 2 for d in specs}
    finally:
        fleet.close()


def test_silent_devices_count_against_the_error_threshold_after_the_timeout(
        make_world, tmp_path):
    ghost = "gw-ghost"
    world = make_world(["gw1", "gw2", "gw3", ghost])
    _fleet(world, ["gw1", "gw2", "gw3"])
    # A device that says it is online (a retained status it signed, sent with its own
    # login) but answers nothing.
    status = P.encode_status(ghost, 0, {}, groups=["pilot"], fleet=world.fleet,
                             key=P.derive_device_key(world.fleet_key, ghost))
    world.publish_as(ghost, P.device_topic(world.fleet, ghost, "status"), status, retain=True)
    world.observer.wait_for(lambda: ghost in _stages(world), 10)
    r = run_rollout(world, str(tmp_path / "r.store"), "--expect", "4", "--soak", "0.3",
                    "--waves", "100%", "--timeout", "2", "--error-threshold", "0", "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    wave = json.loads(r.stdout)["waves"][0]
    assert (wave["stage"], wave["silent"], wave["applied"]) == (1, 1, 3)
    assert wave["failing"] == {ghost: "silent"}
    world.observer.wait_for(lambda: all(_stages(world)[d] == 0 for d in ("gw1", "gw2", "gw3")))


def test_item3_emergency_rollback_beats_running_rollout(make_world, tmp_path):
    ids = ["gw1", "gw2", "gw3"]
    world = make_world(ids)
    agents = _fleet(world, ids)
    # soaks long enough for the emergency rollback to land while it runs
    proc = start_rollout(world, str(tmp_path / "r.store"), "--expect", "3", "--soak", "6",
                         "--waves", "100%", "--to-stage", "4")
    world.observer.wait_for(lambda: set(_stages(world).values()) == {2}, 60)
    er = agents[0].cli("emergency-rollback", "--reason", "pager", "--target", "all", "--broker",
                       world.broker.url, "--key", world.fleet_key_file, "--fleet", world.fleet,
                       "--expect", "3")
    assert er.returncode == 0, er.stdout + er.stderr
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, out + err
    assert "emergency" in out and "raises no device again" in out
    assert "HALT" not in out and "failed" not in out.split("STOP")[-1]
    world.observer.wait_for(lambda: _stages(world) == {d: 0 for d in ids}, 20)
    # never raised again: no device climbs back from 0 (item 3 saw 0 -> 1 -> 2)
    before = len(world.observer.of("event"))
    world.loop.run_until(lambda: False, 3.0)
    assert _stages(world) == {d: 0 for d in ids}
    assert not [e for e in world.observer.of("event")[before:]
                if e.get("name") == "migration.stage_enabled"]
    # a rerun does not go on over the emergency rollback
    again = run_rollout(world, str(tmp_path / "r.store"), "--expect", "3", "--soak", "0.3",
                        "--waves", "100%", "--to-stage", "4")
    assert again.returncode == 5 and "--abort" in again.stdout, again.stdout + again.stderr


def test_item4_two_orchestrators_cannot_run_one_rollout(make_world, tmp_path):
    world = make_world(["gw1", "gw2"])
    _fleet(world, ["gw1", "gw2"])
    # a soak long enough that the two attempts below happen while it runs (checked)
    first = start_rollout(world, str(tmp_path / "a.store"), "--expect", "2", "--soak", "10",
                          "--waves", "100%", "--to-stage", "2")
    world.observer.wait_for(lambda: 1 in _stages(world).values(), 60)
    # another machine (its own state file): the retained lease stops it
    other = run_rollout(world, str(tmp_path / "b.store"), "--expect", "2", "--soak", "1",
                        "--waves", "100%", "--to-stage", "3")
    assert other.returncode == 2, other.stdout + other.stderr
    assert "another rollout" in other.stderr and "holds fleet" in other.stderr
    # the same machine and state file: the lock stops it
    same = run_rollout(world, str(tmp_path / "a.store"), "--expect", "2", "--soak", "1",
                       "--waves", "100%", "--to-stage", "3")
    assert same.returncode == 2 and "using" in same.stderr, same.stdout + same.stderr
    assert first.poll() is None, "the first rollout ended before the checks: lengthen its soak"
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, out + err
    world.observer.wait_for(lambda: _stages(world) == {"gw1": 2, "gw2": 2}, 20)
    world.observer.wait_for(lambda: all(len(v) == 2 for v in _stage_enabled(world).values()))
    # one migrate per device per stage, none replayed: judged on its own acks
    assert all(v == [1, 2] for v in _stage_enabled(world).values()), (_stage_enabled(world), out)
    assert not [a for a in world.observer.of("ack") if a.get("reason") == "replayed"]
    # the lease is released at the end: the other machine may go now
    again = run_rollout(world, str(tmp_path / "b.store"), "--expect", "2", "--soak", "0.2",
                        "--waves", "100%", "--to-stage", "3")
    assert again.returncode == 0, again.stdout + again.stderr
    world.observer.wait_for(lambda: _stages(world) == {"gw1": 3, "gw2": 3}, 20)


def test_item5_finished_state_file_that_no_longer_matches_the_fleet_is_refused(
        make_world, tmp_path):
    world = make_world(["gw1", "gw2"])
    agents = _fleet(world, ["gw1", "gw2"])
    state = str(tmp_path / "r.store")
    args = ("--expect", "2", "--soak", "0.2", "--waves", "100%", "--to-stage", "2")
    assert run_rollout(world, state, *args).returncode == 0
    rb = agents[0].cli("rollback", "0", "--target", "all", "--broker", world.broker.url,
                       "--key", world.fleet_key_file, "--fleet", world.fleet, "--expect", "2")
    assert rb.returncode == 0, rb.stdout + rb.stderr
    world.observer.wait_for(lambda: _stages(world) == {"gw1": 0, "gw2": 0}, 20)
    r = run_rollout(world, state, *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "below stage 2" in r.stderr and "--abort" in r.stderr
    assert "every device at stage" not in r.stdout
    other = run_rollout(world, state, "--expect", "2", "--soak", "0.2", "--waves", "100%",
                        "--to-stage", "3")
    assert other.returncode == 2 and "--abort" in other.stderr
    ab = run_rollout(world, state, "--abort", "--expect", "2")
    assert ab.returncode == 4 and "aborted" in ab.stdout, ab.stdout + ab.stderr
    fresh = run_rollout(world, state, *args)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    world.observer.wait_for(lambda: _stages(world) == {"gw1": 2, "gw2": 2}, 20)


def test_an_orchestrator_killed_mid_rollout_resumes_without_sending_any_wave_twice(
        make_world, tmp_path):
    ids = ["gw1", "gw2", "gw3", "gw4"]
    world = make_world(ids)
    _fleet(world, ids)
    state = str(tmp_path / "r.store")
    args = ("--expect", "4", "--soak", "3", "--waves", "50%,100%", "--to-stage", "2")
    proc = start_rollout(world, state, *args)
    # kill it (no clean exit, the lease stays retained) while stage 1's second wave soaks
    world.observer.wait_for(lambda: list(_stages(world).values()).count(1) == 4, 60)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    r = run_rollout(world, state, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stdout and "stage 1 wave 1" not in r.stdout
    world.observer.wait_for(lambda: _stages(world) == {d: 2 for d in ids}, 20)
    world.loop.run_until(lambda: False, 1.0)  # events still on their way
    # each device applied each stage exactly once
    assert _stage_enabled(world) == {d: [1, 2] for d in ids}


def test_on_failure_pause_then_resume(make_world, tmp_path):
    world = make_world(["gw1", "gw2", "gw3"], {"gw1": ["canary"]})
    other = Plan.default().to_dict()
    other["description"] = "another plan: gw3 refuses our commands (wrong_plan)"
    plan_file = tmp_path / "other-plan.json"
    plan_file.write_text(json.dumps(other))
    world.agent("gw1").start()
    world.agent("gw2").start()
    world.agent("gw3", config={"plan_file": str(plan_file)}).start()
    world.observer.wait_for(lambda: len(_stages(world)) == 3, 30)
    state = str(tmp_path / "r.store")
    args = ("--expect", "3", "--soak", "0.3", "--waves", "group:canary,100%", "--to-stage", "2",
            "--on-failure", "pause", "--error-threshold", "0")
    r = run_rollout(world, state, *args)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "PAUSE stage 1 wave 2" in r.stdout and "wrong_plan" in r.stdout
    world.observer.wait_for(lambda: _stages(world) == {"gw1": 1, "gw2": 1, "gw3": 0}, 20)
    again = run_rollout(world, state, *args)
    assert again.returncode == 3 and "--resume" in again.stdout  # still paused
    resumed = run_rollout(world, state, *args, "--resume")
    assert resumed.returncode == 3, resumed.stdout + resumed.stderr
    assert "stage 2 wave 1" in resumed.stdout and "PAUSE stage 2 wave 2" in resumed.stdout
    assert "stage 1 wave 1 (" not in resumed.stdout and "stage 1 wave 2 (" not in resumed.stdout
    world.observer.wait_for(lambda: _stages(world) == {"gw1": 2, "gw2": 2, "gw3": 0}, 20)
