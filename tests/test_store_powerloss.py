"""The flag store under power loss, torn writes, bit rot and I/O errors (CPython only).

Every case ends the same way: reopen, and the state must be exactly the last
acknowledged commit's, or the in-flight commit's if all of it reached the file;
never a mix, never a wrong value, and no sequence number handed out twice.
Bit flips destroy acknowledged data, so there the rule is: exactly the state of
the longest intact prefix, with the damage reported.

The real fsync is switched off underneath FaultFS (NoSyncFS): FaultFS models
durability itself (lose_unsynced), and thousands of real fsyncs would only
make the suite slow.
"""
import errno
import os
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "core"))

import corekit  # noqa: E402
from faultfs import EIO, PADS, FaultFS, PowerCut  # noqa: E402

from agent.store import (  # noqa: E402
    Store,
    StoreError,
    StoreFullError,
    StoreIOError,
)
from agent.store_format import HEADER_SIZE, RECORD_HEADER_SIZE  # noqa: E402
from agent.store_recovery import parse_log  # noqa: E402
from firmware_shim.files import ENOSPC, FileSystem  # noqa: E402


class NoSyncFS(FileSystem):
    def fsync(self, f):
        f.flush()

    def fsync_dir(self, path):
        pass


class FatLikeFS(NoSyncFS):
    """rename() cannot replace an existing file (MicroPython's VfsFat behaves so)."""

    def rename(self, src, dst):
        if self.exists(dst):
            raise OSError(errno.EEXIST, "file exists")
        super().rename(src, dst)


LOG = []


def _open(path, fs, **kw):
    kw.setdefault("logger", LOG.append)
    return Store(str(path), fs=fs, **kw)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _state(store):
    return dict(store.items())


def _record_spans(data):
    """(start, end) of every record in a clean file."""
    out = []
    pos = HEADER_SIZE
    while pos < len(data):
        end = pos + RECORD_HEADER_SIZE + (int.from_bytes(data[pos:pos + 4], "little") >> 8)
        out.append((pos, end))
        pos = end
    return out


def _file_seqs(data):
    """Sequence numbers of the records in a clean file, in order."""
    return [int.from_bytes(data[a + 4:a + 8], "little") for a, _ in _record_spans(data)]


def _flip(data, byte, bit):
    out = bytearray(data)
    out[byte] ^= 1 << bit
    return bytes(out)


def _assert_clean_on_disk(path, expected_state):
    """The file parses clean, holds the expected state, and its numbers only rise."""
    data = _read(path)
    parsed = parse_log(data)
    assert parsed.tail == "clean" and parsed.header_ok
    assert parsed.state == expected_state
    seqs = _file_seqs(data)
    assert all(b == a + 1 for a, b in zip(seqs[1:], seqs[2:]))
    assert not os.path.exists(str(path) + ".tmp")


HISTORY = [
    {"stage": 0, "use_ets_agent_registry": False},
    {"use_ets_agent_registry": True, "enable_migration_monitoring": True, "stage": 1},
    {"history": [{"op": "migrate", "to": 1, "at": 1700000000.5}], "cmd_seq": 17},
    {"use_logger_error_context": True, "stage": 2, "cmd_seq": 18, "gone": None},
]
IN_FLIGHT = {"use_genserver_telemetry": True, "use_genserver_span_management": True,
             "use_ets_sampled_events": True, "stage": 3, "cmd_seq": 19,
             "use_ets_agent_registry": None,
             "history": [{"op": "migrate", "to": 1}, {"op": "migrate", "to": 3}]}


def _build(path, fs, history=HISTORY, **kw):
    with corekit.closing(_open(path, fs, **kw)) as s:
        states = [_state(s)]
        seqs = []
        for changes in history:
            seqs.append(s.commit(changes))
            states.append(_state(s))
    return states, seqs


def _apply(state, changes):
    out = dict(state)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


# ------------------------------------------------------------ cuts at every byte


def _record_size(tmp_path, clean, changes):
    """Bytes one commit of `changes` writes on top of `clean` (no compaction)."""
    probe = tmp_path / "probe.db"
    _write(probe, clean)
    fs = FaultFS(NoSyncFS())
    with corekit.closing(_open(probe, fs)) as s:
        before = fs.bytes_written
        s.commit(changes)
    return fs.bytes_written - before


