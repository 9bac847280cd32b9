"""The flag store on both interpreters: commits, recovery, power cuts and I/O errors.

The thorough power-loss matrix (every offset of a compaction, every bit flip,
random operation sequences) is CPython-only, in tests/test_store_powerloss.py;
this file is the subset that must also hold on the device's interpreter.
"""
import corekit
from faultfs import EIO, PAD_FF, PAD_NONE, PAD_RANDOM, PAD_ZERO, FaultFS, PowerCut

from agent.store import (
    Store,
    StoreError,
    StoreFormatError,
    StoreFullError,
    StoreIOError,
    StoreNeedsReopenError,
    StoreValueError,
)
from agent.store_format import HEADER_SIZE
from firmware_shim.files import ENOSPC, FileSystem


def _path():
    return corekit.tmpdir("store") + "/flags.db"


_LOG = []  # what the store logged (a list, so MicroPython needs no function attributes)


def _quiet(msg):
    _LOG.append(msg)


def _open(path, fs=None, **kw):
    kw.setdefault("logger", _quiet)
    return Store(path, fs=fs if fs is not None else FileSystem(), **kw)


def _read(path):
    return FileSystem().read_bytes(path)


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_round_trip_of_every_value_type():
    path = _path()
    with corekit.closing(_open(path)) as s:
        value = {"n": [1, -5, 2**40, -(2**63), 2**64 - 1, 1.5, None, True, b"\x00\xff", "é"],
                 "d": {"x": {"y": []}}}
        seq = s.commit({"flag": True, "stage": 3, "blob": value, "name": "ünï"})
        assert seq == 1
        assert s.get("flag") is True
        assert s.get("stage") == 3
        assert s.get("blob") == value
        assert s.get("missing", "dflt") == "dflt"
        assert s.items() == [("blob", value), ("flag", True), ("name", "ünï"), ("stage", 3)]
    with corekit.closing(_open(path)) as s:
        assert s.items() == [("blob", value), ("flag", True), ("name", "ünï"), ("stage", 3)]
        assert s.get("flag") is True


def test_none_deletes_and_deleting_a_missing_key_is_a_no_op():
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"a": 1, "b": 2})
        assert s.commit({"a": None, "zz": None}) == 2
        assert s.get("a") is None
        assert s.items() == [("b", 2)]
        assert s.commit({"zz": None}) is None
    with corekit.closing(_open(path)) as s:
        assert s.items() == [("b", 2)]


def test_reopen_keeps_state_and_sequence_numbers_keep_rising():
    path = _path()
    with corekit.closing(_open(path)) as s:
        seqs = [s.commit({"k": i}) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]
    with corekit.closing(_open(path)) as s:
        assert s.get("k") == 4
        assert s.stats()["recovered"] == 0
        assert s.commit({"k": 99}) == 6
        s.compact()
    with corekit.closing(_open(path)) as s:
        assert s.commit({"k": 100}) == 7


def test_noop_commit_writes_nothing_and_types_are_not_confused():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_open(path, fs)) as s:
        s.commit({"on": True, "n": 1, "f": 1.0, "l": [1, True]})
        before = (fs.bytes_written, fs.writes, s.stats()["bytes_written"])
        assert s.commit({"on": True, "n": 1, "f": 1.0, "l": [1, True], "gone": None}) is None
        assert s.commit({}) is None
        assert (fs.bytes_written, fs.writes, s.stats()["bytes_written"]) == before
        # 1 == True == 1.0 in Python, but they are different values to store
        assert s.commit({"on": 1}) is not None
        assert s.get("on") == 1 and s.get("on") is not True
        assert s.commit({"l": [True, True]}) is not None
        assert fs.bytes_written > before[0]
        # nested maps and lists: the same strictness all the way down
        s.commit({"m": {"x": [1, {"y": True}], "z": 2.0}})
        assert s.commit({"m": {"z": 2.0, "x": [1, {"y": True}]}}) is None
        assert s.commit({"m": {"x": [1, {"y": 1}], "z": 2.0}}) is not None
        assert s.commit({"m": {"x": [1, {"y": 1}], "z": 2}}) is not None
        assert s.commit({"m": {"x": [1, {"y": 1}], "z": 2, "w": None}}) is not None
        assert s.commit({"m": {"x": [1, {"y": 1}], "z": 2, "w": None}}) is None
        assert s.get("m") == {"x": [1, {"y": 1}], "z": 2, "w": None}
        assert s.commit({"k": {1: "a"}}) is not None
        assert s.commit({"k": {True: "a"}}) is not None  # 1 and True are one dict key in Python
        assert s.commit({"t": (1, 2)}) is not None
        assert s.get("t") == [1, 2] and s.commit({"t": [1, 2]}) is None  # stored as a list


