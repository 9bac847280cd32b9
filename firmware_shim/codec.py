"""The wire and storage codec: MessagePack.

On CPython this is the `msgpack` package (C speed for the simulator's
thousands of devices); on MicroPython it is firmware_shim.minipack. Both
raise CodecError for bad input and refuse ext types, so the core sees the
same behaviour everywhere. `canonical()` (sorted keys) writes the bytes
minipack writes, so a signature computed on CPython verifies on a board;
`canonical_digest(value, h)` feeds those bytes to a hash, `canonical_mac(key, prefix,
value)` to an HMAC-SHA256.
"""
from firmware_shim.minipack import CodecError  # noqa: F401 (codec.CodecError)
from firmware_shim.minipack import canonical as _canonical_pure

try:
    import msgpack as _msgpack
except ImportError:  # MicroPython has no msgpack package: use the pure codec
    _msgpack = None

if _msgpack is None:
    from firmware_shim.minipack import canonical_digest, packb, unpackb  # noqa: F401

    canonical = _canonical_pure
    unpackb_trusted = unpackb

    def canonical_mac(key, prefix, value):
        """hmac_sha256(key, prefix + canonical(value)), the value's bytes fed to the MAC as
        they are packed: a board signs a report without holding its bytes (or a copy
        with the prefix) in one block of its heap."""
        from firmware_shim.crypto import HmacSha256

        mac = HmacSha256(key)
        mac.update(prefix)
        canonical_digest(value, mac)
        return mac.digest()
else:
    # CPython: the msgpack package, in a module a board's bundle leaves out
    from firmware_shim.codec_msgpack import (  # noqa: F401
        canonical,
        canonical_digest,
        canonical_mac,
        packb,
        unpackb,
        unpackb_trusted,
    )
