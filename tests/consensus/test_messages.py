"""Wire messages: canonical round trips, strict decoding with typed errors, size bounds,
and domain-separated signatures (a COMMIT signs exactly the ledger's commit vote bytes)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.messages import (
    GENESIS_PROOF,
    NULL_DIGEST,
    PAYLOAD_BYTES_MAX,
    Checkpoint,
    CheckpointProof,
    Commit,
    Message,
    MessageError,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    ViewChange,
    decode_message,
    encode_message,
    signed_bytes,
)
from ledger.block import commit_vote_bytes
from ledger.codec import encode
from ledger.crypto import sha256

D1, D2 = sha256(b"one"), sha256(b"two")
SIG = bytes(range(64))


def samples() -> list[Message]:
    pp = PrePrepare(3, 7, D1, b"payload", 3, SIG)
    prepares = (Prepare(3, 7, D1, 1, SIG), Prepare(3, 7, D1, 2, SIG))
    proof = CheckpointProof(4, D2, tuple(Checkpoint(4, D2, i, SIG) for i in range(3)))
    vc = ViewChange(4, proof, (PreparedCert(pp, prepares),), 1, SIG)
    nv = NewView(4, (vc.stripped(),), (PrePrepare(4, 7, D1, b"payload", 0, SIG),), 0, SIG)
    return [pp, prepares[0], Commit(3, 7, D1, 2, SIG), Checkpoint(4, D2, 1, SIG), vc, nv,
            ViewChange(1, GENESIS_PROOF, (), 0, SIG)]


@pytest.mark.parametrize("message", samples(), ids=lambda m: m.kind)
def test_every_message_type_round_trips_through_its_canonical_bytes(message: Message) -> None:
    data = encode_message(message)
    decoded = decode_message(data)
    assert encode_message(decoded) == data
    if not isinstance(message, NewView):  # a NEW-VIEW carries its view changes stripped
        assert decoded == message


def test_commit_signs_exactly_the_ledger_commit_vote_bytes() -> None:
    commit = Commit(5, 9, D1, 0, SIG)
    assert signed_bytes(commit, "city") == commit_vote_bytes("city", 5, 9, D1)


def test_phases_sign_different_bytes_for_the_same_view_seq_and_digest() -> None:
    votes = [PrePrepare(1, 2, D1, b"x", 1, SIG), Prepare(1, 2, D1, 0, SIG), Commit(1, 2, D1, 0, SIG)]
    assert len({signed_bytes(v, "city") for v in votes}) == 3
    assert signed_bytes(votes[1], "city") != signed_bytes(votes[1], "other-city")


def test_view_change_signature_does_not_cover_payloads_so_it_survives_stripping() -> None:
    vc = samples()[4]
    assert isinstance(vc, ViewChange)
    assert signed_bytes(vc, "c") == signed_bytes(vc.stripped(), "c")
    assert vc.has_payloads() and not vc.stripped().has_payloads()


@pytest.mark.parametrize(("message", "reason"), [
    (Prepare(1, 2, b"short", 0, SIG), "digest"),
    (Prepare(1, 0, D1, 0, SIG), "seq starts at 1"),
    (Prepare(-1, 2, D1, 0, SIG), "view"),
    (Commit(1, 2, D1, 5000, SIG), "sender"),
    (Commit(1, 2, D1, 0, b"sig"), "signature"),
    (PrePrepare(1, 2, NULL_DIGEST, b"not empty", 0, SIG), "null digest"),
    (PrePrepare(1, 2, D1, b"", 0, SIG), "null digest"),
    (PrePrepare(1, 2, D1, b"x" * (PAYLOAD_BYTES_MAX + 1), 0, SIG), "payload"),
    (Checkpoint(0, D1, 0, SIG), "checkpoints start"),
    (ViewChange(0, GENESIS_PROOF, (), 0, SIG), "view 1 or later"),
])
def test_validate_names_the_reason_a_message_is_malformed(message: Message, reason: str) -> None:
    problem = message.validate()
    assert problem is not None and reason in problem
    with pytest.raises(MessageError):
        decode_message(encode(message.to_map()))


def test_view_change_with_a_certificate_at_or_below_its_checkpoint_is_malformed() -> None:
    vc = samples()[4]
    assert isinstance(vc, ViewChange)
    low = replace(vc, stable=CheckpointProof(8, D2, ()))
    assert "outside" in (low.validate() or "")


def test_new_view_reproposals_must_carry_payloads() -> None:
    nv = samples()[5]
    assert isinstance(nv, NewView)
    stripped = replace(nv, pre_prepares=tuple(pp.stripped() for pp in nv.pre_prepares))
    assert stripped.validate() is not None


@pytest.mark.parametrize("data", [
    b"", b"\xc1", encode([1, 2]), encode({"type": "gossip"}),
    encode({"type": "prepare", "view": 1, "seq": 1, "digest": D1, "sender": 0}),
    encode({"type": "prepare", "view": 1, "seq": 1, "digest": D1, "sender": 0, "sig": SIG, "x": 1}),
    encode({"type": "prepare", "view": "1", "seq": 1, "digest": D1, "sender": 0, "sig": SIG}),
    encode({"type": "prepare", "view": True, "seq": 1, "digest": D1, "sender": 0, "sig": SIG}),
    encode_message(Prepare(1, 1, D1, 0, SIG)) + b"\x00",
])
def test_malformed_bytes_raise_a_typed_message_error(data: bytes) -> None:
    with pytest.raises(MessageError):
        decode_message(data)


def test_oversized_frames_are_refused_before_decoding() -> None:
    data = encode_message(PrePrepare(1, 1, D1, b"x" * 1000, 0, SIG))
    with pytest.raises(MessageError):
        decode_message(data, max_bytes=500)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_raises_anything_but_message_error(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        decode_message(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(samples()), st.integers(0, 2000), st.integers(0, 255))
def test_flipping_a_byte_of_a_valid_message_gives_a_valid_message_or_a_message_error(
        message: Message, position: int, value: int) -> None:
    data = bytearray(encode_message(message))
    data[position % len(data)] = value
    try:
        decoded = decode_message(bytes(data))
    except MessageError:
        return
    assert decoded.validate() is None
