"""The transaction envelope: sign, decode+verify, and refusal of every altered tx."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.codec import decode_map, encode
from ledger.crypto import KeyPair, sha256, signing_payload
from ledger.errors import CodecError
from ledger.tx import TX_BYTES_MAX, Tx, TxError, decode_and_verify, decode_tx, sign_tx

CHAIN = "test-city"
KEY = KeyPair(bytes(range(32)))

payload_values = st.recursive(
    st.none() | st.booleans() | st.integers(0, 2**40) | st.binary(max_size=20)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=10,
)
payloads = st.dictionaries(st.text(max_size=8), payload_values, max_size=4)
names = st.from_regex(r"\A[a-z][a-z0-9_]{0,31}\Z")


def sample_tx(**payload: Any) -> Tx:
    return sign_tx(KEY, CHAIN, "tokens", "transfer", 3, payload or {"to": b"\x01" * 20,
                                                                   "amount": 5})


@settings(deadline=None)
@given(names, names, st.integers(0, 2**63 - 1), payloads)
def test_signed_tx_decodes_and_verifies_to_the_same_fields(
    family: str, op: str, nonce: int, payload: dict[str, Any]
) -> None:
    tx = sign_tx(KEY, CHAIN, family, op, nonce, payload)
    verified = decode_and_verify(tx.raw, CHAIN)
    assert isinstance(verified, Tx)
    assert verified == tx
    assert verified.hash == sha256(tx.raw)
    assert verified.sender_address == KEY.address


def test_the_signature_covers_the_unsigned_body_under_the_tx_domain() -> None:
    tx = sample_tx()
    wire = decode_map(tx.raw)
    assert wire.pop("sig") == tx.signature
    assert wire == tx.unsigned_body()
    expected = KEY.sign(signing_payload("tx", CHAIN, wire))
    assert tx.signature == expected


def test_flipping_any_single_bit_of_a_tx_makes_it_fail() -> None:
    raw = sample_tx().raw
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert isinstance(decode_and_verify(bytes(flipped), CHAIN), TxError), bit


@settings(max_examples=60, deadline=None)
@given(payloads, st.data())
def test_flipping_a_random_bit_of_any_tx_makes_it_fail(
    payload: dict[str, Any], data: st.DataObject
) -> None:
    raw = sign_tx(KEY, CHAIN, "identity", "register", 0, payload).raw
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    assert isinstance(decode_and_verify(bytes(flipped), CHAIN), TxError)


def test_a_tx_for_another_chain_is_refused() -> None:
    result = decode_and_verify(sample_tx().raw, "other-city")
    assert isinstance(result, TxError) and result.code == "wrong_chain"


def test_a_tx_signed_by_another_key_is_refused_as_bad_signature() -> None:
    wire = decode_map(sample_tx().raw)
    wire["sender"] = KeyPair(bytes(32)).public_key
    result = decode_and_verify(encode(wire), CHAIN)
    assert isinstance(result, TxError) and result.code == "bad_signature"


@pytest.mark.parametrize(
    ("field", "value"),
    [("family", "Tokens"), ("family", ""), ("op", "1x"), ("op", 5), ("sender", b"\x00" * 31),
     ("nonce", -1), ("nonce", True), ("nonce", 2**63), ("payload", [1]), ("sig", b"\x00" * 63),
     ("chain_id", 1), ("family", [1]), ("op", {"a": 1}), ("family", "tokens!"),
     ("sender", "ab" * 16)],
)
def test_malformed_fields_are_refused_with_tx_malformed(field: str, value: Any) -> None:
    wire = decode_map(sample_tx().raw)
    wire[field] = value
    result = decode_tx(encode(wire))
    assert isinstance(result, TxError) and result.code == "tx_malformed"


def test_missing_or_extra_fields_and_non_maps_are_refused() -> None:
    wire = decode_map(sample_tx().raw)
    del wire["nonce"]
    for data in (encode(wire), encode({**decode_map(sample_tx().raw), "x": 1}), encode([1]),
                 b"\xc1", b""):
        result = decode_tx(data)
        assert isinstance(result, TxError) and result.code == "tx_malformed"


def test_oversize_txs_are_refused_at_sign_and_decode_time() -> None:
    result = decode_tx(b"\x00" * (TX_BYTES_MAX + 1))
    assert isinstance(result, TxError) and result.code == "tx_too_large"
    with pytest.raises(CodecError, match="exceeds"):
        sample_tx(blob=b"x" * TX_BYTES_MAX)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_random_bytes_gives_a_tx_error_never_an_exception(data: bytes) -> None:
    assert isinstance(decode_and_verify(data, CHAIN), TxError)


@given(
    payload=st.dictionaries(st.text(min_size=1, max_size=20),
                            st.integers(min_value=0, max_value=2**64 - 1) | st.binary(max_size=300)
                            | st.text(max_size=50), max_size=6),
    chain=st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True),
    nonce=st.integers(min_value=0, max_value=2**63 - 1),
)
@settings(max_examples=100, deadline=None)
def test_signed_message_cut_from_wire_bytes_equals_reencoded_body(
        payload: dict[str, object], chain: str, nonce: int) -> None:
    from ledger.tx import signed_message

    tx = sign_tx(KEY, chain, "tokens", "transfer", nonce, payload)
    assert signed_message(tx) == signing_payload("tx", chain, tx.unsigned_body())


def test_a_good_name_seen_before_does_not_let_a_bad_one_through() -> None:
    assert isinstance(decode_tx(sample_tx().raw), Tx)  # "tokens" and "transfer" now known
    wire = decode_map(sample_tx().raw)
    for field in ("family", "op"):
        for bad in ("Tokens", "tokens " , "transfer" * 5, b"tokens"):
            result = decode_tx(encode({**wire, field: bad}))
            assert isinstance(result, TxError) and result.code == "tx_malformed", (field, bad)


def test_a_given_hash_is_used_as_the_tx_hash() -> None:
    tx = sample_tx()
    again = decode_and_verify(tx.raw, CHAIN, sha256(tx.raw))
    assert isinstance(again, Tx) and again == tx and again.hash == tx.hash
