"""firmware_shim on both interpreters: CRC32, HMAC-SHA256, codec round trips."""
import corekit

from firmware_shim import codec, minipack
from firmware_shim.crypto import compare_digest, crc32, crc32_pure, hmac_sha256, hmac_sha256_pure


def test_crc32_matches_known_values_and_fallback():
    assert crc32(b"") == 0
    assert crc32(b"123456789") == 0xCBF43926  # the standard check value
    assert crc32_pure(b"123456789") == 0xCBF43926
    data = bytes(range(256)) * 3
    assert crc32(data) == crc32_pure(data)
    assert crc32(data[100:], crc32(data[:100])) == crc32(data)


def test_hmac_sha256_rfc4231_case_2():
    for fn in (hmac_sha256, hmac_sha256_pure):
        mac = fn(b"Jefe", b"what do ya want for nothing?")
        assert mac == bytes.fromhex(
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        )
        again = fn(bytearray(b"Jefe"), b"what do ya want for nothing?")  # a keyed copy
        assert again == mac and fn(b"Jefe", b"other") != mac
        long_key = b"\xaa" * 131  # longer than the block: hashed first (RFC 4231 case 6)
        mac = fn(long_key, b"Test Using Larger Than Block-Size Key - Hash Key First")
        assert mac == bytes.fromhex(
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        )
        for n in (0, 1, 32, 63, 64, 65):  # every key length agrees with the pure version
            assert fn(bytes(range(n)), b"m" * n) == hmac_sha256_pure(bytes(range(n)), b"m" * n)


def test_compare_digest():
    assert compare_digest(b"abc", b"abc")
    assert not compare_digest(b"abc", b"abd")
    assert not compare_digest(b"abc", b"ab")


def test_codec_round_trip_and_canonical_order():
    value = {"z": [1, -1, -33, 300, 2**40, -(2**40), 2**64 - 1, 1.5, None, True, False],
             "a": {"nested": b"\x00\xff", "s": "é" * 40}, 7: "int key"}
    assert codec.unpackb(codec.packb(value)) == value
    assert minipack.unpackb(minipack.packb(value)) == value
    # canonical bytes do not depend on insertion order
    other = {}
    for k in (7, "a", "z"):
        other[k] = value[k]
    assert codec.canonical(other) == codec.canonical(value)


def test_canonical_digest_hashes_the_canonical_bytes_piece_by_piece():
    import hashlib

    value = {"z": [1, -300, 2**40, "é" * 40, b"\x00" * 300], "a": {"k": None, "b": True},
             "n": 1.5, "s": "x" * 70000}
    want = hashlib.sha256(codec.canonical(value)).digest()
    assert codec.canonical_digest(value, hashlib.sha256()).digest() == want
    assert minipack.canonical_digest(value, hashlib.sha256()).digest() == want


def test_codec_rejects_bad_input():
    for bad in (b"", b"\xc1", b"\xd9\x05ab", b"\x92\x01", b"\x01\x02", b"\xa2\xff\xfe",
                b"\xdd\xff\xff\xff\xff", b"\xd4\x01\x02", b"\x91" * 40 + b"\x00"):
        corekit.raises(codec.CodecError, codec.unpackb, bad)
        corekit.raises(codec.CodecError, minipack.unpackb, bad)


def test_read_text_names_what_is_wrong_with_the_file():
    from firmware_shim.files import FileReadError, FileSystem, read_text

    d = corekit.tmpdir("readtext")
    fs = FileSystem()
    with open(d + "/ok.json", "wb") as f:
        f.write("{\"é\": 1}".encode())
    with open(d + "/bad.json", "wb") as f:
        f.write(b"\xff\xfe")
    assert read_text(fs, d + "/ok.json") == "{\"é\": 1}"
    assert "does not exist" in str(corekit.raises(FileReadError, read_text, fs, d + "/none"))
    assert "not UTF-8" in str(corekit.raises(FileReadError, read_text, fs, d + "/bad.json"))


def test_random_bytes_raises_without_an_os_source_and_jitter_still_works():
    from firmware_shim import crypto

    assert len(crypto.random_bytes(16)) == 16
    saved = crypto._urandom
    crypto._urandom = None  # a port without os.urandom
    try:
        try:
            crypto.random_bytes(16)
        except crypto.NoRandomSource:
            pass
        else:
            raise AssertionError("random_bytes fell back to a non-cryptographic source")
        assert len(crypto.jitter_bytes(2)) == 2  # reconnect jitter needs no key-grade bytes
    finally:
        crypto._urandom = saved
