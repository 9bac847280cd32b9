"""HMAC-SHA256, constant-time compare, random bytes and CRC32.

MicroPython has hashlib.sha256 but no `hmac` module, so HMAC (RFC 2104) is
built here from sha256; tests check it against CPython's hmac. CRC32 (the
zlib/IEEE polynomial, the store's records) has a table-driven fallback: some
MicroPython builds ship without binascii.crc32 (it is a build option), so the
pure version stands in; tests check both give the same answers.
"""
import hashlib

try:
    import os as _os

    _urandom = _os.urandom
except (ImportError, AttributeError):  # some MicroPython ports keep urandom elsewhere
    _urandom = None

try:
    import hmac as _hmac  # CPython: C speed for the simulator's thousands of devices
except ImportError:  # MicroPython has no hmac module: the RFC 2104 version below
    _hmac = None

_BLOCK = 64


def _sha256(data):
    return hashlib.sha256(data).digest()


# CPython: a key's inner and outer hash states, keyed first (RFC 2104), so each MAC
# is two copies and two updates; a fresh HMAC costs twice that (key setup every
# time). A device has one key; an operator checking a large fleet's reports
# fills this up and starts it again. Bounded at about 0.33 KB an entry (43 MB when
# full) and sized above a 100,000-device fleet: the simulator holds every device's
# key in one process, and at 4,096 a 10,000-device run rebuilt nearly every key's
# states for nearly every MAC (262,558 times; 10,001 now).
_keyed = {}
_KEYED_MAX = 131072
if _hmac is not None:  # the pads as translate tables: one C call a pad, not a loop
    _IPAD = bytes(b ^ 0x36 for b in range(256))
    _OPAD = bytes(b ^ 0x5C for b in range(256))


def _keyed_states(key):
    if len(key) > _BLOCK:
        key = _sha256(key)
    key = key + b"\x00" * (_BLOCK - len(key))
    return (hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD)))


def hmac_sha256(key, msg):
    if _hmac is None:
        return hmac_sha256_pure(key, msg)
    if type(key) is not bytes:
        key = bytes(key)
    states = _keyed.get(key)
    if states is None:
        if len(_keyed) >= _KEYED_MAX:
            _keyed.clear()
        states = _keyed[key] = _keyed_states(key)
    inner = states[0].copy()
    inner.update(msg)
    outer = states[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def hmac_sha256_pure(key, msg):
    mac = HmacSha256(key)
    mac.update(msg)
    return mac.digest()


def _padded(key, pad):
    """The block-sized `key` XOR `pad` (RFC 2104's ipad or opad), byte by byte (a loop,
    not a generator: one function object fewer on a board)."""
    out = bytearray(key)
    for i in range(len(out)):
        out[i] ^= pad
    return out


class HmacSha256:
    """HMAC-SHA256 fed piece by piece (RFC 2104 from sha256): update(), then digest() once.

    A board's heap never holds a copy of the message with the pad before it, nor the
    message in one block when its pieces are fed as they are made (codec.canonical_mac).
    """

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = _sha256(key)
        key = key + b"\x00" * (_BLOCK - len(key))
        self._inner = hashlib.sha256(_padded(key, 0x36))
        self._outer = hashlib.sha256(_padded(key, 0x5C))
        self.update = self._inner.update

    def digest(self):
        self._outer.update(self._inner.digest())
        return self._outer.digest()


def compare_digest(a, b):
    """Compare two byte strings in time that depends only on their length."""
    if _hmac is not None:
        return _hmac.compare_digest(a, b)
    return compare_digest_pure(a, b)


def compare_digest_pure(a, b):
    if len(a) != len(b):
        return False
    diff = 0
    for x, y in zip(a, b):
        diff |= x ^ y
    return diff == 0


class NoRandomSource(Exception):
    """The port has no os.urandom: there are no bytes here fit for keys or nonces."""


def random_bytes(n):
    """n bytes from the OS's cryptographic source; raises NoRandomSource without one.

    Never falls back to `random`: new_fleet_key and command ids use these bytes.
    """
    if _urandom is None:
        raise NoRandomSource("this port has no os.urandom: cannot make key material")
    return _urandom(n)


def jitter_bytes(n):
    """n bytes for spreading retries (reconnect jitter): never for keys or ids.

    Uses the OS source when there is one; a port without os.urandom falls back
    to `random`, which is fine for jitter and is why this is not random_bytes.
    """
    if _urandom is not None:
        return _urandom(n)
    import random

    out = bytearray(n)
    for index in range(n):
        out[index] = random.getrandbits(8)
    return bytes(out)


# ---------------------------------------------------------------- CRC32

try:
    from binascii import crc32 as _native_crc32
except ImportError:  # MicroPython built without MICROPY_PY_BINASCII_CRC32
    _native_crc32 = None

_TABLE = None


def _make_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if (c & 1) else (c >> 1)
        table.append(c)
    return table


def crc32_pure(data, crc=0):
    global _TABLE
    if _TABLE is None:
        _TABLE = _make_table()
    table = _TABLE
    crc = crc ^ 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def crc32(data, crc=0):
    if _native_crc32 is not None:
        return _native_crc32(data, crc) & 0xFFFFFFFF
    return crc32_pure(data, crc)
