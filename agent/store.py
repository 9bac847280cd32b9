"""The flag store's I/O driver: a flash-backed key-value file that survives power loss.

It owns the on-flash format of the agent's durable state (stage, flags, command
sequence number, restart counts, migration history) and the rules that keep it
intact across power cuts. It never touches `open`/`os` itself (files come from
the `fs` object handed in: firmware_shim.files.FileSystem on a Pi or a
board, a fake in tests), never
acknowledges a commit before it is durable, and never leaves a state on flash
that mixes two commits.

This module is the I/O driver; the bytes (header, records) are
agent.store_format's, so a second backend can reuse them (file format: see there),
and reading a file back at open (the replay, the recovery) is agent.store_recovery's,
which a board frees once its agent runs.

A commit is ONE record: one write, then one fsync (on littlefs fsync is flush,
the commit point). Records are small (a one-flag commit is ~40 bytes), so
several commits share one flash block; on littlefs each flush rewrites the
file's last block, which is why the log is kept short (compaction threshold of
a few KB) and one commit costs exactly one flush.

Compaction writes `<path>.tmp` (header + snapshot), flushes, fsyncs, closes,
renames it over `<path>` and fsyncs the directory. Until the rename the old file
is authoritative; a leftover `.tmp` is removed on open, or adopted when `<path>`
is missing (a file system whose rename cannot replace had to remove it first;
the .tmp was already durable then, and holds only acknowledged state).

Recovery keeps the longest valid prefix. A bad tail with nothing valid after it
is a torn (unacknowledged) write: it is dropped and the file rewritten. Valid
records after a bad one mean corruption: the good prefix is kept, the damaged
file is moved aside to `<path>.corrupt-<n>`, `stats()["corruption_detected"]`
counts it and a log line says so.

Sequence numbers: commit records in one file are consecutive, and a sequence
number is never used twice: a failed commit burns its number, and recovery
burns the number of the record that may have been in flight (the last valid
one + 1) and everything seen after corruption. The snapshot carries the
highest number burned so far, so reopening never goes back.

One Store object per file, used from one thread: it is the only writer.

Errors: ENOSPC -> StoreFullError, other OSError -> StoreIOError (both
StoreError). A failed commit changes nothing in memory; the store then rewrites
the file from memory (dropping whatever part of the failed record reached
flash). If even that fails there are two cases:
- the write itself failed: at most a torn record is on flash, which recovery
  drops, so memory and a reboot agree. The store marks itself NEEDS_REPAIR:
  reads still work, and the next commit (or compact()) first repairs, so
  commits work again once space is back.
- the write returned and the fsync failed: the whole record may be on flash,
  and a reboot may show the commit that was reported failed. Memory can no
  longer claim to be what is on flash, so the store marks itself NEEDS_REOPEN
  (that commit raises StoreFullError/StoreIOError as usual, and `needs_reopen`
  is then true): every later commit and compact() raises
  StoreNeedsReopenError until reopen() has rolled back or read the file
  back (the caller must then rebuild what it derived from the store;
  agent.control does that itself).
"""
from agent.store_format import (  # the store's errors are re-exported: callers catch them here
    COMMIT,
    MAX_SEQ,
    SNAPSHOT,
    StoreClosedError,
    StoreError,
    StoreFormatError,
    StoreFullError,
    StoreIOError,
    StoreNeedsReopenError,
    StoreState,
    StoreValueError,
    apply_changes,
    encode_header,
    encode_record,
    store_error,
)
from firmware_shim import codec
from firmware_shim.files import EEXIST, dirname, oserror_errno

__all__ = ["Store", "StoreError", "StoreFullError", "StoreIOError", "StoreValueError",
           "StoreFormatError", "StoreClosedError", "StoreNeedsReopenError"]


def _quiet(msg):
    pass


# ---------------------------------------------------------------- its states

# One state at a time; _MOVES (STORE_TRANSITIONS) is every move the store makes.
OPEN = "OPEN"                  # memory is what flash holds; commits append
NEEDS_REPAIR = "NEEDS_REPAIR"  # flash may hold a torn record (or no snapshot yet): reads
#                                work, the next commit, compact() or close() rewrites first
NEEDS_REOPEN = "NEEDS_REOPEN"  # a failed commit may be on flash: no commit until reopen()
CLOSED = "CLOSED"
STORE_STATES = (OPEN, NEEDS_REPAIR, NEEDS_REOPEN, CLOSED)

