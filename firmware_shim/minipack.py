"""A small MessagePack codec in pure Python that MicroPython can run.

It covers what fleetstage sends: None, bool, ints of up to 64 bits, float,
str, bytes, list/tuple and dict. Ext types are refused. On CPython the `msgpack`
package is used instead (firmware_shim.codec); the tests check the two agree
both ways over random values. `canonical()` is used for signatures on both
runtimes: it sorts map keys so the same value always gives the same bytes,
whatever order a dict iterates in (MicroPython dicts are unordered).

The decoder treats its input as hostile: truncation, unknown type bytes,
invalid UTF-8, trailing bytes, nesting deeper than MAX_DEPTH and lengths larger
than the input all raise CodecError. It never allocates more than the input
could describe.
"""
import struct

MAX_DEPTH = 32


class CodecError(ValueError):
    pass


# Each piece is one struct.pack: a board's heap then gets one small object per value
# packed, not a bytes per type byte plus the concatenation (canonical() runs on every
# report a board signs).
_pack1 = struct.pack
_BINARY = (bytes, bytearray, memoryview)
_ARRAY = (list, tuple)


def _pack_int(v, out):
    if 0 <= v <= 0x7F:
        out(_pack1("B", v))
    elif -32 <= v < 0:
        out(_pack1("B", v & 0xFF))
    elif v >= 0:
        if v <= 0xFF:
            out(_pack1(">BB", 0xCC, v))
        elif v <= 0xFFFF:
            out(_pack1(">BH", 0xCD, v))
        elif v <= 0xFFFFFFFF:
            out(_pack1(">BI", 0xCE, v))
        elif v <= 0xFFFFFFFFFFFFFFFF:
            out(_pack1(">BQ", 0xCF, v))
        else:
            raise CodecError("int too large for msgpack: %d" % v)
    else:
        if v >= -0x80:
            out(_pack1(">Bb", 0xD0, v))
        elif v >= -0x8000:
            out(_pack1(">Bh", 0xD1, v))
        elif v >= -0x80000000:
            out(_pack1(">Bi", 0xD2, v))
        elif v >= -0x8000000000000000:
            out(_pack1(">Bq", 0xD3, v))
        else:
            raise CodecError("int too small for msgpack: %d" % v)


def _pack_len(n, fix_base, fix_max, codes, out):
    # codes: (8-bit or None, 16-bit, 32-bit) type bytes
    if n <= fix_max and fix_base is not None:
        out(_pack1("B", fix_base | n))
    elif n <= 0xFF and codes[0] is not None:
        out(_pack1("BB", codes[0], n))
    elif n <= 0xFFFF:
        out(_pack1(">BH", codes[1], n))
    elif n <= 0xFFFFFFFF:
        out(_pack1(">BI", codes[2], n))
    else:
        raise CodecError("object too large for msgpack")


def _pack(v, out, sort_keys, depth):
    if depth > MAX_DEPTH:
        raise CodecError("nesting deeper than %d" % MAX_DEPTH)
    if v is None:
        out(b"\xc0")
    elif v is True:
        out(b"\xc3")
    elif v is False:
        out(b"\xc2")
    elif isinstance(v, int):
        _pack_int(v, out)
    elif isinstance(v, float):
        out(_pack1(">Bd", 0xCB, v))
    elif isinstance(v, str):
        b = v.encode("utf-8")
        _pack_len(len(b), 0xA0, 31, (0xD9, 0xDA, 0xDB), out)
        out(b)
    elif isinstance(v, _BINARY):
        b = v if type(v) is bytes else bytes(v)
        _pack_len(len(b), None, -1, (0xC4, 0xC5, 0xC6), out)
        out(b)
    elif isinstance(v, _ARRAY):
        _pack_len(len(v), 0x90, 15, (None, 0xDC, 0xDD), out)
        for item in v:
            _pack(item, out, sort_keys, depth + 1)
    elif isinstance(v, dict):
        _pack_len(len(v), 0x80, 15, (None, 0xDE, 0xDF), out)
        keys = list(v.keys())
        if sort_keys:
            keys = _sorted_keys(keys)
        for k in keys:
            _pack(k, out, sort_keys, depth + 1)
            _pack(v[k], out, sort_keys, depth + 1)
    else:
        raise CodecError("cannot encode %s" % type(v).__name__)


def _key_order(k):
    # keys of different types must still sort the same everywhere
    if isinstance(k, str):
        return (2, k.encode("utf-8"))
    if isinstance(k, bytes):
        return (3, k)
    if isinstance(k, bool) or k is None:
        return (0, b"%d" % (1 if k else 0))
    if isinstance(k, int):
        return (1, struct.pack(">q", k) if -(2**63) <= k < 2**63 else struct.pack(">Q", k))
    raise CodecError("unsupported map key %s" % type(k).__name__)


