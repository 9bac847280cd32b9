"""The operator's sequence numbers go above what the devices' guards hold.

One command from a machine whose clock ran fast leaves every guard far in the
future; an operator that numbered its commands by its own clock alone would
then be refused (stale_sequence) for minutes or days, emergency rollback
included. The operator reads each device's guard_seq from its verified
retained status and goes above it.
"""
import time

import pytest

from agent import protocol as P
from tests.agentkit import PLAN, World
from tools.operator_cmd import OperatorClient


@pytest.fixture
def world(broker, tmp_path):
    w = World(broker, tmp_path)
    yield w
    w.close()


def _guard_seq(obs):
    st = obs.last_status()
    return (st.get("extra") or {}).get("guard_seq") if st else None


def test_commands_after_a_fast_clock_operator_are_still_applied(world):
    world.agent().start()
    obs = world.observer
    obs.wait_stage(0, timeout=20)
    # A fast-clock operator (an hour ahead) moves the device to stage 1.
    future = int(time.time() * 1000) + 3600 * 1000
    cmd = P.encode_command(P.OP_MIGRATE, {"stage": 1}, "device:gw1", future, PLAN.hash,
                           world.fleet_key, devices=["gw1"], command_id=P.new_command_id(),
                           issued_at=int(time.time()), max_stage=PLAN.max_stage)
    world.publish_raw("device:gw1", cmd)
    obs.wait_stage(1)
    obs.wait_for(lambda: _guard_seq(obs) == future)

    # A fresh operator session with a correct clock: still obeyed.
    op = OperatorClient(world.broker.url, world.fleet, world.fleet_key).connect()
    try:
        out = op.publish_stage(2, "group:pilot", ["gw1"], timeout=15)
        assert out.acks["gw1"]["result"] == P.APPLIED, out.to_dict()
        assert out.seq > future
        obs.wait_stage(2)
        out = op.emergency_rollback("drill after a clock skew", "all", ["gw1"], timeout=15)
        assert out.acks["gw1"]["result"] == P.APPLIED, out.to_dict()
        assert out.exit_code() == 0
        obs.wait_stage(0)
    finally:
        op.close()


def test_next_seq_goes_above_guards_and_own_history(world):
    op = world.operator
    now_ms = int(time.time() * 1000)
    op.guard_seqs = {"a": now_ms + 10**9, "b": 5}
    first = op.next_seq(["b"])
    assert now_ms <= first < now_ms + 10**9  # only the targeted guard counts
    assert op.next_seq() == now_ms + 10**9 + 1
    assert op.next_seq(["b"]) == now_ms + 10**9 + 2  # never below what we issued
    op.guard_seqs = {"a": P.MAX_SEQ - 1}
    with pytest.raises(Exception, match="no higher sequence"):
        op.next_seq()