DAMAGED = "Damaged"              # flash may differ from memory in a way a rewrite fixes
COMMIT_UNSURE = "CommitUnsure"   # a commit's fsync failed after its bytes landed, and so
#                                  did the rollback: a reboot may or may not show it
REWRITTEN = "Rewritten"          # a snapshot of memory is durable on flash
READ_BACK = "ReadBack"           # memory dropped and read back from flash (reopen)
CLOSE = "Close"

# Every move, one a line: "STATE Event NEXT" (one string: a board holds one object for
# it, its text in flash); STORE_TRANSITIONS, the same as a dict, is made when asked for.
_MOVES = """
OPEN Damaged NEEDS_REPAIR
OPEN Rewritten OPEN
OPEN ReadBack OPEN
OPEN Close CLOSED
NEEDS_REPAIR Damaged NEEDS_REPAIR
NEEDS_REPAIR CommitUnsure NEEDS_REOPEN
NEEDS_REPAIR Rewritten OPEN
NEEDS_REPAIR ReadBack OPEN
NEEDS_REPAIR Close CLOSED
NEEDS_REOPEN Damaged NEEDS_REOPEN
NEEDS_REOPEN Rewritten OPEN
NEEDS_REOPEN ReadBack OPEN
NEEDS_REOPEN Close CLOSED
"""
STORE_TRANSITIONS: dict  # {state: {event: next state}}, made from _MOVES when asked for


def __getattr__(name):
    if name == "STORE_TRANSITIONS":
        table = {state: {} for state in STORE_STATES}
        for line in _MOVES.split("\n"):
            if line:
                state, event, nxt = line.split(" ")
                table[state][event] = nxt
        return table
    raise AttributeError("module 'agent.store' has no attribute '%s'" % name)


# ---------------------------------------------------------------- the store