def test_one_flag_commit_is_small():
    fs = FaultFS()
    with corekit.closing(_open(_path(), fs)) as s:
        before = fs.bytes_written
        s.commit({"use_genserver_span_management": True})
        assert 0 < fs.bytes_written - before <= 64
        assert fs.op_counts.get("fsync", 0) >= 1


def test_bad_input_gets_a_named_error_and_writes_nothing():
    fs = FaultFS()
    with corekit.closing(_open(_path(), fs)) as s:
        s.commit({"a": 1})
        before = fs.bytes_written
        corekit.raises(StoreValueError, s.commit, {1: "int key"})
        corekit.raises(StoreValueError, s.commit, [("a", 2)])
        corekit.raises(StoreValueError, s.commit, {"a": 2, "b": object()})
        assert fs.bytes_written == before
        assert s.items() == [("a", 1)]


def test_compaction_bounds_the_file_and_keeps_state():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_open(path, fs, compact_min_bytes=512, compact_factor=2)) as s:
        for i in range(300):
            s.commit({"k" + str(i % 7): i, "stage": i % 4})
        st = s.stats()
        assert st["compactions"] >= 5
        assert fs.base.size(path) < 1024
        expected = s.items()
    with corekit.closing(_open(path, fs)) as s:
        assert s.items() == expected
        assert s.get("k6") == 293
        assert s.stats()["recovered"] == 0
        assert s.commit({"k0": -1}) == 301
    assert not fs.base.exists(path + ".tmp")


def test_batch_is_atomic_under_a_cut_at_every_byte():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_open(path, fs)) as s:
        s.commit({"a": 1, "b": 1})
    old = [("a", 1), ("b", 1)]
    new = [("a", 2), ("b", 2), ("c", 2)]
    seen = {}
    pads = (PAD_NONE, PAD_ZERO, PAD_FF, PAD_RANDOM)
    n = 0
    while True:
        work = corekit.tmpdir("cut") + "/flags.db"
        _write(work, _read(path))
        s = _open(work, fs)
        fs.cut_after(n)
        try:
            s.commit({"a": 2, "b": 2, "c": 2})
            done = True
        except PowerCut:
            done = False
        fs.reboot(pad=pads[n % 4])
        with corekit.closing(_open(work, fs)) as s:
            got = s.items()
            assert got == old or got == new, (n, got)
            seen[n] = got == new
            # 2 may have been in flight: once any byte of it reached the file it is never reused
            assert s.commit({"after": n}) >= (3 if n > 0 else 2)
        with corekit.closing(_open(work, fs)) as s:
            assert s.get("after") == n and s.stats()["recovered"] == 0
        if done:
            break
        n += 1
    # torn before the last byte: old state; all bytes written: the in-flight commit
    assert not any(seen[i] for i in range(n - 1))
    assert seen[n - 1] and seen[n]


def test_torn_tail_is_dropped_and_the_file_rewritten():
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"a": 1})
        s.commit({"b": 2})
    clean = _read(path)
    for tail in (b"\x43", b"\x43\x05\x00\x00\x03\x00\x00\x00", b"\xff" * 20, b"\x00" * 7):
        _write(path, clean + tail)
        del _LOG[:]
        with corekit.closing(_open(path)) as s:
            assert s.items() == [("a", 1), ("b", 2)]
            st = s.stats()
            assert st["recovered"] == 1 and st["corruption_detected"] == 0
            assert st["dropped_bytes"] == len(tail)
            assert any("torn" in line for line in _LOG)
            seq = s.commit({"c": 3})
            assert seq > 3  # 3 may have been the torn record's number
        with corekit.closing(_open(path)) as s:
            assert s.stats()["recovered"] == 0 and s.get("c") == 3
        _write(path, clean)


