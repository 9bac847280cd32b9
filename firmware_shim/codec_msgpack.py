"""The wire and storage codec on CPython: the `msgpack` package (C speed for the
simulator's thousands of devices), with the same verdicts and bytes as
firmware_shim.minipack (see firmware_shim.codec, the one door: import that).

CPython only: a board's bundle leaves it out (tools/bundle_cmd.py CPYTHON_ONLY),
so nothing here costs a board's heap.
"""
import msgpack as _msgpack

from firmware_shim.minipack import CodecError, _key_order

# msgpack builds exact types, so type() lookups (no isinstance chains) are
# enough to check what it decoded; scalars are never walked into.
_SCALAR = frozenset((type(None), bool, int, float, str, bytes))

# A value msgpack decodes can only fail _check by nesting deeper than 32 (33 map or
# array heads in its bytes at least) or by holding a timestamp (an ext: its head
# 0xc7, 0xd6 or 0xd7); bytes that can hold neither need no walk (a report's).
_NOT_HEADS = bytes(b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF
                                                 or b in (0xC7, 0xD6, 0xD7)))
_NOT_EXT = bytes(b for b in range(256) if b not in (0xC7, 0xD6, 0xD7))

# Packers kept for reuse (msgpack.packb makes one, and its buffer, a call): a call
# takes one off the list and puts it back after, so two threads never share one
# (one that raised is dropped: its buffer may hold a part; a new one is made).
_packers: list = []
_Packer = _msgpack.Packer


def _refuse_ext(code, data):
    raise CodecError("ext type %d not accepted" % code)


def _too_deep():
    raise CodecError("nesting deeper than 32")


def _check(value, depth):
    # Same verdicts as a walk that checks every value's depth (<= 32) and type.
    if depth > 32:
        _too_deep()
    t = type(value)
    if t is list:
        if value and depth >= 32:
            _too_deep()
        for item in value:
            if type(item) not in _SCALAR:
                _check(item, depth + 1)
    elif t is dict:
        if value and depth >= 32:
            _too_deep()
        for k, v in value.items():
            if type(k) not in _SCALAR:
                _check(k, depth + 1)
            if type(v) not in _SCALAR:
                _check(v, depth + 1)
    elif t not in _SCALAR:
        raise CodecError("unsupported type %s" % t.__name__)


def packb(value):
    try:
        try:
            packer = _packers.pop()
        except IndexError:
            packer = _Packer(use_bin_type=True)
        data = packer.pack(value)
        _packers.append(packer)
        return data
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError("cannot encode: %s" % exc) from None


def unpackb(data):
    try:
        value = _msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=_refuse_ext, timestamp=0
        )
    except CodecError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise CodecError("malformed msgpack: %s" % exc.__class__.__name__) from None
    if type(value) not in _SCALAR:
        if len(data) <= 2048 and type(data) is bytes:  # (a bigger one: MAC tables)
            heads = data.translate(None, _NOT_HEADS)
            if len(heads) <= 32 and not heads.translate(None, _NOT_EXT):
                return value
        _check(value, 0)
    return value


def unpackb_trusted(data):
    """Decode bytes this process just encoded with packb (no type walk: they can
    only hold what packb took). Never for bytes from the wire or the flash."""
    return _msgpack.unpackb(data, raw=False, strict_map_key=False)


def _sorted_copy(value, depth):
    # Same key order as minipack.canonical; CPython dicts keep insertion order,
    # so the C packer then writes the same bytes (tests/test_codec_canonical.py).
    # All-str keys (nearly every map) sort as plain str: code-point order is
    # UTF-8 byte order, which is what _key_order gives for str. A plain sort that
    # works with a str first had only str keys (a str compares with no other key
    # type), without a loop over the keys to see it.
    if depth > 32:
        _too_deep()
    if type(value) in _SCALAR:
        return value
    if isinstance(value, dict):
        keys = list(value)
        try:
            keys.sort()
            mixed = keys and type(keys[0]) is not str
        except TypeError:
            mixed = True
        if mixed:
            keys.sort(key=_key_order)
        d = depth + 1
        if keys and d > 32:
            _too_deep()
        out = {}  # a loop, not a comprehension: no frame of its own a map (CPython 3.11)
        for k in keys:
            v = value[k]
            out[k] = v if type(v) in _SCALAR else _sorted_copy(v, d)
        return out
    if isinstance(value, (list, tuple)):
        d = depth + 1
        if value and d > 32:
            _too_deep()
        return [v if type(v) in _SCALAR else _sorted_copy(v, d) for v in value]
    return value


def canonical(value):
    """Bytes that depend only on the value: map keys sorted (as minipack.canonical)."""
    try:
        value = _sorted_copy(value, 0)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError("cannot encode: %s" % exc) from None
    return packb(value)


def canonical_digest(value, h):
    """h.update(canonical(value)); returns h (a board feeds it piece by piece)."""
    h.update(canonical(value))
    return h


def canonical_mac(key, prefix, value):
    """hmac_sha256(key, prefix + canonical(value)) (a board feeds it piece by piece)."""
    from firmware_shim.crypto import hmac_sha256

    return hmac_sha256(key, prefix + canonical(value))
