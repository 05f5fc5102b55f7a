"""The canonical codec: one byte form per value, strict decode, typed errors only."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import DEPTH_MAX, INT_MAX, INT_MIN, decode, decode_map, encode
from ledger.errors import CodecError

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=INT_MIN, max_value=INT_MAX)
    | st.binary(max_size=64)
    | st.text(max_size=32)
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=40,
)


@settings(deadline=None)
@given(values)
def test_every_allowed_value_round_trips_to_the_same_bytes(value: Any) -> None:
    data = encode(value)
    decoded = decode(data)
    assert decoded == value
    assert encode(decoded) == data


@settings(deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.integers(0, 9), min_size=2, max_size=8))
def test_map_encoding_does_not_depend_on_insertion_order(value: dict[str, int]) -> None:
    reversed_order = dict(reversed(list(value.items())))
    assert encode(reversed_order) == encode(value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_random_bytes_gives_a_value_or_a_codec_error(data: bytes) -> None:
    try:
        value = decode(data)
    except CodecError:
        return
    assert encode(value) == data  # whatever decodes is canonical


def test_tuples_encode_like_lists_and_bytearrays_like_bytes() -> None:
    assert encode((1, 2)) == encode([1, 2])
    assert encode(bytearray(b"ab")) == encode(b"ab")


@pytest.mark.parametrize(
    "value",
    [1.5, {1: "int key"}, {b"k": 1}, INT_MAX + 1, INT_MIN - 1, object(), {"a": [1.0]},
     {1, 2}],
)
def test_encode_refuses_values_without_a_canonical_form(value: Any) -> None:
    with pytest.raises(CodecError):
        encode(value)


def test_encode_refuses_values_nested_too_deeply() -> None:
    nested: Any = 0
    for _ in range(DEPTH_MAX + 2):
        nested = [nested]
    with pytest.raises(CodecError, match="nested"):
        encode(nested)


NON_CANONICAL = {
    "unsorted map": b"\x82\xa1b\x01\xa1a\x02",
    "int in a wider form than needed": b"\xcd\x00\x01",
    "str8 for a short string": b"\xd9\x01a",
    "float": msgpack.packb(1.5),
    "ext type": msgpack.packb(msgpack.ExtType(1, b"x")),
    "trailing bytes": b"\x01\x02",
    "truncated": b"\x92\x01",
    "int map key": b"\x81\x01\x01",
    "invalid utf-8": b"\xa2\xff\xfe",
    "reserved byte": b"\xc1",
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(NON_CANONICAL))
def test_decode_refuses_non_canonical_or_invalid_bytes(name: str) -> None:
    with pytest.raises(CodecError):
        decode(NON_CANONICAL[name])


def test_decode_refuses_oversize_input_and_non_bytes() -> None:
    with pytest.raises(CodecError, match="exceeds"):
        decode(encode(b"x" * 100), max_bytes=50)
    with pytest.raises(CodecError):
        decode("text")  # type: ignore[arg-type]


def test_decode_map_refuses_non_maps() -> None:
    assert decode_map(encode({"a": 1})) == {"a": 1}
    with pytest.raises(CodecError, match="map"):
        decode_map(encode([1]))


def _reference_decode(data: bytes) -> Any:
    """The codec's rule stated directly: unpack, then refuse unless encode gives the input."""
    value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    if encode(value) != data:
        raise CodecError("not canonical")
    return value


msgpack_values = st.recursive(
    scalars | st.floats(allow_nan=False, allow_infinity=False, width=32),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=6) | st.binary(max_size=3) | st.integers(0, 3), children,
                      max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(msgpack_values, st.booleans())
def test_decode_accepts_exactly_what_re_encodes_to_the_same_bytes(value: Any,
                                                                  wide: bool) -> None:
    # Plain msgpack of arbitrary values: unsorted maps, floats, bytes and int keys, and
    # (wide) str8/bin headers where a shorter form exists.
    data = msgpack.packb(value, use_bin_type=True, use_single_float=wide)
    try:
        expected = _reference_decode(data)
    except (CodecError, ValueError, TypeError):
        with pytest.raises(CodecError):
            decode(data)
        return
    assert decode(data) == expected


def test_decode_refuses_timestamps_and_depth_at_the_limit() -> None:
    with pytest.raises(CodecError):
        decode(msgpack.packb(msgpack.Timestamp(1, 0)))
    nested: Any = 0
    for _ in range(DEPTH_MAX + 1):
        nested = [nested]
    with pytest.raises(CodecError, match="nested"):
        decode(msgpack.packb(nested))
    assert decode(msgpack.packb(nested[0])) == nested[0]  # DEPTH_MAX levels is fine


@settings(deadline=None)
@given(st.integers(min_value=INT_MIN, max_value=INT_MAX))
def test_integers_encode_to_their_shortest_msgpack_form(value: int) -> None:
    assert encode(value) == msgpack.packb(value)
    assert decode(encode(value)) == value