def test_corruption_keeps_good_prefix_and_moves_damaged_file_aside():
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"a": 1})
        end_of_first = s.stats()["file_bytes"]
        s.commit({"a": 2, "b": 2})
        s.commit({"c": 3})
    data = bytearray(_read(path))
    data[end_of_first + 14] ^= 0x10  # inside the payload of the second commit
    _write(path, bytes(data))
    del _LOG[:]
    with corekit.closing(_open(path)) as s:
        assert s.items() == [("a", 1)]
        st = s.stats()
        assert st["corruption_detected"] == 1 and st["recovered"] == 1
        assert any("CORRUPTION" in line for line in _LOG)
        assert _read(path + ".corrupt-1") == bytes(data)
        assert s.commit({"d": 4}) == 4  # 3 was seen after the damage: never reused
    with corekit.closing(_open(path)) as s:
        assert s.items() == [("a", 1), ("d", 4)]
        assert s.stats()["corruption_detected"] == 0


def test_damaged_header_is_reported_but_records_survive():
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"a": 1})
    data = bytearray(_read(path))
    data[9] ^= 0x01  # the generation field
    _write(path, bytes(data))
    with corekit.closing(_open(path)) as s:
        assert s.items() == [("a", 1)]
        assert s.stats()["corruption_detected"] == 1


def test_newer_format_version_is_refused_and_left_alone():
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"a": 1})
    from agent.store_format import encode_header
    from firmware_shim.crypto import crc32
    head = bytearray(encode_header(7))
    head[4] = 2
    head[12:16] = crc32(bytes(head[:12])).to_bytes(4, "little")
    data = bytes(head) + _read(path)[HEADER_SIZE:]
    _write(path, data)
    corekit.raises(StoreFormatError, _open, path)
    assert _read(path) == data


def test_enospc_on_write_leaves_old_state_and_the_store_usable():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_open(path, fs)) as s:
        s.commit({"a": 1})
        fs.fail("write", ENOSPC, partial=5)
        err = corekit.raises(StoreFullError, s.commit, {"a": 2, "b": 2})
        assert "ENOSPC" in str(err)
        assert s.items() == [("a", 1)]
        assert s.stats()["failed_commits"] == 1
        # space is back: the next commit works, and nothing of the failed one surfaces
        assert s.commit({"c": 3}) is not None
    with corekit.closing(_open(path, fs)) as s:
        assert s.items() == [("a", 1), ("c", 3)]
        assert s.stats()["recovered"] == 0


def test_fsync_error_acknowledges_nothing_even_after_reopen():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_open(path, fs)) as s:
        s.commit({"a": 1})
        fs.fail("fsync", EIO)
        corekit.raises(StoreIOError, s.commit, {"a": 2})
        assert s.get("a") == 1
    with corekit.closing(_open(path, fs)) as s:
        assert s.get("a") == 1  # the record reached the file, but the rollback rewrote it
        seq = s.commit({"a": 3})
        assert seq == 3  # 2 was burned by the failed commit


def test_store_that_cannot_roll_back_repairs_before_next_commit():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_open(path, fs)) as s:
        s.commit({"a": 1})
        fs.fail("write", ENOSPC)  # the commit's write fails: at most a torn record on flash
        fs.fail("fsync", ENOSPC, times=2)  # and the rollback's fsync fails
        corekit.raises(StoreFullError, s.commit, {"a": 2})
        assert not s.stats()["needs_reopen"]
        assert s.stats()["needs_repair"]
        assert s.get("a") == 1
        corekit.raises(StoreFullError, s.commit, {"b": 1})  # the repair still cannot write
        assert s.items() == [("a", 1)]
        fs.clear_faults()
        assert s.commit({"b": 1}) is not None
        assert not s.stats()["needs_repair"]
    with corekit.closing(_open(path, fs)) as s:
        assert s.items() == [("a", 1), ("b", 1)]


def _failed_fsync_not_rolled_back(path, fs):
    s = _open(path, fs)
    s.commit({"stage": 1})
    fs.fail("fsync", EIO)  # the commit's bytes were written, its fsync fails
    fs.fail("open_write", ENOSPC)  # and the rollback cannot write the new file
    exc = corekit.raises(StoreIOError, s.commit, {"stage": 2})
    assert not isinstance(exc, StoreNeedsReopenError)
    assert s.stats()["needs_reopen"] and s.needs_reopen
    return s


