"""The operator's sequence numbers are its own (tools/operator_seq.py).

They are durable (a file per fleet, written before a number is used), never
reissued by tools running at once, never taken from a device's report, and
cannot be pushed by hand past MAX_AHEAD_MS beyond the operator's clock.
"""
import multiprocessing
import time

import pytest

from agent import protocol as P
from tools.operator_cmd import OperatorClient
from tools.operator_seq import SeqError, SeqStore


def _reserve_many(state_dir, fleet, n, out):
    store = SeqStore(state_dir, fleet)
    out.put([store.reserve(2) for _ in range(n)])


def test_sequence_is_durable_and_above_the_clock(tmp_path):
    clock = [1_000.0]
    store = SeqStore(str(tmp_path), "f1", clock=lambda: clock[0])
    first = store.reserve(2)
    assert first == 1_000_000 and store.last() == 1_000_001
    clock[0] = 10.0  # the clock went back: still above what was issued
    again = SeqStore(str(tmp_path), "f1", clock=lambda: clock[0])
    assert again.reserve(2) == 1_000_002
    assert (tmp_path / "f1.seq").stat().st_mode & 0o777 == 0o600


def test_tools_running_at_once_never_share_a_number(tmp_path):
    q = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(
        target=_reserve_many, args=(str(tmp_path), "f1", 50, q)) for _ in range(4)]
    for p in procs:
        p.start()
    got = [n for _ in procs for n in q.get(timeout=30)]
    for p in procs:
        p.join(10)
    numbers = got + [n + 1 for n in got]
    assert len(set(numbers)) == len(numbers) == 400


def test_raise_by_hand_is_bounded(tmp_path):
    store = SeqStore(str(tmp_path), "f1")
    now = int(time.time() * 1000)
    assert store.raise_to(now + 3_600_000) == now + 3_600_000
    assert store.reserve(2) == now + 3_600_001
    with pytest.raises(SeqError, match="ahead of this machine's clock"):
        store.raise_to(P.MAX_SEQ - 1)


def test_a_file_of_another_fleet_or_damaged_is_refused(tmp_path):
    SeqStore(str(tmp_path), "f1").reserve()
    (tmp_path / "f1.seq").write_text('{"fleet": "other", "last": 5}')
    with pytest.raises(SeqError, match="belongs to fleet"):
        SeqStore(str(tmp_path), "f1").reserve()
    (tmp_path / "f1.seq").write_text("garbage")
    with pytest.raises(SeqError, match="cannot read"):
        SeqStore(str(tmp_path), "f1").reserve()


def test_reports_never_move_the_operators_sequence():
    op = OperatorClient("mqtt://127.0.0.1:1", "f1", P.new_fleet_key())
    key = P.derive_device_key(op.fleet_key, "gw1")
    status = P.encode_status("gw1", 1, {}, extra={"guard_seq": P.MAX_SEQ - 1}, key=key,
                             fleet="f1")
    op._on_message(P.device_topic("f1", "gw1", "status"), status, True)
    assert op.guard_seqs == {"gw1": P.MAX_SEQ - 1}  # seen, for `status` to show
    seq = op.next_seq(["gw1"])
    assert abs(seq - time.time() * 1000) < 60_000