def _sorted_keys(keys):
    return sorted(keys, key=_key_order)


# The packers hand each piece to `out` (one bytearray's extend, or a hash's update): a
# board's heap then holds the message once as it grows, not a small bytes object per
# value plus a list of them.
def packb(value):
    """The value's bytes as a bytearray (bytes-like, as the link and the store take it):
    not copied into a bytes object, a second block of the message's size at the moment a
    board's status report is made, the peak of a stage change (bench board: -1 KB)."""
    out = bytearray()
    _pack(value, out.extend, False, 0)
    return out


def canonical(value):
    """Bytes that depend only on the value: map keys are sorted."""
    out = bytearray()
    _pack(value, out.extend, True, 0)
    return bytes(out)


def canonical_digest(value, h):
    """h.update() with canonical(value), piece by piece; returns h. A board hashes a
    value (the plan) this way without holding all of its bytes in one block of a
    fragmented heap."""
    _pack(value, h.update, True, 0)
    return h


class _Reader:
    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        end = self.pos + n
        if end > len(self.data):
            raise CodecError("truncated input at byte %d" % self.pos)
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def byte(self):
        if self.pos >= len(self.data):
            raise CodecError("truncated input at byte %d" % self.pos)
        b = self.data[self.pos]
        self.pos += 1
        return b

    def remaining(self):
        return len(self.data) - self.pos


_FIXED = {
    0xCC: (1, ">B"), 0xCD: (2, ">H"), 0xCE: (4, ">I"), 0xCF: (8, ">Q"),
    0xD0: (1, ">b"), 0xD1: (2, ">h"), 0xD2: (4, ">i"), 0xD3: (8, ">q"),
    0xCA: (4, ">f"), 0xCB: (8, ">d"),
}
_STR_LEN = {0xD9: (1, ">B"), 0xDA: (2, ">H"), 0xDB: (4, ">I")}
_BIN_LEN = {0xC4: (1, ">B"), 0xC5: (2, ">H"), 0xC6: (4, ">I")}
_ARRAY_LEN = {0xDC: (2, ">H"), 0xDD: (4, ">I")}
_MAP_LEN = {0xDE: (2, ">H"), 0xDF: (4, ">I")}


def _read_len(r, spec):
    size, fmt = spec
    return struct.unpack(fmt, r.take(size))[0]


def _decode_str(raw):
    try:
        return bytes(raw).decode("utf-8")
    except (UnicodeError, ValueError):
        raise CodecError("invalid UTF-8 in string") from None


def _unpack(r, depth):
    if depth > MAX_DEPTH:
        raise CodecError("nesting deeper than %d" % MAX_DEPTH)
    t = r.byte()
    if t <= 0x7F:
        return t
    if t >= 0xE0:
        return t - 0x100
    if 0xA0 <= t <= 0xBF:
        return _decode_str(r.take(t & 0x1F))
    if 0x90 <= t <= 0x9F:
        return _unpack_array(r, t & 0x0F, depth)
    if 0x80 <= t <= 0x8F:
        return _unpack_map(r, t & 0x0F, depth)
    if t == 0xC0:
        return None
    if t == 0xC2:
        return False
    if t == 0xC3:
        return True
    spec = _FIXED.get(t)
    if spec is not None:
        return struct.unpack(spec[1], r.take(spec[0]))[0]
    spec = _STR_LEN.get(t)
    if spec is not None:
        return _decode_str(r.take(_read_len(r, spec)))
    spec = _BIN_LEN.get(t)
    if spec is not None:
        return bytes(r.take(_read_len(r, spec)))
    spec = _ARRAY_LEN.get(t)
    if spec is not None:
        return _unpack_array(r, _read_len(r, spec), depth)
    spec = _MAP_LEN.get(t)
    if spec is not None:
        return _unpack_map(r, _read_len(r, spec), depth)
    raise CodecError("unsupported type byte 0x%02x" % t)


def _unpack_array(r, n, depth):
    if n > r.remaining():  # every element takes at least one byte
        raise CodecError("array length %d exceeds input" % n)
    items = []
    for _ in range(n):
        items.append(_unpack(r, depth + 1))
    return items


def _unpack_map(r, n, depth):
    if 2 * n > r.remaining():
        raise CodecError("map length %d exceeds input" % n)
    out = {}
    for _ in range(n):
        k = _unpack(r, depth + 1)
        if isinstance(k, (list, dict)):
            raise CodecError("unhashable map key")
        out[k] = _unpack(r, depth + 1)
    return out


def unpackb(data):
    r = _Reader(data)
    value = _unpack(r, 0)
    if r.remaining():
        raise CodecError("%d trailing bytes" % r.remaining())
    return value