def test_unrolled_back_fsync_failure_refuses_commits_until_reopened():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_failed_fsync_not_rolled_back(path, fs)) as s:
        assert s.get("stage") == 1
        fs.clear_faults()
        # Memory says 1, the file may say 2: nothing may be built on either until reopen.
        exc = corekit.raises(StoreNeedsReopenError, s.commit, {"other": 1})
        assert isinstance(exc, StoreIOError) and "reopen" in str(exc)
        corekit.raises(StoreNeedsReopenError, s.compact)
        assert s.get("other") is None
        s.reopen()  # the file system works again: the rollback is made, memory stays
        assert not s.needs_reopen and s.get("stage") == 1
        assert s.commit({"other": 1}) is not None
    with corekit.closing(_open(path, fs)) as s:
        assert s.get("stage") == 1 and s.get("other") == 1


def test_reopen_that_cannot_roll_back_reads_the_file_back_as_a_reboot_would():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_failed_fsync_not_rolled_back(path, fs)) as s:
        fs.fail("open_write", ENOSPC)  # still no room for a rewrite
        s.reopen()
        shown = s.get("stage")
    with corekit.closing(_open(path, FaultFS())) as s2:
        assert s2.get("stage") == shown  # memory now is exactly what a reboot shows



def test_a_reopen_reads_the_file_back_after_a_board_released_its_reader():
    # A board frees agent.store_recovery (the open path) once its agent runs
    # (agent.boot.BOOT_ONLY_MODULES): a reopen that reads the file back imports it again.
    import sys

    from firmware_shim.board import Board

    path = _path()
    fs = FaultFS()
    with corekit.closing(_failed_fsync_not_rolled_back(path, fs)) as s:
        Board().release_modules(("agent.store_recovery",))
        assert "agent.store_recovery" not in sys.modules
        fs.fail("open_write", ENOSPC)  # no room for a rewrite: the file is read back
        s.reopen()
        assert "agent.store_recovery" in sys.modules and not s.needs_reopen
        shown = s.get("stage")
    with corekit.closing(_open(path, FaultFS())) as s2:
        assert s2.get("stage") == shown

def test_leftover_tmp_is_ignored_and_removed():
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"a": 1})
    _write(path + ".tmp", b"FSTG half a snapshot")
    with corekit.closing(_open(path)) as s:
        assert s.items() == [("a", 1)]
    assert not FileSystem().exists(path + ".tmp")


def test_missing_file_with_complete_tmp_is_adopted():
    # a FAT-like file system removes the old file before the rename
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"a": 1})
        s.compact()
    fs = FileSystem()
    fs.rename(path, path + ".tmp")
    with corekit.closing(_open(path)) as s:
        assert s.items() == [("a", 1)]
        assert s.stats()["recovered"] == 1
        assert s.commit({"b": 2}) == 2
    assert not fs.exists(path + ".tmp")


def test_power_cut_between_compaction_steps_keeps_state():
    path = _path()
    fs = FaultFS()
    with corekit.closing(_open(path, fs)) as s:
        s.commit({"a": 1, "b": 2})
    clean = _read(path)
    steps = 0
    while True:
        _write(path, clean)
        fs.remove(path + ".tmp")
        s = _open(path, fs)
        fs.cut_at_op(steps + 1)
        try:
            s.compact()
            finished = True
        except PowerCut:
            finished = False
        fs.reboot()
        with corekit.closing(_open(path, fs)) as s:
            assert s.items() == [("a", 1), ("b", 2)], steps
            assert s.commit({"c": steps}) == 2
        if finished:
            break
        steps += 1
    assert steps >= 6  # exists/remove, open, write, flush, fsync, close, rename, fsync_dir, open


def test_values_handed_out_are_copies():
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"history": [{"to": 1}], "m": {"a": [1]}})
        h = s.get("history")
        h.append({"to": 2})
        h[0]["to"] = 9
        assert s.get("history") == [{"to": 1}]
        # so committing the edited list is a real change, and it is written
        assert s.commit({"history": h}) is not None
        items = s.items()
        items[1][1]["a"].append(2)
        assert s.get("m") == {"a": [1]}
    with corekit.closing(_open(path)) as s:
        assert s.get("history") == [{"to": 9}, {"to": 2}]


