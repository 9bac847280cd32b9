"""The wire and storage codec: MessagePack.

On CPython this is the `msgpack` package (C speed for the simulator's
thousands of devices); on MicroPython it is firmware_shim.minipack. Both
raise CodecError for bad input and refuse ext types, so the core sees the
same behaviour everywhere. `canonical()` (sorted keys) always comes from
minipack, so a signature computed on CPython verifies on a board.
"""
from firmware_shim.minipack import CodecError
from firmware_shim.minipack import canonical as _canonical_pure

try:
    import msgpack as _msgpack
except ImportError:  # MicroPython has no msgpack package: use the pure codec
    _msgpack = None

if _msgpack is None:
    from firmware_shim.minipack import packb, unpackb  # noqa: F401

    canonical = _canonical_pure
else:
    _ALLOWED = (type(None), bool, int, float, str, bytes, list, dict)

    def _refuse_ext(code, data):
        raise CodecError("ext type %d not accepted" % code)

    def _check(value, depth):
        if depth > 32:
            raise CodecError("nesting deeper than 32")
        if isinstance(value, list):
            for item in value:
                _check(item, depth + 1)
        elif isinstance(value, dict):
            for k, v in value.items():
                _check(k, depth + 1)
                _check(v, depth + 1)
        elif not isinstance(value, _ALLOWED):
            raise CodecError("unsupported type %s" % type(value).__name__)

    def packb(value):
        try:
            return _msgpack.packb(value, use_bin_type=True)
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
        _check(value, 0)
        return value

    from firmware_shim.minipack import _key_order

    def _sorted_copy(value, depth):
        # Same key order as minipack.canonical; CPython dicts keep insertion order,
        # so the C packer then writes the same bytes (tests/test_codec_canonical.py).
        if depth > 32:
            raise CodecError("nesting deeper than 32")
        if isinstance(value, dict):
            return {k: _sorted_copy(value[k], depth + 1) for k in sorted(value, key=_key_order)}
        if isinstance(value, (list, tuple)):
            return [_sorted_copy(v, depth + 1) for v in value]
        return value

    def canonical(value):
        """Bytes that depend only on the value: map keys sorted (as minipack.canonical)."""
        try:
            return _msgpack.packb(_sorted_copy(value, 0), use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError("cannot encode: %s" % exc) from None