@pytest.mark.parametrize("lose_unsynced", [False, True])
@pytest.mark.parametrize("pad", PADS)
def test_cut_at_every_byte_of_a_commit(tmp_path, pad, lose_unsynced):
    base = tmp_path / "base.db"
    fs = FaultFS(NoSyncFS(), seed=7, lose_unsynced=lose_unsynced)
    states, seqs = _build(base, fs)
    clean = _read(base)
    record = _record_size(tmp_path, clean, IN_FLIGHT)
    old = states[-1]
    new = _apply(old, IN_FLIGHT)
    path = tmp_path / "flags.db"
    for n in range(record + 2):
        _write(path, clean)
        fs.settle()
        s = _open(path, fs)
        fs.cut_after(n)
        try:
            s.commit(IN_FLIGHT)
            acked = True
        except PowerCut:
            acked = False
        assert acked == (n > record)
        in_flight_seq = s.seq
        fs.reboot(pad=pad)
        landed = len(_read(path)) > len(clean)
        with corekit.closing(_open(path, fs)) as s:
            got = _state(s)
            if lose_unsynced:
                assert got == (new if acked else old), n  # nothing unsynced survives
            else:
                assert got == (new if n >= record else old), n  # whole record: the in-flight state
            next_seq = s.commit({"probe": n})
            assert next_seq > seqs[-1]
            if landed:
                assert next_seq > in_flight_seq, (n, next_seq, in_flight_seq)
        _assert_clean_on_disk(path, _apply(got, {"probe": n}))
    assert record > 100


@pytest.mark.parametrize("lose_unsynced", [False, True])
@pytest.mark.parametrize("pad", PADS)
def test_cut_at_every_byte_of_a_compaction(tmp_path, pad, lose_unsynced):
    base = tmp_path / "base.db"
    fs = FaultFS(NoSyncFS(), seed=11, lose_unsynced=lose_unsynced)
    states, seqs = _build(base, fs)
    clean = _read(base)
    path = tmp_path / "flags.db"
    n = 0
    while True:
        _write(path, clean)
        fs.settle()
        s = _open(path, fs)
        before = fs.bytes_written
        fs.cut_after(n)
        try:
            s.compact()
            finished = True
        except PowerCut:
            finished = False
        written = fs.bytes_written - before
        fs.reboot(pad=pad)
        with corekit.closing(_open(path, fs)) as s:
            assert _state(s) == states[-1], n
            assert s.stats()["corruption_detected"] == 0
            assert s.commit({"probe": n}) == seqs[-1] + 1  # compaction burns no number
        _assert_clean_on_disk(path, _apply(states[-1], {"probe": n}))
        if finished:
            break
        n += 1
    assert n >= written > 100


@pytest.mark.parametrize("pad", PADS)
def test_cut_at_every_byte_of_a_commit_that_triggers_compaction(tmp_path, pad):
    fs = FaultFS(NoSyncFS(), seed=5)
    base = tmp_path / "base.db"
    with corekit.closing(_open(base, fs, compact_min_bytes=400, compact_factor=1)) as s:
        i = 0
        while s.stats()["file_bytes"] < 330:
            s.commit({"k": i})
            i += 1
        old, last_seq = _state(s), s.seq
    clean = _read(base)
    change = {"k": -1, "flag": True}
    record = _record_size(tmp_path, clean, change)
    path = tmp_path / "flags.db"
    for n in range(record + 200):
        _write(path, clean)
        s = _open(path, fs, compact_min_bytes=400, compact_factor=1)
        fs.cut_after(n)
        try:
            s.commit(change)
            acked = True
        except PowerCut:
            acked = False
        fs.reboot(pad=pad)
        with corekit.closing(_open(path, fs)) as s:
            # once the record is whole the commit survives, even if its compaction was cut
            assert _state(s) == (_apply(old, change) if n >= record else old), n
            assert s.commit({"probe": n}) > last_seq + (1 if n > 0 else 0)
        if acked:
            break
    assert acked and n > record


