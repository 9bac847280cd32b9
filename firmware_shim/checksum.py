"""CRC32 (the zlib/IEEE polynomial), with a table-driven fallback.

Some MicroPython builds ship without binascii.crc32 (it is a build option), so
the pure version below stands in; tests check both give the same answers.
"""
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
