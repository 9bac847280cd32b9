"""codec.canonical on CPython (msgpack over a key-sorted copy) must give the same
bytes as minipack.canonical, which boards use: signatures cross platforms."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_shim import codec, minipack

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=40))
keys = st.text(max_size=12) | st.integers(-1000, 1000) | st.binary(max_size=6)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(keys, inner, max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(values)
def test_canonical_bytes_match_the_pure_codec(value):
    assert codec.canonical(value) == minipack.canonical(value)


def test_canonical_ignores_insertion_order_and_refuses_what_it_cannot_encode():
    a = {"b": 1, "a": {"y": [1, 2], "x": b"\x00"}, 3: None}
    b = {3: None, "a": {"x": b"\x00", "y": [1, 2]}, "b": 1}
    assert codec.canonical(a) == codec.canonical(b) == minipack.canonical(a)
    with pytest.raises(codec.CodecError):
        codec.canonical({"x": object()})
    with pytest.raises(codec.CodecError):
        codec.canonical(2**64)