# ------------------------------------------------------------ crashes between steps


@pytest.mark.parametrize("base_fs", ["posix", "fat"])
@pytest.mark.parametrize("lose_unsynced", [False, True])
def test_crash_between_each_step_of_a_compaction(tmp_path, base_fs, lose_unsynced):
    base = FatLikeFS() if base_fs == "fat" else NoSyncFS()
    fs = FaultFS(base, lose_unsynced=lose_unsynced)
    states, seqs = _build(tmp_path / "base.db", fs)
    clean = _read(tmp_path / "base.db")
    path = tmp_path / "flags.db"
    step_names = []
    k = 0
    while True:
        for leftover in (path, str(path) + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)
        _write(path, clean)
        fs.settle()
        s = _open(path, fs)
        del fs.trace[:]
        fs.cut_at_op(k + 1)
        try:
            s.compact()
            finished = True
        except PowerCut:
            finished = False
            step_names.append(fs.trace[-1][0] if fs.trace else "start")
        fs.reboot()
        with corekit.closing(_open(path, fs)) as s:
            assert _state(s) == states[-1], (k, step_names[-1:])
            assert s.commit({"probe": k}) == seqs[-1] + 1
        _assert_clean_on_disk(path, _apply(states[-1], {"probe": k}))
        if finished:
            break
        k += 1
    for step in ("open_write", "write", "flush", "fsync", "close", "rename", "fsync_dir"):
        assert step in step_names, step
    if base_fs == "fat":
        assert "remove" in step_names


@pytest.mark.parametrize("base_fs", ["posix", "fat"])
def test_crash_between_each_step_of_recovery(tmp_path, base_fs):
    """Recovery itself rewrites the file; a cut anywhere in it must change nothing."""
    base = FatLikeFS() if base_fs == "fat" else NoSyncFS()
    fs = FaultFS(base)
    states, seqs = _build(tmp_path / "base.db", fs)
    clean = _read(tmp_path / "base.db")
    spans = _record_spans(clean)
    flip_at = spans[-2][0] + RECORD_HEADER_SIZE + 1  # inside the next-to-last record
    damaged = {
        # (file, state after recovery, lowest next sequence number)
        "torn": (clean + b"\x43\x20\x00\x00\x09", states[-1], seqs[-1] + 2),
        "corrupt": (_flip(clean, flip_at, 2), states[-3], seqs[-1] + 1),
    }
    for kind, (data, want, lowest_seq) in damaged.items():
        path = tmp_path / (kind + ".db")
        k = 0
        while True:
            for name in os.listdir(tmp_path):
                if name.startswith(kind + ".db"):
                    os.remove(tmp_path / name)
            _write(path, data)
            fs.cut_at_op(k + 1)
            try:
                s = _open(path, fs)
                finished = True
            except PowerCut:
                finished = False
            fs.reboot()
            with corekit.closing(_open(path, fs)) as s:
                assert _state(s) == want, (kind, k)
                assert s.commit({"probe": k}) >= lowest_seq
            _assert_clean_on_disk(path, _apply(want, {"probe": k}))
            aside = [n for n in os.listdir(tmp_path) if n.startswith(kind + ".db.corrupt-")]
            if kind == "corrupt":
                assert aside == [kind + ".db.corrupt-1"], (k, aside)
                assert _read(tmp_path / aside[0]) == data
            else:
                assert aside == []
            if finished:
                break
            k += 1
        assert k >= 8


# ------------------------------------------------------------ bit rot


def _reopen_flipped(tmp_path, clean, byte, bit):
    path = tmp_path / "flip.db"
    for name in os.listdir(tmp_path):
        if name.startswith("flip.db"):
            os.remove(tmp_path / name)
    data = _flip(clean, byte, bit)
    _write(path, data)
    s = _open(path, NoSyncFS())
    return path, s, data