class Store(StoreState):
    """A key-value map on flash with atomic, durable batch commits.

    compact_min_bytes / compact_factor: the log is compacted once the file is at
    least compact_min_bytes long AND at least compact_factor times the size of
    its last snapshot. With the default factor of 8 a commit pays on average
    1/7 of its own size for compaction, which keeps write amplification
    (flash bytes / logical payload bytes) under 2 for flag-sized records.
    """

    def __init__(self, path, fs, compact_min_bytes=8192, compact_factor=8, logger=None):
        self.path = path
        self.fs = fs  # handed in: firmware_shim.files.FileSystem, a flash backend, a fake
        self.compact_min_bytes = compact_min_bytes
        self.compact_factor = compact_factor
        self._log = logger or _quiet  # the caller hands in a log to hear recovery lines
        self._tmp = path + ".tmp"
        self._dir = dirname(path)
        self._state = {}
        self._seq = 0  # the highest sequence number used or burned
        self._generation = 0
        self._f = None
        self._size = 0  # bytes in the file we append to
        self._snapshot_size = 0
        self.state = OPEN  # one of STORE_STATES; moves only through _move()
        self._aside_pending = False  # the repair must also move a corrupt file aside
        self._stats = {
            "bytes_written": 0, "records": 0, "commits": 0, "noop_commits": 0,
            "compactions": 0, "recovered": 0, "dropped_bytes": 0,
            "corruption_detected": 0, "failed_commits": 0, "compaction_failures": 0,
        }
        self._open()

    # ------------------------------------------------------------ reading

    def stats(self):
        """Counters since this object opened the file.

        bytes_written (records, snapshots and headers handed to the file
        system), records (in the current file), commits, noop_commits,
        failed_commits, compactions (also counts creating the file and the
        rewrites of recovery), recovered (1 when opening had to repair the
        file: a torn tail dropped, corruption, a .tmp adopted), dropped_bytes,
        corruption_detected, compaction_failures, seq (the highest number used
        or burned), generation, file_bytes, keys, needs_repair.
        """
        out = dict(self._stats)
        out["seq"] = self._seq
        out["generation"] = self._generation
        out["file_bytes"] = self._size
        out["keys"] = len(self._state)
        out["needs_repair"] = self.state in (NEEDS_REPAIR, NEEDS_REOPEN)
        out["needs_reopen"] = self.state == NEEDS_REOPEN
        out["state"] = self.state
        return out

    @property
    def needs_reopen(self):
        return self.state == NEEDS_REOPEN

    def reopen(self):
        """End NEEDS_REOPEN: first try once more to rewrite the file from memory (then
        the failed commit is gone for good and memory stays); if that fails too,
        drop memory and read the file back as a reboot would."""
        if self.state == CLOSED:
            raise StoreClosedError(f"store {self.path} is closed")
        if self.state == NEEDS_REOPEN:
            try:
                self._rewrite()  # REWRITTEN: memory wins, the failed commit is gone
                return
            except StoreError as exc:
                self._log(f"store: reopen reads {self.path} back: {exc}")
        self._close_handle()
        self._state = {}
        self._aside_pending = False
        self._move(READ_BACK)
        self._open()

    # ------------------------------------------------------------ writing

    def commit(self, changes):
        """Apply `changes` (a dict; None deletes) atomically and durably.

        Returns the record's sequence number, or None when nothing really
        changed (then nothing is written). Raises StoreValueError for bad
        input, StoreFullError/StoreIOError when the write could not be made
        durable; in every error case the store's state is as before.
        """
        self._check_open()
        real = self._real_changes(changes)
        if not real:
            self._stats["noop_commits"] += 1
            return None
        try:
            payload = codec.packb(real)
        except codec.CodecError as exc:
            raise StoreValueError(f"cannot encode: {exc}") from None
        if self._seq >= MAX_SEQ:
            raise StoreError("sequence numbers exhausted")
        if self.state == NEEDS_REPAIR:
            self._rewrite()
        seq = self._seq + 1
        record = encode_record(COMMIT, seq, payload)
        self._seq = seq  # burned now, whatever happens next
        written = False
        try:
            self.fs.write(self._f, record)
            written = True
            self._stats["bytes_written"] += len(record)
            self.fs.fsync(self._f)
        except OSError as exc:
            self._stats["failed_commits"] += 1
            self._size += len(record)  # unknown how much landed; the rewrite fixes it
            if not self._recover_from_failed_append(exc) and written:
                self._move(COMMIT_UNSURE)
                self._log(f"store: commit {seq} may be on flash after a failed fsync and "
                          "could not be rolled back; no commits until reopen()")
                raise store_error(exc, f"commit {seq} not durable and not rolled back (a "
                                        "reboot may show it; reopen the store)") from None
            raise store_error(exc, f"commit {seq} not durable") from None
        self._size += len(record)
        # The decoded copy is what a reopen sees (tuples become lists, and the
        # caller's objects are not shared); these bytes were just encoded here.
        apply_changes(self._state, codec.unpackb_trusted(payload))
        self._stats["records"] += 1
        self._stats["commits"] += 1
        if self._due_for_compaction():
            try:
                self._rewrite()
            except StoreError as exc:  # the commit itself is durable: report, retry later
                self._stats["compaction_failures"] += 1
                self._log(f"store: compaction failed (will retry): {exc}")
        return seq

    def compact(self):
        """Rewrite the file as one snapshot (also repairs a store that needs it)."""
        self._check_open()
        self._rewrite()

    def close(self):
        """Release the file; a store that still needs repair tries it one last time."""
        if self.state == CLOSED:
            return
        if self.state in (NEEDS_REPAIR, NEEDS_REOPEN):
            try:
                self._rewrite()
            except StoreError as exc:
                self._log(f"store: closing {self.path} unrepaired: {exc}")
        self._move(CLOSE)
        self._close_handle()

    # ------------------------------------------------------------ internals

    def _check_open(self):
        """What commit() and compact() raise in the states that refuse them."""
        if self.state == NEEDS_REOPEN:
            raise StoreNeedsReopenError(f"store {self.path} must be reopened: an earlier "
                                        "commit may or may not be on flash")
        if self.state == CLOSED:
            raise StoreClosedError(f"store {self.path} is closed")

    def _move(self, event):
        key = "\n%s %s " % (self.state, event)
        i = _MOVES.find(key)
        if i < 0:  # a bug in this module, never bad input
            raise StoreError(f"store {self.path}: {event} in state {self.state}")
        i += len(key)
        nxt = _MOVES[i:_MOVES.index("\n", i)]
        for state in STORE_STATES:  # the constant itself, not a slice of the table
            if state == nxt:
                self.state = state

    def _due_for_compaction(self):
        limit = self._snapshot_size * self.compact_factor
        if limit < self.compact_min_bytes:
            limit = self.compact_min_bytes
        return self._size >= limit

    def _close_handle(self):
        f = self._f
        self._f = None
        if f is not None:
            try:
                self.fs.close(f)
            except OSError:
                pass  # the handle is gone either way; the data was fsynced or is being dropped

    def _recover_from_failed_append(self, exc):
        # Part of the failed record may be on flash: rewrite the file from memory
        # (the acknowledged state) so it can never surface, and so later appends
        # never land after garbage.
        self._move(DAMAGED)
        try:
            self._rewrite()
        except StoreError as again:
            self._log(f"store: could not roll back failed commit ({exc}): {again}")
            return False
        return True

    def _rewrite(self):
        """Compaction: snapshot of memory -> .tmp -> fsync -> rename over -> fsync dir."""
        fs = self.fs
        generation = (self._generation + 1) & 0xFFFFFFFF
        payload = codec.packb(self._state)
        data = encode_header(generation) + encode_record(SNAPSHOT, self._seq, payload)
        stage = "write"
        try:
            if fs.exists(self._tmp):
                if fs.exists(self.path):
                    fs.remove(self._tmp)
                else:
                    # An earlier rename failed half-way (FAT: old file already
                    # removed): this fsynced .tmp is the only copy. Keep it in
                    # place until the new snapshot has landed.
                    self._replace(self._tmp, self.path)
            tmp = fs.open_write(self._tmp)
            try:
                fs.write(tmp, data)
                self._stats["bytes_written"] += len(data)
                fs.flush(tmp)
                fs.fsync(tmp)
            finally:
                fs.close(tmp)
            stage = "rename"
            # past this point the file we append to may change: never reuse the old handle
            self._close_handle()
            self._move(DAMAGED)  # a failure from here on leaves no handle: repair first
            if self._aside_pending:
                fs.rename(self.path, self._aside_name())
                self._aside_pending = False
            self._replace(self._tmp, self.path)
            fs.fsync_dir(self._dir)
            self._f = fs.open_append(self.path)
        except OSError as exc:
            if stage == "write":
                self._drop_tmp()
            raise store_error(exc, f"compaction failed at {stage}") from None
        self._move(REWRITTEN)
        self._generation = generation
        self._size = len(data)
        self._snapshot_size = len(data)
        self._stats["compactions"] += 1
        self._stats["records"] = 1

    def _replace(self, src, dst):
        try:
            self.fs.rename(src, dst)
        except OSError as exc:
            # FAT-like file systems cannot rename over a file. src is durable
            # already, and open() adopts it if dst is missing, so this is safe.
            if oserror_errno(exc) != EEXIST or not self.fs.exists(dst):
                raise
            self.fs.remove(dst)
            self.fs.rename(src, dst)

    def _drop_tmp(self):
        try:
            self.fs.remove(self._tmp)
        except OSError:
            pass  # a leftover .tmp is removed by the next open

    def _aside_name(self):
        base = self.path.rsplit("/", 1)[-1] + ".corrupt-"
        try:
            names = self.fs.listdir(self._dir)
        except OSError:
            names = []
        n = 1
        while base + str(n) in names:
            n += 1
        return self.path + ".corrupt-" + str(n)

    # ------------------------------------------------------------ opening

    def _open(self):
        # at __init__ and reopen() only: a board frees agent.store_recovery once its
        # agent runs (agent.boot.BOOT_ONLY_MODULES), and a reopen imports it again
        from agent.store_recovery import open_log

        if open_log(self):  # no file yet, or a damaged one: a snapshot of memory repairs it
            self._move(DAMAGED)
            try:
                self._rewrite()
            except StoreError as exc:
                # Reads work from memory; the next commit repairs first.
                self._log(f"store: cannot rewrite {self.path} yet: {exc}")