def test_damaged_snapshot_is_corruption_even_with_nothing_after_it():
    path = _path()
    with corekit.closing(_open(path)) as s:
        s.commit({"a": 1, "b": 2})
        s.compact()  # the file is now one snapshot record
    data = bytearray(_read(path))
    data[HEADER_SIZE + 14] ^= 0x01
    _write(path, bytes(data))
    with corekit.closing(_open(path)) as s:
        assert s.items() == []
        assert s.stats()["corruption_detected"] == 1
        assert _read(path + ".corrupt-1") == bytes(data)
        assert s.commit({"c": 3}) > 1


def test_store_creates_its_directory():
    path = corekit.tmpdir("store") + "/state/deeper/flags.db"
    with corekit.closing(_open(path)) as s:
        assert s.commit({"a": 1}) == 1
    with corekit.closing(_open(path)) as s:
        assert s.items() == [("a", 1)]


def test_cut_with_unsynced_data_lost_keeps_the_last_acknowledged_state():
    path = _path()
    fs = FaultFS(lose_unsynced=True)
    with corekit.closing(_open(path, fs)) as s:
        s.commit({"a": 1})
        before = fs.bytes_written
        s.commit({"a": 3, "b": 3})
        record = fs.bytes_written - before  # the size of the record under test
    _write(path, _read(path)[:-record])
    clean = _read(path)
    old, new = [("a", 1)], [("a", 2), ("b", 2)]
    n = 0
    while True:
        _write(path, clean)
        fs.settle()
        s = _open(path, fs, compact_min_bytes=64, compact_factor=1)  # compacts after the commit
        fs.cut_after(n)
        try:
            s.commit({"a": 2, "b": 2})
            acked = True
        except PowerCut:
            acked = False
        fs.reboot(pad=PAD_RANDOM)
        with corekit.closing(_open(path, fs)) as s:
            # what was not fsynced is gone: the commit survives only once its own fsync
            # returned (n > record), even if the compaction after it was cut
            assert s.items() == (new if acked or n > record else old), n
        if acked:
            break
        n += 1
    assert n > record + 20  # the cuts went on into the compaction


class _FSWithExtra(FileSystem):
    def read_text(self, path):
        return self.read_bytes(path).decode()


def test_faultfs_passes_other_methods_through_behind_the_power_switch():
    path = corekit.tmpdir("ffs") + "/x.txt"
    _write(path, b"hello")
    fs = FaultFS(_FSWithExtra())
    assert fs.read_text(path) == "hello"
    assert fs.op_counts["read_text"] == 1
    fs.cut_after(0)
    corekit.raises(PowerCut, fs.read_text, path)
    fs.reboot()
    assert fs.read_text(path) == "hello"


def test_the_store_moves_through_one_explicit_state():
    from agent import store as st

    # the table: every state is in it, CLOSED is final, only a repair can become unsure
    assert sorted(st.STORE_TRANSITIONS) == sorted(st.STORE_STATES)
    assert st.STORE_TRANSITIONS[st.CLOSED] == {}
    assert [s for s in st.STORE_STATES
            if st.COMMIT_UNSURE in st.STORE_TRANSITIONS[s]] == [st.NEEDS_REPAIR]
    path = _path()
    fs = FaultFS()
    with corekit.closing(_open(path, fs)) as s:
        assert s.state == st.OPEN and s.stats()["state"] == st.OPEN
        s.commit({"a": 1})
        fs.fail("write", ENOSPC)
        fs.fail("fsync", ENOSPC, times=2)
        corekit.raises(StoreFullError, s.commit, {"a": 2})
        assert s.state == st.NEEDS_REPAIR
        fs.clear_faults()
        s.commit({"b": 1})
        assert s.state == st.OPEN
    with corekit.closing(_failed_fsync_not_rolled_back(_path(), FaultFS())) as s:
        assert s.state == st.NEEDS_REOPEN
    assert s.state == st.CLOSED
    exc = corekit.raises(StoreError, s._move, st.REWRITTEN)  # nothing leaves CLOSED
    assert "CLOSED" in str(exc)
