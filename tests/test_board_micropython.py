"""The board build, proved on the real MicroPython unix port against mosquitto.

firmware_shim.board + firmware_shim.mqtt_micro + the whole agent core run
under `micropython`; the operator side is the CPython one. What a board does
on the wire must be what a Pi does.
"""
import os
import signal
import subprocess
import sys

import pytest

from agent import protocol as P
from firmware_shim.mqtt_micro import MicroMqttError, parse_packets
from tests.agentkit import PLAN, REPO, AgentProcess, World
from tools.bundle_cmd import bundle

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")


class MicroAgent(AgentProcess):
    repo = REPO  # where `import agent` resolves: the repository, or a bundle folder

    def start(self):
        code = ("import sys\nsys.path.insert(0, '.')\nfrom firmware_shim.board import run\n"
                "sys.exit(run(%r))\n" % self.config_path)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MICROPYTHON, "-c", code], cwd=self.repo, stdout=log,
                                     stderr=log)
        log.close()
        return self


@pytest.fixture
def world(broker, tmp_path):
    w = World(broker, tmp_path)
    yield w
    w.close()


def _micro_agent(world, **kw):
    agent = MicroAgent(world.tmp, world.broker, world.fleet, world.fleet_key, "board1",
                       groups=("boards",), **kw)
    world.agents.append(agent)
    return agent


def test_board_agent_takes_signed_stages_and_refuses_forgeries(world):
    agent = _micro_agent(world).start()
    obs, op = world.observer, world.operator
    st = obs.wait_stage(0, timeout=30)
    assert st["plan"] == PLAN.hash and st["groups"] == ["boards"], agent.log()
    for stage in (1, 2, 3, 4):
        out = op.publish_stage(stage, "group:boards", ["board1"], timeout=20)
        assert out.acks["board1"]["result"] == "applied", (out.to_dict(), agent.log())
        st = obs.wait_stage(stage)
        on = PLAN.flags_for_stage(stage)
        assert all(st["flags"][name] for name in on)
    # a command signed with another fleet's key: rejected, state untouched, still running
    forged = P.encode_command("rollback", {"stage": 0}, "device:board1", P.next_seq(0, 2e9),
                              PLAN.hash, P.new_fleet_key(), devices=["board1"])
    world.publish_raw("device:board1", forged)
    obs.wait_for(lambda: any(a.get("reason") == "bad_signature" for a in obs.of("ack")))
    assert agent.alive()
    assert obs.last_status()["stage"] == 4
    out = op.rollback(1, "all", ["board1"], timeout=20)
    assert out.acks["board1"]["result"] == "applied", out.to_dict()
    assert obs.wait_stage(1)["flags"]["use_logger_error_context"] is False


def test_board_agent_killed_is_marked_offline_and_resumes_its_stage(world):
    agent = _micro_agent(world).start()
    obs, op = world.observer, world.operator
    obs.wait_stage(0, timeout=30)
    out = op.publish_stage(1, "device:board1", ["board1"], timeout=20)
    assert out.acks["board1"]["result"] == "applied", out.to_dict()
    obs.wait_stage(1)
    agent.kill(signal.SIGKILL)
    # keepalive 2 s: the broker publishes the will within ~3 s
    obs.wait_for(lambda: obs.last_status().get("online") is False, timeout=15)
    agent.start()
    st = obs.wait_stage(1, timeout=30)
    assert st["flags"]["use_ets_agent_registry"] is True


def test_bad_config_stops_the_board_agent_with_the_field(world):
    agent = _micro_agent(world, config={"broker": "http://nope"})
    agent.start()
    assert agent.proc.wait(30) == 2
    assert "broker" in agent.log()


def test_packet_parser_refuses_lying_lengths():
    packets, rest = parse_packets(b"\x30\x05\x00\x01ahi\xd0\x00\x40")
    assert packets == [(0x30, b"\x00\x01ahi"), (0xD0, b"")] and rest == b"\x40"
    with pytest.raises(MicroMqttError):
        parse_packets(b"\x30\xff\xff\xff\xff\x01")
    with pytest.raises(MicroMqttError):
        parse_packets(b"\x30\xff\xff\xff\x7f")  # 256 MiB announced


def test_the_mpy_bundle_boots_and_takes_commands(world, tmp_path):
    """`fleetstage bundle` output (bytecode only) runs the agent on the unix port."""
    agent = _micro_agent(world)
    out = str(tmp_path / "bundle")
    written = dict(bundle(out, compile_mpy=True))
    assert "main.py" in written and "agent/control.mpy" in written
    assert "firmware_shim/mqtt_paho.mpy" not in written  # CPython-only: stays behind
    assert not [p for p in written if p.endswith(".py") and p != "main.py"]
    agent.repo = out
    agent.start()
    world.observer.wait_stage(0, timeout=30)
    result = world.operator.publish_stage(1, "device:board1", ["board1"], timeout=20)
    assert result.acks["board1"]["result"] == "applied", (result.to_dict(), agent.log())
    world.observer.wait_stage(1)