def _check_flipped(tmp_path, clean, byte, want, corrupt, seq_floor):
    for bit in range(8):
        path, s, data = _reopen_flipped(tmp_path, clean, byte, bit)
        assert _state(s) == want, (byte, bit)
        st_ = s.stats()
        assert st_["recovered"] == 1
        assert st_["corruption_detected"] == (1 if corrupt else 0), (byte, bit)
        assert s.commit({"probe": 1}) > seq_floor
        s.close()
        if corrupt:
            assert _read(str(path) + ".corrupt-1") == data
        else:
            assert not os.path.exists(str(path) + ".corrupt-1")
        _assert_clean_on_disk(path, _apply(want, {"probe": 1}))


def test_every_bit_of_the_last_record(tmp_path):
    states, seqs = _build(tmp_path / "base.db", NoSyncFS())
    clean = _read(tmp_path / "base.db")
    start, end = _record_spans(clean)[-1]
    for byte in range(start, end):
        # the last record is indistinguishable from a torn write: dropped, not "corrupt"
        _check_flipped(tmp_path, clean, byte, states[-2], False, seqs[-1])


def test_bits_in_a_middle_record(tmp_path):
    states, seqs = _build(tmp_path / "base.db", NoSyncFS())
    clean = _read(tmp_path / "base.db")
    spans = _record_spans(clean)
    start, end = spans[2]  # the second commit
    for byte in range(start, end):
        _check_flipped(tmp_path, clean, byte, states[1], True, seqs[-1])


def test_every_bit_of_the_file_header(tmp_path):
    states, seqs = _build(tmp_path / "base.db", NoSyncFS())
    clean = _read(tmp_path / "base.db")
    for byte in range(HEADER_SIZE):
        # the records are intact: all of them are kept, and the damage is reported
        _check_flipped(tmp_path, clean, byte, states[-1], True, seqs[-1])


def test_length_fields_of_every_record(tmp_path):
    states, seqs = _build(tmp_path / "base.db", NoSyncFS())
    clean = _read(tmp_path / "base.db")
    spans = _record_spans(clean)
    for i, (start, _end) in enumerate(spans):
        last = i == len(spans) - 1
        want = states[i - 1] if i > 0 else {}
        for byte in range(start + 1, start + 4):
            _check_flipped(tmp_path, clean, byte, want, not last, seqs[-1])


def test_second_corruption_gets_its_own_aside_file(tmp_path):
    path = tmp_path / "flags.db"
    fs = NoSyncFS()
    for round_ in (1, 2):
        with corekit.closing(_open(path, fs)) as s:
            for i in range(3):
                s.commit({"k": i, "round": round_})
        data = _read(path)
        spans = _record_spans(data)
        bad = _flip(data, spans[-2][0] + RECORD_HEADER_SIZE, 0)
        _write(path, bad)
        with corekit.closing(_open(path, fs)) as s:
            assert s.stats()["corruption_detected"] == 1
        assert _read(str(path) + ".corrupt-" + str(round_)) == bad
    assert sorted(os.listdir(tmp_path)) == ["flags.db", "flags.db.corrupt-1", "flags.db.corrupt-2"]


# ------------------------------------------------------------ I/O errors


COMPACTION_OPS = ["open_write", "write", "flush", "fsync", "close", "rename", "fsync_dir",
                  "open_append"]


@pytest.mark.parametrize("code", [ENOSPC, EIO])
@pytest.mark.parametrize("op", COMPACTION_OPS)
def test_error_at_each_step_acknowledges_nothing(tmp_path, code, op):
    states, seqs = _build(tmp_path / "base.db", NoSyncFS())
    clean = _read(tmp_path / "base.db")
    old, new = states[-1], _apply(states[-1], IN_FLIGHT)
    error = StoreFullError if code == ENOSPC else StoreIOError
    for action in ("commit", "compact"):
        for nth in (1, 2, 3):
            for times in (1, 2, 5):
                path = tmp_path / "flags.db"
                _write(path, clean)
                fs = FaultFS(NoSyncFS())
                with corekit.closing(_open(path, fs)) as s:
                    fs.fail(op, code, nth=nth, times=times, partial=7)
                    try:
                        if action == "commit":
                            s.commit(IN_FLIGHT)
                        else:
                            s.compact()
                        raised = None
                    except StoreError as exc:
                        raised = exc
                    if raised is not None:
                        assert isinstance(raised, error), (action, raised)
                        assert _state(s) == old
                    want = new if action == "commit" and raised is None else old
                    assert _state(s) == want
                    # still usable once the fault has passed
                    fs.clear_faults()
                    if s.needs_reopen:  # an fsync failed and its rollback too
                        s.reopen()
                    probe_seq = s.commit({"probe": nth})
                    assert probe_seq > seqs[-1] + (1 if action == "commit" else 0)
                with corekit.closing(_open(path, fs)) as s:
                    assert _state(s) == _apply(want, {"probe": nth}), (action, nth, times)
                    assert s.stats()["recovered"] == 0


