"""The flag store: a flash-backed key-value file that survives power loss.

It owns the on-flash format of the agent's durable state (stage, flags, command
sequence number, restart counts, migration history) and the rules that keep it
intact across power cuts. It never touches `open`/`os` itself (files come from
the `fs` object handed in: firmware_shim.files.FileSystem on a Pi or a
board, a fake in tests), never
acknowledges a commit before it is durable, and never leaves a state on flash
that mixes two commits.

File format (little-endian):

    file    = HEADER  SNAPSHOT-record  COMMIT-record*
    HEADER  = b"FSTG" | version u8 (=1) | 3 zero bytes | generation u32 | crc32 u32
    record  = type u8 | payload length u24 | seq u32 | crc32 u32 | payload
              type 0x53 'S' (snapshot: the whole map) or 0x43 'C' (commit: the changes,
              None deletes); crc32 covers the first 8 header bytes and the payload.

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
import struct

from agent.errors import AgentError
from agent.protocol import NOT_READY
from firmware_shim import codec
from firmware_shim.checksum import crc32
from firmware_shim.files import EEXIST, ENOSPC, dirname, oserror_errno

MAGIC = b"FSTG"
VERSION = 1
HEADER_SIZE = 16
RECORD_HEADER_SIZE = 12
SNAPSHOT = 0x53
COMMIT = 0x43
MAX_PAYLOAD = 0xFFFFFF
MAX_SEQ = 0xFFFFFFFF


class StoreError(AgentError):
    """Anything the store refuses or cannot do. Nothing was committed, so a refused
    command may be resent once storage recovers: not_ready."""

    refusal = NOT_READY

    def refusal_detail(self):
        return [f"storage error: {self}"]


class StoreFullError(StoreError):
    """The file system is full (ENOSPC); nothing was acknowledged."""


class StoreIOError(StoreError):
    """Another I/O failure (EIO, failed fsync, ...); nothing was acknowledged."""


class StoreValueError(StoreError):
    """The caller passed a key or value the store cannot keep."""


class StoreFormatError(StoreError):
    """The file is a store of another format version; it is left untouched."""


class StoreClosedError(StoreError):
    """The store was closed."""


class StoreNeedsReopenError(StoreIOError):
    """A commit's fsync failed after its bytes were written and the rollback failed
    too: what a reboot shows is unknown, so the store takes no commit until
    reopen() has read back what the file holds."""


# ---------------------------------------------------------------- the format


def encode_header(generation):
    head = MAGIC + bytes((VERSION, 0, 0, 0)) + struct.pack("<I", generation & 0xFFFFFFFF)
    return head + struct.pack("<I", crc32(head))


def decode_header(data):
    """(ok, generation). Raises StoreFormatError for an intact header of another version."""
    if len(data) < HEADER_SIZE or data[:4] != MAGIC:
        return False, 0
    head = data[:12]
    if struct.unpack("<I", data[12:16])[0] != crc32(head):
        return False, 0
    if data[4] != VERSION:
        raise StoreFormatError(f"store format version {data[4]}, this agent reads {VERSION}")
    return True, struct.unpack("<I", data[8:12])[0]


def encode_record(kind, seq, payload):
    if len(payload) > MAX_PAYLOAD:
        raise StoreValueError(f"record of {len(payload)} bytes is too large")
    head = struct.pack("<II", kind | (len(payload) << 8), seq)
    return head + struct.pack("<I", crc32(payload, crc32(head))) + payload


def decode_record(data, pos):
    """(kind, seq, payload, end) for an intact record at `pos`, else None."""
    if pos + RECORD_HEADER_SIZE > len(data):
        return None
    kind = data[pos]
    if kind != COMMIT and kind != SNAPSHOT:
        return None
    word, seq, crc = struct.unpack("<III", data[pos:pos + RECORD_HEADER_SIZE])
    end = pos + RECORD_HEADER_SIZE + (word >> 8)
    if end > len(data):
        return None
    payload = data[pos + RECORD_HEADER_SIZE:end]
    if crc32(payload, crc32(data[pos:pos + 8])) != crc:
        return None
    return kind, seq, payload, end


def _decode_map(payload):
    try:
        value = codec.unpackb(payload)
    except codec.CodecError:
        return None
    if not isinstance(value, dict):
        return None
    for k in value:
        if not isinstance(k, str):
            return None
    return value


class ParsedLog:
    """What recovery found in a file: the state of its longest valid prefix and the tail."""

    def __init__(self):
        self.header_ok = False
        self.generation = 0
        self.state = {}
        self.records = 0
        self.last_seq = 0
        self.good_end = HEADER_SIZE
        self.snapshot_end = 0
        self.tail = "clean"  # "clean", "torn" or "corrupt"
        self.max_seq_after = 0  # the highest seq of a valid-looking record past the damage


def parse_log(data):
    """Replay `data`; never raises for damage, only StoreFormatError for a newer format."""
    out = ParsedLog()
    out.header_ok, out.generation = decode_header(data)
    pos = HEADER_SIZE
    seq = None
    while pos < len(data):
        rec = decode_record(data, pos)
        if rec is None:
            break
        kind, rec_seq, payload, end = rec
        if kind != (SNAPSHOT if seq is None else COMMIT):
            break
        if seq is not None and rec_seq != seq + 1:
            break
        changes = _decode_map(payload)
        if changes is None:
            break
        if kind == SNAPSHOT:
            out.state = changes
            out.snapshot_end = end
        else:
            _apply(out.state, changes)
        seq = rec_seq
        out.records += 1
        pos = end
    out.last_seq = seq or 0
    out.good_end = pos
    if pos < len(data) or len(data) < HEADER_SIZE:
        # from pos itself: an intact record there that is out of order is damage too
        found, out.max_seq_after = _scan_for_valid(data, pos, seq)
        out.tail = "corrupt" if found else "torn"
    if len(data) > 0 and (not out.header_ok or out.records == 0):
        # header and snapshot reach the file whole (fsync before rename): never torn
        out.tail = "corrupt"
    return out


def _scan_for_valid(data, start, last_seq):
    """Is there an intact record (newer than last_seq) anywhere at or after `start`?"""
    found = False
    best = 0
    floor = -1 if last_seq is None else last_seq
    end = len(data) - RECORD_HEADER_SIZE
    pos = start
    while pos <= end:
        b = data[pos]
        if b == COMMIT or b == SNAPSHOT:
            rec = decode_record(data, pos)
            if rec is not None and rec[1] > floor:
                found = True
                if rec[1] > best:
                    best = rec[1]
        pos += 1
    return found, best


def _apply(state, changes):
    for k, v in changes.items():
        if v is None:
            if k in state:
                del state[k]
        else:
            state[k] = v


_PLAIN = (str, int, bool, bytes, type(None))


def _same_value(a, b):
    """Equal AND of the same type all the way down (1 == True == 1.0 must not count as equal)."""
    t = type(a)
    if t is not type(b):
        return False
    if t is list:
        if len(a) != len(b):
            return False
        for i in range(len(a)):
            if not _same_value(a[i], b[i]):
                return False
        return True
    if t is dict:
        if len(a) != len(b):
            return False
        for k in a:
            # str keys compare strictly with `in`; other key types (1 and True are
            # one dict key) take the canonical bytes below
            if type(k) is not str:
                return _same_canonical(a, b)
            if k not in b or not _same_value(a[k], b[k]):
                return False
        return True
    if isinstance(a, _PLAIN):
        return a == b
    return _same_canonical(a, b)


def _same_canonical(a, b):
    try:
        return codec.canonical(a) == codec.canonical(b)
    except codec.CodecError:
        return False


def _copy(value):
    # A caller that edits a list it got, then commits it, must see a real change.
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def _quiet(msg):
    pass


# ---------------------------------------------------------------- the store


class Store:
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
        self._needs_repair = False
        self._needs_reopen = False
        self._aside_pending = False  # a corrupt file still waits to be moved aside
        self._closed = False
        self._stats = {
            "bytes_written": 0, "records": 0, "commits": 0, "noop_commits": 0,
            "compactions": 0, "recovered": 0, "dropped_bytes": 0,
            "corruption_detected": 0, "failed_commits": 0, "compaction_failures": 0,
        }
        self._open()

    # ------------------------------------------------------------ reading

    def get(self, key, default=None):
        """The value of `key`; lists and dicts come as copies, so editing one changes nothing."""
        if key not in self._state:
            return default
        return _copy(self._state[key])

    def items(self):
        """Every (key, value), sorted by key (values copied as in get)."""
        return [(k, _copy(self._state[k])) for k in sorted(self._state)]

    def __contains__(self, key):
        return key in self._state

    def __len__(self):
        return len(self._state)

    @property
    def seq(self):
        return self._seq

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
        out["needs_repair"] = self._needs_repair
        out["needs_reopen"] = self._needs_reopen
        return out

    @property
    def needs_reopen(self):
        return self._needs_reopen

    def reopen(self):
        """End NEEDS_REOPEN: first try once more to rewrite the file from memory (then
        the failed commit is gone for good and memory stays); if that fails too,
        drop memory and read the file back as a reboot would."""
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")
        if self._needs_reopen:
            try:
                self._rewrite()
                self._needs_reopen = False
                return
            except StoreError as exc:
                self._log(f"store: reopen reads {self.path} back: {exc}")
        self._close_handle()
        self._state = {}
        self._needs_repair = False
        self._needs_reopen = False
        self._aside_pending = False
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
        if self._needs_repair:
            self._repair()
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
                self._needs_reopen = True
                self._log(f"store: commit {seq} may be on flash after a failed fsync and "
                          "could not be rolled back; no commits until reopen()")
                raise _store_error(exc, f"commit {seq} not durable and not rolled back (a "
                                        "reboot may show it; reopen the store)") from None
            raise _store_error(exc, f"commit {seq} not durable") from None
        self._size += len(record)
        # The decoded copy is what a reopen sees (tuples become lists, and the
        # caller's objects are not shared); these bytes were just encoded here.
        _apply(self._state, codec.unpackb_trusted(payload))
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
        if self._closed:
            return
        if self._needs_repair:
            try:
                self._rewrite()
            except StoreError as exc:
                self._log(f"store: closing {self.path} unrepaired: {exc}")
        self._closed = True
        self._close_handle()

    # ------------------------------------------------------------ internals

    def _check_open(self):
        if self._closed:
            raise StoreClosedError(f"store {self.path} is closed")
        if self._needs_reopen:
            raise StoreNeedsReopenError(f"store {self.path} must be reopened: an earlier "
                                        "commit may or may not be on flash")

    def _real_changes(self, changes):
        if not isinstance(changes, dict):
            raise StoreValueError(f"changes must be a dict, not {type(changes).__name__}")
        real = {}
        for key, value in changes.items():
            if not isinstance(key, str):
                raise StoreValueError(f"keys must be str, not {type(key).__name__}")
            if value is None:
                if key in self._state:
                    real[key] = None
            elif key not in self._state or not _same_value(self._state[key], value):
                real[key] = value
        return real

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
        self._needs_repair = True
        try:
            self._rewrite()
        except StoreError as again:
            self._log(f"store: could not roll back failed commit ({exc}): {again}")
            return False
        return True

    def _repair(self):
        self._rewrite()

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
            self._needs_repair = True
            if self._aside_pending:
                fs.rename(self.path, self._aside_name())
                self._aside_pending = False
            self._replace(self._tmp, self.path)
            fs.fsync_dir(self._dir)
            self._f = fs.open_append(self.path)
        except OSError as exc:
            if stage == "write":
                self._drop_tmp()
            raise _store_error(exc, f"compaction failed at {stage}") from None
        self._needs_repair = False
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
        fs = self.fs
        try:
            if self._dir not in (".", "/"):
                fs.makedirs(self._dir)
            data = fs.read_bytes(self.path)
            if data is None:
                data = self._adopt_tmp()
            elif fs.exists(self._tmp):
                fs.remove(self._tmp)  # an interrupted compaction: the old file is authoritative
        except OSError as exc:
            raise _store_error(exc, f"cannot open {self.path}") from None
        if data is None:
            self._start_fresh()
            return
        parsed = parse_log(data)
        self._state = parsed.state
        self._generation = parsed.generation
        self._seq = parsed.last_seq
        self._size = len(data)
        self._snapshot_size = parsed.snapshot_end
        self._stats["records"] = parsed.records
        if parsed.tail == "clean":
            try:
                self._f = fs.open_append(self.path)
            except OSError as exc:
                raise _store_error(exc, f"cannot open {self.path}") from None
            return
        self._stats["recovered"] += 1
        self._stats["dropped_bytes"] = len(data) - parsed.good_end
        # The record after the last valid one may have been in flight: burn its number.
        self._seq = max(parsed.last_seq + 1, parsed.max_seq_after)
        if parsed.tail == "corrupt":
            self._stats["corruption_detected"] += 1
            self._aside_pending = True
            self._log("store: CORRUPTION in {}: kept {} valid records ({} of {} bytes){}; "
                      "damaged file moved aside".format(
                          self.path, parsed.records, parsed.good_end, len(data),
                          "" if parsed.header_ok else ", header damaged"))
        else:
            dropped = len(data) - parsed.good_end
            self._log(f"store: dropped torn tail of {dropped} bytes at offset " +
                      f"{parsed.good_end} in {self.path}")
        self._needs_repair = True
        self._try_rewrite_on_open()

    def _adopt_tmp(self):
        data = self.fs.read_bytes(self._tmp)
        if data is None:
            return None
        parsed = parse_log(data)
        if parsed.tail != "clean" or parsed.records != 1:
            self.fs.remove(self._tmp)  # an unfinished first write: nothing was acknowledged
            return None
        self._replace(self._tmp, self.path)
        self.fs.fsync_dir(self._dir)
        self._stats["recovered"] += 1
        self._log(f"store: adopted {self._tmp} (interrupted compaction)")
        return data

    def _start_fresh(self):
        self._needs_repair = True
        self._try_rewrite_on_open()

    def _try_rewrite_on_open(self):
        try:
            self._rewrite()
        except StoreError as exc:
            # Reads work from memory; the next commit repairs first.
            self._log(f"store: cannot rewrite {self.path} yet: {exc}")


def _store_error(exc, what):
    code = oserror_errno(exc)
    if code == ENOSPC:
        return StoreFullError(f"{what}: no space left (ENOSPC)")
    return StoreIOError(f"{what}: {exc}")
