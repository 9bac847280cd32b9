"""Reading a store file back at open: the log's replay and the file store's open path.

Owns: decoding the header and records, replaying a log into a map (parse_log:
the longest valid prefix, torn tail vs corruption) and agent.store.Store's
open (open_log: the file read back, a leftover .tmp removed or adopted, a torn
tail dropped, a corrupt file kept aside, a fresh file started); the format
itself (header and record layout, errors, the change rules) is agent.store_format's.
Must never: write a record of its own (every rewrite is the Store's _rewrite).
Only an open needs this module, so a board frees it once its agent runs
(agent.boot.BOOT_ONLY_MODULES) and a store's reopen() imports it again.
"""
import struct

from agent.store_format import (
    COMMIT,
    HEADER_SIZE,
    MAGIC,
    RECORD_HEADER_SIZE,
    SNAPSHOT,
    VERSION,
    StoreFormatError,
    apply_changes,
    store_error,
)
from firmware_shim import codec
from firmware_shim.crypto import crc32


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
            apply_changes(out.state, changes)
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


# ---------------------------------------------------------------- the file store's open


def open_log(store):
    """Store._open: read the file back (or adopt a .tmp) into `store`. True when the
    file must be rewritten first: there is none yet, or its tail was damaged."""
    fs = store.fs
    try:
        if store._dir not in (".", "/"):
            fs.makedirs(store._dir)
        data = fs.read_bytes(store.path)
        if data is None:
            data = _adopt_tmp(store)
        elif fs.exists(store._tmp):
            fs.remove(store._tmp)  # an interrupted compaction: the old file is authoritative
    except OSError as exc:
        raise store_error(exc, f"cannot open {store.path}") from None
    if data is None:
        return True  # no file yet: the first snapshot is the repair
    parsed = parse_log(data)
    store._state = parsed.state
    store._generation = parsed.generation
    store._seq = parsed.last_seq
    store._size = len(data)
    store._snapshot_size = parsed.snapshot_end
    store._stats["records"] = parsed.records
    if parsed.tail == "clean":
        try:
            store._f = fs.open_append(store.path)
        except OSError as exc:
            raise store_error(exc, f"cannot open {store.path}") from None
        return False
    store._stats["recovered"] += 1
    store._stats["dropped_bytes"] = len(data) - parsed.good_end
    # The record after the last valid one may have been in flight: burn its number.
    store._seq = max(parsed.last_seq + 1, parsed.max_seq_after)
    if parsed.tail == "corrupt":
        store._stats["corruption_detected"] += 1
        store._aside_pending = True
        store._log("store: CORRUPTION in {}: kept {} valid records ({} of {} bytes){}; "
                   "damaged file moved aside".format(
                       store.path, parsed.records, parsed.good_end, len(data),
                       "" if parsed.header_ok else ", header damaged"))
    else:
        dropped = len(data) - parsed.good_end
        store._log(f"store: dropped torn tail of {dropped} bytes at offset " +
                   f"{parsed.good_end} in {store.path}")
    return True


def _adopt_tmp(store):
    data = store.fs.read_bytes(store._tmp)
    if data is None:
        return None
    parsed = parse_log(data)
    if parsed.tail != "clean" or parsed.records != 1:
        store.fs.remove(store._tmp)  # an unfinished first write: nothing was acknowledged
        return None
    store._replace(store._tmp, store.path)
    store.fs.fsync_dir(store._dir)
    store._stats["recovered"] += 1
    store._log(f"store: adopted {store._tmp} (interrupted compaction)")
    return data