def test_failed_compaction_after_a_durable_commit_still_acknowledges_it(tmp_path):
    path = tmp_path / "flags.db"
    fs = FaultFS(NoSyncFS())
    lines = []
    with corekit.closing(_open(path, fs, compact_min_bytes=200, compact_factor=1,
                               logger=lines.append)) as s:
        fs.fail("open_write", ENOSPC, times=1000)
        for i in range(20):
            assert s.commit({"k": i}) == i + 1  # every commit is acknowledged
        assert s.stats()["compaction_failures"] > 0
        assert any("compaction failed" in line for line in lines)
        fs.clear_faults()
        s.commit({"k": 99})
        assert s.stats()["compactions"] >= 2
    with corekit.closing(_open(path, fs)) as s:
        assert _state(s) == {"k": 99}


# ------------------------------------------------------------ random operations, a fault at every N

KEYS = ["stage", "cmd_seq", "use_ets_agent_registry", "history", "restarts"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.text(max_size=6),
    st.binary(max_size=6), st.floats(allow_nan=False),
    st.lists(st.integers(-3, 300), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4)),
        st.tuples(st.just("compact")),
        st.tuples(st.just("reopen")),
    ),
    min_size=3, max_size=14,
)


class Run:
    """Replays `ops` against the store and a model, with at most one fault armed."""

    def __init__(self, path, fs):
        self.path, self.fs = path, fs
        self.model = {}
        self.max_seq = 0  # every number acknowledged, or that may have reached the file
        self.store = self._open()

    def _open(self):
        for _attempt in range(3):
            try:
                return _open(self.path, self.fs, compact_min_bytes=160, compact_factor=2)
            except PowerCut:
                self.fs.reboot()
        raise AssertionError("could not reopen")

    def commit(self, changes):
        seq = self.store.commit(changes)
        if seq is None:
            assert _apply(self.model, changes) == self.model
            return
        assert seq > self.max_seq, "sequence number reused"
        self.max_seq = seq
        self.model = _apply(self.model, changes)

    def step(self, op, pad):
        size_before = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        try:
            if op[0] == "commit":
                self.commit(op[1])
            elif op[0] == "compact":
                self.store.compact()
            else:
                self.store.close()
                self.store = self._open()
                assert _state(self.store) == self.model
        except StoreError:
            assert _state(self.store) == self.model  # a failure changes nothing
        except PowerCut:
            in_flight = self.store.seq
            self.fs.reboot(pad=pad)
            grew = os.path.exists(self.path) and os.path.getsize(self.path) > size_before
            self.store = self._open()
            got = _state(self.store)
            if op[0] == "commit" and got != self.model:
                assert got == _apply(self.model, op[1]), "a mix of two states"
                self.model = got  # the in-flight commit was wholly written
                grew = True
            assert got == self.model
            if grew and op[0] == "commit":
                self.max_seq = max(self.max_seq, in_flight)

    def finish(self):
        self.store.close()
        self.store = self._open()
        assert _state(self.store) == self.model
        self.store.commit({"final": True})
        assert self.store.seq > self.max_seq
        self.store.close()
        _assert_clean_on_disk(self.path, _apply(self.model, {"final": True}))


