"""firmware_shim.minipack (the MicroPython codec) checked against the msgpack package.

Both ways over random values: what minipack packs, msgpack reads back (and the
bytes are the very same bytes), and what msgpack packs, minipack reads back.
On hostile input minipack raises CodecError and nothing else.
"""
import math
import struct

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_shim import codec, minipack

INT64 = st.integers(-(2**63), 2**64 - 1)
SCALARS = st.one_of(
    st.none(), st.booleans(), INT64, st.integers(-200, 300),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40), st.binary(max_size=40),
)
KEYS = st.one_of(st.text(max_size=12), INT64, st.binary(max_size=8))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=18),  # 16+ elements: array16
        st.dictionaries(KEYS, inner, max_size=18),  # 16+ pairs: map16
    ),
    max_leaves=25,
)


def same(a, b):
    """Equal, of the same type all the way down, with nan == nan and 0.0 != -0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            if not (same(ka, kb) and same(va, vb)):
                return False
        return True
    return a == b


def ref_pack(value):
    return msgpack.packb(value, use_bin_type=True)


def ref_unpack(data):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


@settings(max_examples=120, deadline=None)
@given(VALUES)
def test_minipack_bytes_are_msgpack_bytes_and_read_back(value):
    packed = minipack.packb(value)
    assert packed == ref_pack(value)
    assert same(ref_unpack(packed), value)
    assert same(minipack.unpackb(packed), value)


@settings(max_examples=120, deadline=None)
@given(VALUES)
def test_minipack_reads_what_msgpack_writes(value):
    assert same(minipack.unpackb(ref_pack(value)), value)
    try:  # and msgpack's single-precision floats, where the value fits them
        single = msgpack.packb(value, use_bin_type=True, use_single_float=True)
    except OverflowError:
        return
    assert same(minipack.unpackb(single), ref_unpack(single))


def test_long_str_bin_array_and_map_lengths():
    for n in (31, 32, 255, 256, 65535, 65536):
        for value in ("x" * n, b"y" * n, list(range(n % 300)), {str(i): i for i in range(n % 300)}):
            packed = minipack.packb(value)
            assert packed == ref_pack(value)
            assert minipack.unpackb(ref_pack(value)) == value
    big = list(range(70000))
    assert minipack.unpackb(ref_pack(big)) == big and minipack.packb(big) == ref_pack(big)


def _unordered_same(a, b):
    if isinstance(a, dict) and type(b) is dict:
        return len(a) == len(b) and all(k in b and _unordered_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and type(b) is list:
        return len(a) == len(b) and all(_unordered_same(x, y) for x, y in zip(a, b))
    return same(a, b)


def _reversed_maps(value):
    if isinstance(value, dict):
        return {k: _reversed_maps(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_maps(v) for v in value]
    return value


@settings(max_examples=100, deadline=None)
@given(VALUES)
def test_canonical_is_msgpack_that_ignores_map_order(value):
    data = minipack.canonical(value)
    assert _unordered_same(ref_unpack(data), value)
    assert minipack.canonical(_reversed_maps(value)) == data


_WIDTHS = [(0xCC, ">B"), (0xCD, ">H"), (0xCE, ">I"), (0xCF, ">Q"),
           (0xD0, ">b"), (0xD1, ">h"), (0xD2, ">i"), (0xD3, ">q")]


@settings(max_examples=300, deadline=None)
@given(INT64)
def test_every_int_width_that_fits_decodes_alike(value):
    for code, fmt in _WIDTHS:
        try:
            data = bytes((code,)) + struct.pack(fmt, value)
        except struct.error:
            continue  # does not fit this width
        assert minipack.unpackb(data) == ref_unpack(data) == value


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80))
def test_random_bytes_raise_only_codec_error(data):
    _decode_both(data)


@settings(max_examples=200, deadline=None)
@given(VALUES, st.data())
def test_damaged_encodings_raise_only_codec_error(value, data):
    packed = bytearray(minipack.packb(value))
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if how == "cut" or not packed:
            packed = packed[:data.draw(st.integers(0, len(packed)))]
        elif how == "flip":
            i = data.draw(st.integers(0, len(packed) - 1))
            packed[i] ^= data.draw(st.integers(1, 255))
        else:
            i = data.draw(st.integers(0, len(packed)))
            packed[i:i] = bytes((data.draw(st.integers(0, 255)),))
    _decode_both(bytes(packed))


def _decode_both(data):
    """minipack and codec raise CodecError or agree with msgpack where both accept."""
    results = []
    for decode in (minipack.unpackb, codec.unpackb):
        try:
            results.append(decode(data))
        except codec.CodecError:
            results.append(codec.CodecError)
    try:
        ref = ref_unpack(data)
    except Exception:  # noqa: BLE001 - msgpack raises many types for bad input
        ref = codec.CodecError
    if results[0] is not codec.CodecError and ref is not codec.CodecError:
        assert same(results[0], ref)
    if results[0] is not codec.CodecError and results[1] is not codec.CodecError:
        assert same(results[0], results[1])


def test_out_of_range_and_unsupported_values_are_codec_errors():
    for bad in (2**64, -(2**63) - 1, {"x": object()}, [1, {2, 3}]):
        for pack in (minipack.packb, codec.packb):
            try:
                pack(bad)
            except codec.CodecError:
                continue
            raise AssertionError("%r packed %r" % (pack, bad))


def test_ext_types_are_refused_by_both_decoders():
    data = msgpack.packb(msgpack.ExtType(5, b"abc"))
    for decode in (minipack.unpackb, codec.unpackb):
        try:
            decode(data)
        except codec.CodecError:
            continue
        raise AssertionError("ext type accepted")



def test_timestamps_and_deep_nesting_are_refused_by_both_decoders():
    """codec.unpackb skips its type walk for small bytes with few map/array/ext heads:
    the values that walk refuses (a timestamp, nesting past 32) still fail, and nesting
    of 32 containers still decodes."""
    import datetime

    stamps = [msgpack.Timestamp(1, 0), msgpack.Timestamp(2**33, 0), msgpack.Timestamp(1, 5),
              msgpack.Timestamp.from_datetime(datetime.datetime(1960, 1, 1,
                                                                tzinfo=datetime.timezone.utc))]
    for stamp in stamps:
        for value in (stamp, [stamp], {"at": stamp}, {stamp: 1}):
            data = msgpack.packb(value, datetime=False)
            for decode in (minipack.unpackb, codec.unpackb):
                try:
                    decode(data)
                except codec.CodecError:
                    continue
                raise AssertionError("timestamp accepted: %r" % data)
    for depth, ok in ((31, True), (32, False)):  # 32 nested containers, or 33
        for inner in ([1], {"k": 1}):
            value = inner
            for i in range(depth):
                value = [value] if i % 2 else {"k": value}
            data = msgpack.packb(value)
            for decode in (minipack.unpackb, codec.unpackb):
                try:
                    got = decode(data)
                except codec.CodecError:
                    got = codec.CodecError
                assert (got is not codec.CodecError) == ok, (depth, inner, decode)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.binary(max_size=300))
def test_shim_hmac_is_the_standard_hmac_for_any_key(key, msg):
    """The CPython path (keyed states kept a key, pads by translate) against hmac itself."""
    import hashlib
    import hmac

    from firmware_shim import crypto

    want = hmac.new(key, msg, hashlib.sha256).digest()
    assert crypto.hmac_sha256(key, msg) == want
    assert crypto.hmac_sha256(key, msg) == want  # from the kept states
    assert crypto.hmac_sha256_pure(key, msg) == want


def test_shim_hmac_keyed_states_stay_bounded_and_right_after_clearing():
    import hashlib
    import hmac

    from firmware_shim import crypto

    crypto._keyed.update(dict.fromkeys(range(crypto._KEYED_MAX - len(crypto._keyed)), None))
    try:  # full to the bound: the next new key clears it and is keyed afresh
        assert crypto.hmac_sha256(b"k" * 33, b"m") == hmac.new(b"k" * 33, b"m",
                                                               hashlib.sha256).digest()
        assert len(crypto._keyed) == 1
    finally:
        crypto._keyed.clear()
