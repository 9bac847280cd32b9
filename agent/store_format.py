"""The store's record format: pure bytes in, bytes and maps out (no I/O).

Owns: the header and record layout (writing them; reading them back and replaying
a log, parse_log, is agent.store_recovery's), the change rules (None deletes; values
compared by exact type) and the store's errors. The I/O
driver (agent.store.Store, or a second backend such as a flash key-value
partition) decides where the bytes live and when they are durable.
Must never: touch a file system, a clock or a log.

File format (little-endian):

    file    = HEADER  SNAPSHOT-record  COMMIT-record*
    HEADER  = b"FSTG" | version u8 (=1) | 3 zero bytes | generation u32 | crc32 u32
    record  = type u8 | payload length u24 | seq u32 | crc32 u32 | payload
              type 0x53 'S' (snapshot: the whole map) or 0x43 'C' (commit: the changes,
              None deletes); crc32 covers the first 8 header bytes and the payload.
"""
import struct

from agent.errors import AgentError
from agent.protocol import NOT_READY
from firmware_shim import codec
from firmware_shim.crypto import crc32
from firmware_shim.files import ENOSPC, oserror_errno

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


def store_error(exc, what):
    """The StoreError for the OSError `exc` while doing `what`: ENOSPC is StoreFullError."""
    code = oserror_errno(exc)
    if code == ENOSPC:
        return StoreFullError(f"{what}: no space left (ENOSPC)")
    return StoreIOError(f"{what}: {exc}")


# ---------------------------------------------------------------- the format


def encode_header(generation):
    head = MAGIC + bytes((VERSION, 0, 0, 0)) + struct.pack("<I", generation & 0xFFFFFFFF)
    return head + struct.pack("<I", crc32(head))


def encode_record(kind, seq, payload):
    if len(payload) > MAX_PAYLOAD:
        raise StoreValueError(f"record of {len(payload)} bytes is too large")
    head = struct.pack("<II", kind | (len(payload) << 8), seq)
    return head + struct.pack("<I", crc32(payload, crc32(head))) + payload


def apply_changes(state, changes):
    for k, v in changes.items():
        if v is None:
            if k in state:
                del state[k]
        else:
            state[k] = v


_PLAIN = (str, int, bool, bytes, type(None))
_SCALAR = (str, int, bool, bytes)  # exact types whose == is the whole comparison


def same_value(a, b):
    """Equal AND of the same type all the way down (1 == True == 1.0 must not count as equal)."""
    t = type(a)
    if t is not type(b):
        return False
    if t is list:
        if len(a) != len(b):
            return False
        for i in range(len(a)):
            if not same_value(a[i], b[i]):
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
            if k not in b or not same_value(a[k], b[k]):
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


def copy_value(value):
    # A caller that edits a list it got, then commits it, must see a real change.
    if isinstance(value, list):
        copied = []
        for item in value:
            copied.append(copy_value(item))
        return copied
    if isinstance(value, dict):
        copied = {}
        for key in value:
            copied[key] = copy_value(value[key])
        return copied
    return value


class StoreState:
    """What both stores (the log file and raw flash) do with the state they hold in
    memory: read it, and tell a real change from a no-op. They set _state and _seq."""

    def get(self, key, default=None):
        """The value of `key`; lists and dicts come as copies, so editing one changes nothing."""
        if key not in self._state:
            return default
        return copy_value(self._state[key])

    def peek(self, key):
        """The value of `key` as the store holds it, or None: NOT a copy, never edit it
        (agent.events.History reads its entries this way instead of holding a second copy)."""
        return self._state.get(key)

    def items(self):
        """Every (key, value), sorted by key (values copied as in get)."""
        items = []
        for key in sorted(self._state):
            items.append((key, copy_value(self._state[key])))
        return items

    def __contains__(self, key):
        return key in self._state

    def __len__(self):
        return len(self._state)

    @property
    def seq(self):
        return self._seq

    def _real_changes(self, changes):
        if not isinstance(changes, dict):
            raise StoreValueError("changes must be a dict, not %s" % type(changes).__name__)
        real = {}
        state = self._state
        for key, value in changes.items():
            if type(key) is not str and not isinstance(key, str):
                raise StoreValueError("keys must be str, not %s" % type(key).__name__)
            if value is None:
                if key in state:
                    real[key] = None
                continue
            old = state.get(key)
            if old is None:
                real[key] = value
            elif type(old) is not type(value):
                real[key] = value
            elif type(value) in _SCALAR:  # the common case: a flag, a seq, a stage
                if old != value:
                    real[key] = value
            elif not same_value(old, value):
                real[key] = value
        return real