def _replay(tmp_path, ops, arm=None, pad="none", lose_unsynced=False, tag="run", fat=False):
    d = tmp_path / tag
    d.mkdir()
    base = FatLikeFS() if fat else NoSyncFS()
    fs = FaultFS(base, seed=len(ops) + 1, lose_unsynced=lose_unsynced)
    if arm is not None:
        arm(fs)
    run = Run(d / "flags.db", fs)
    for op in ops:
        run.step(op, pad)
    counts = dict(fs.op_counts)  # the calls a fault could hit (finish() runs fault-free)
    fs.clear_faults()
    run.finish()
    return fs, counts


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS, kind=st.sampled_from(["cut", "enospc", "eio", "fsync"]),
       times=st.integers(1, 2), pad=st.sampled_from(PADS), lose_unsynced=st.booleans(),
       keep_seed=st.integers(0, 1000), fat=st.booleans())
def test_random_operations_with_a_fault_at_every_write(tmp_path_factory, ops, kind, times, pad,
                                                       lose_unsynced, keep_seed, fat):
    tmp_path = tmp_path_factory.mktemp("ops")
    _fs, counts = _replay(tmp_path, ops, tag="clean", fat=fat)
    total = counts.get("fsync" if kind == "fsync" else "write", 0)
    assert total >= 1

    for n in range(1, total + 1):
        keep = (keep_seed * 7919 + n * 31) % 64

        def arm(fs, n=n, keep=keep):
            if kind == "cut":
                fs.cut_before("write", nth=n, keep=keep)
            elif kind == "fsync":
                fs.fail("fsync", EIO, nth=n, times=times)
            else:
                fs.fail("write", ENOSPC if kind == "enospc" else EIO, nth=n, times=times,
                        partial=keep)

        fs, _counts = _replay(tmp_path, ops, arm, pad, lose_unsynced, tag="n" + str(n), fat=fat)
        if kind == "cut":
            assert fs.cuts == 1


# ------------------------------------------------------------ records out of order


def test_swapped_records_are_corruption_not_a_mix(tmp_path):
    states, seqs = _build(tmp_path / "base.db", NoSyncFS())
    clean = _read(tmp_path / "base.db")
    (a0, a1), (b0, b1) = _record_spans(clean)[-2:]
    swapped = clean[:a0] + clean[b0:b1] + clean[a0:a1]
    path = tmp_path / "flags.db"
    _write(path, swapped)
    with corekit.closing(_open(path, NoSyncFS())) as s:
        assert _state(s) == states[-3]  # each record is intact, but not in its place
        assert s.stats()["corruption_detected"] == 1
        assert s.commit({"probe": 1}) > seqs[-1]


def test_duplicated_last_record_is_dropped(tmp_path):
    states, seqs = _build(tmp_path / "base.db", NoSyncFS())
    clean = _read(tmp_path / "base.db")
    start, end = _record_spans(clean)[-1]
    path = tmp_path / "flags.db"
    _write(path, clean + clean[start:end])
    with corekit.closing(_open(path, NoSyncFS())) as s:
        assert _state(s) == states[-1]
        assert s.stats()["recovered"] == 1 and s.stats()["corruption_detected"] == 0
        assert s.commit({"probe": 1}) > seqs[-1]


def test_failed_fat_rename_then_power_cut_during_repair_loses_nothing(tmp_path):
    """FAT path: old file removed, rename fails; the .tmp is then the only copy."""
    old = {"a": 1, "b": 2}
    n = 0
    while True:
        path = tmp_path / ("flags%d.db" % n)
        fs = FaultFS(FatLikeFS())
        s = _open(path, fs)
        s.commit(old)
        fs.fail("rename", EIO, nth=2)  # the first rename meets EEXIST, the second fails
        with pytest.raises(StoreIOError):
            s.compact()
        assert not os.path.exists(path) and os.path.exists(str(path) + ".tmp")
        assert s.stats()["needs_repair"]
        fs.cut_after(n)
        try:
            s.commit({"c": 3})  # repairs first
            acked = True
        except PowerCut:
            acked = False
        fs.reboot(pad="ff")
        with corekit.closing(_open(path, fs)) as s:
            new = _apply(old, {"c": 3})
            # unacknowledged: old, or new if the whole record landed before the cut
            assert _state(s) == new if acked else _state(s) in (old, new), n
        if acked:
            break
        n += 1
    assert n > 20
