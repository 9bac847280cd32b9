"""`fleetstage flags list|set|clear` and `clear-quarantine` as processes with the operator
profile, on agent processes (and one in-process gateway) in the field lab: the shipped
broker config, ACL, passwords and TLS."""
import json

import pytest

from tests.orchkit import LabWorld


@pytest.fixture
def world(field_lab):
    return LabWorld(field_lab(devices=["gw1", "gw2", "gw-q"]))


def _cli(world, agent, *args):
    return agent.cli(*args, "--devices", "gw1,gw2", "--timeout", "15", timeout=60)


def _flags(world, agent):
    r = _cli(world, agent, "flags", "list", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)["devices"]


def test_flags_list_set_and_clear_show_values_and_sources(world):
    a = world.agent("gw1").start()
    world.agent("gw2").start()
    world.observer.wait_for(lambda: len({r["device"] for r in world.observer.of("status")}) == 2)
    r = _cli(world, a, "publish-stage", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    world.observer.wait_for(lambda: all(
        r.get("stage") == 1 for r in world.observer.of("status")[-2:]), 20)
    table = _flags(world, a)
    assert table["gw1"]["use_ets_agent_registry"] == {"value": True, "source": "stage"}
    assert table["gw1"]["use_logger_error_context"] == {"value": False, "source": "default"}
    r = a.cli("flags", "set", "use_logger_error_context", "true", "--target", "device:gw2")
    assert r.returncode == 0 and "1/1 applied" in r.stdout, r.stdout + r.stderr
    world.loop.run_until(lambda: False, 0.5)
    table = _flags(world, a)
    assert table["gw2"]["use_logger_error_context"] == {"value": True, "source": "override"}
    assert table["gw1"]["use_logger_error_context"]["value"] is False
    r = a.cli("flags", "clear", "use_logger_error_context", "--target", "device:gw2")
    assert r.returncode == 0, r.stdout + r.stderr
    world.loop.run_until(lambda: False, 0.5)
    assert _flags(world, a)["gw2"]["use_logger_error_context"]["source"] == "default"
    plain = _cli(world, a, "flags", "list")
    assert plain.returncode == 0 and "2/2 devices reported" in plain.stdout
    assert "gw1" in plain.stdout and "stage" in plain.stdout


def test_flags_and_clear_quarantine_refuse_bad_input_in_one_line(world):
    a = world.agent("gw1").start()
    world.agent("gw2").start()
    r = _cli(world, a, "flags", "set", "no_such_flag", "true", "--target", "all")
    assert r.returncode == 2 and "unknown flag" in r.stderr and "Traceback" not in r.stderr
    r = _cli(world, a, "flags", "set", "use_ets_agent_registry", "maybe", "--target", "all")
    assert r.returncode == 2 and "true or false" in r.stderr
    world.observer.wait_for(lambda: len({r["device"] for r in world.observer.of("status")}) == 2)
    r = _cli(world, a, "clear-quarantine", "--target", "all", "--json")
    out = json.loads(r.stdout)
    assert set(out["devices"]) == {"gw1", "gw2"} and not out["missing"], r.stdout + r.stderr
    # neither is quarantined: both refuse, and the exit code says so (as publish-stage's)
    assert r.returncode == 1 and sorted(out["rejected"]) == ["gw1", "gw2"]


def test_clear_quarantine_lets_a_quarantined_gateway_advance_again(world, tmp_path):
    """A gateway whose calls fail at stage 1 rolls itself back and (quarantine_after 1)
    quarantines itself; clear-quarantine, a process, lifts it."""
    import subprocess
    import sys

    from tests.agentkit import REPO
    from tests.orchkit import InProcessGateways

    fleet = InProcessGateways(world, {"gw-q": {"bad_from_stage": 1, "control": {
        "quarantine_after": 1, "cooldown_ms": 0}}})
    base = ["--target", "device:gw-q", "--timeout", "15"]

    def cli(*args):
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", *args, *base], cwd=REPO,
                                env=world.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        out, err = fleet.run_while(proc, 60)
        return proc.returncode, out + err

    try:
        gw = fleet.gateways["gw-q"]
        code, out = cli("publish-stage", "1")
        assert code == 0, out
        while gw.agent.control.status()["quarantine"] is None:
            fleet.pump()
        assert gw.stage == 0
        code, out = cli("publish-stage", "1")
        assert code == 1 and "quarantined" in out, out
        gw.bad_from_stage = None  # the fault is fixed
        code, out = cli("clear-quarantine")
        assert code == 0 and "1/1 applied" in out, out
        assert gw.agent.control.status()["quarantine"] is None
        code, out = cli("publish-stage", "1")
        assert code == 0, out
        assert gw.stage == 1
    finally:
        fleet.close()
