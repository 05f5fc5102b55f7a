"""Headers, blocks, commit certificates, tx inclusion proofs and quorum arithmetic."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.block import (
    HEADER_FIELDS,
    TXS_MAX,
    Block,
    BlockError,
    CommitCertificate,
    Header,
    commit_vote_bytes,
    verify_receipt_inclusion,
    verify_tx_inclusion,
)
from ledger.codec import encode
from ledger.crypto import KeyPair, sha256, signing_payload
from ledger.merkle import merkle_proof
from ledger.quorum import fault_tolerance, quorum_size
from tests.ledger.chainmaker import (
    CHAIN_ID,
    GENESIS_HASH,
    VALIDATOR_KEYS,
    VALIDATORS,
    make_txs,
    next_block,
    sign_certificate,
)

hashes = st.binary(min_size=32, max_size=32)
uint63 = st.integers(min_value=0, max_value=2**63 - 1)
chain_ids = st.from_regex(r"\A[a-z0-9][a-z0-9_.-]{0,63}\Z")


@st.composite
def headers(draw: st.DrawFn) -> Header:
    return Header(
        chain_id=draw(chain_ids), height=draw(st.integers(1, 2**63 - 1)),
        prev_hash=draw(hashes), timestamp_ms=draw(uint63), proposer=draw(hashes),
        view=draw(uint63), tx_root=draw(hashes), state_root=draw(hashes),
        receipts_root=draw(hashes),
    )


def sample_header(**changes: Any) -> Header:
    fields: dict[str, Any] = {
        "chain_id": CHAIN_ID, "height": 1, "prev_hash": GENESIS_HASH,
        "timestamp_ms": 1_800_000_000_000, "proposer": VALIDATORS[0], "view": 0,
        "tx_root": sha256(b"t"), "state_root": sha256(b"s"), "receipts_root": sha256(b"r"),
    }
    fields.update(changes)
    return Header(**fields)


# -- header ---------------------------------------------------------------------------


@settings(deadline=None)
@given(headers())
def test_header_round_trips_through_canonical_bytes(header: Header) -> None:
    data = header.encode()
    assert data == encode(header.to_map())
    decoded = Header.decode(data)
    assert decoded == header
    assert decoded.hash == header.hash == sha256(data)


@pytest.mark.parametrize("name", HEADER_FIELDS)
def test_changing_any_header_field_changes_the_hash(name: str) -> None:
    header = sample_header()
    value = getattr(header, name)
    if isinstance(value, bytes):
        changed = bytes([value[0] ^ 1]) + value[1:]
    elif isinstance(value, str):
        changed = value + "x"
    else:
        changed = value + 1
    assert sample_header(**{name: changed}).hash != header.hash


BAD_HEADER_VALUES: list[tuple[str, Any]] = [
    ("chain_id", ""), ("chain_id", "Upper"), ("chain_id", 7), ("chain_id", "a" * 65),
    ("height", 0), ("height", -1), ("height", True), ("height", 2**63), ("height", "1"),
    ("prev_hash", b"\x00" * 31), ("prev_hash", b"\x00" * 33), ("prev_hash", "00" * 32),
    ("timestamp_ms", -5), ("timestamp_ms", None),
    ("proposer", b""), ("proposer", 5),
    ("view", -1), ("view", False),
    ("tx_root", b"\x00" * 16), ("state_root", None), ("receipts_root", [b"\x00" * 32]),
]


@pytest.mark.parametrize(("name", "value"), BAD_HEADER_VALUES)
def test_header_decode_rejects_every_bad_field_value(name: str, value: Any) -> None:
    fields = sample_header().to_map()
    fields[name] = value
    with pytest.raises(BlockError):
        Header.decode(encode(fields))
    with pytest.raises(BlockError):
        Header(**fields)


@pytest.mark.parametrize("name", HEADER_FIELDS)
def test_header_decode_rejects_a_missing_field(name: str) -> None:
    fields = sample_header().to_map()
    del fields[name]
    with pytest.raises(BlockError, match="missing"):
        Header.decode(encode(fields))


def test_header_decode_rejects_an_extra_field_and_non_map_input() -> None:
    fields = {**sample_header().to_map(), "extra": 1}
    with pytest.raises(BlockError, match="unexpected"):
        Header.decode(encode(fields))
    with pytest.raises(BlockError):
        Header.decode(encode([1, 2, 3]))
    with pytest.raises(BlockError):
        Header.decode(sample_header().encode() + b"\x00")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decoding_random_bytes_gives_a_value_or_a_block_error(data: bytes) -> None:
    # BlockError, not just any CodecError: callers that refuse a peer's bad block catch
    # only BlockError (a bare CodecError once escaped a proposal's digest check).
    for kind in (Header, Block, CommitCertificate):
        try:
            value = kind.decode(data)
        except BlockError:
            continue
        assert isinstance(value, kind) and value.encode() == data


# -- block ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_block_round_trips_and_its_hash_is_the_header_hash(count: int) -> None:
    block, _ = next_block(1, GENESIS_HASH, make_txs(1, count))
    decoded = Block.decode(block.encode())
    assert decoded == block
    assert decoded.hash == block.header.hash
    assert block.encode() == encode({"header": block.header.to_map(), "txs": list(block.txs)})
    assert block.check_tx_root() is None


def test_check_tx_root_reports_txs_that_do_not_match_the_header() -> None:
    block, _ = next_block(1, GENESIS_HASH, make_txs(1, 3))
    swapped = Block(block.header, (block.txs[1], block.txs[0], block.txs[2]))
    assert swapped.check_tx_root() is not None
    shorter = Block(block.header, block.txs[:2])
    assert shorter.check_tx_root() is not None
    # A remembered pass is per block object: a checked block vouches for no other, and a
    # failed check is not remembered.
    assert Block.decode(block.encode()).check_tx_root() is None
    assert Block(block.header, swapped.txs).check_tx_root() is not None
    assert swapped.check_tx_root() is not None


def test_block_rejects_duplicate_txs_too_many_txs_and_bad_tx_entries() -> None:
    header = sample_header()
    tx = make_txs(1, 1)[0]
    with pytest.raises(BlockError, match="more than once"):
        Block(header, (tx, tx))
    with pytest.raises(BlockError, match="exceed"):
        Block(header, tuple(i.to_bytes(4, "big") for i in range(TXS_MAX + 1)))
    with pytest.raises(BlockError):
        Block(header, (b"",))
    with pytest.raises(BlockError):
        Block(header, (b"x" * (64 * 1024 + 1),))
    with pytest.raises(BlockError):
        Block(header, ("not bytes",))  # type: ignore[arg-type]


def test_block_rejects_more_than_the_byte_limit() -> None:
    header = sample_header()
    txs = tuple(i.to_bytes(4, "big") * (16 * 1024 - 1) for i in range(80))  # ~5 MiB
    with pytest.raises(BlockError, match="exceeds"):
        Block(header, txs)


@pytest.mark.parametrize(
    "fields",
    [
        {"header": {}, "txs": []},
        {"txs": []},
        {"header": "h", "txs": []},
        {"header": None, "txs": [b"x"]},
        {"header": "HEADER", "txs": "nope"},
        {"header": "HEADER", "txs": [1]},
        {"header": "HEADER", "txs": [], "extra": 0},
    ],
)
def test_block_decode_rejects_malformed_maps(fields: dict[str, Any]) -> None:
    if fields.get("header") == "HEADER":
        fields["header"] = sample_header().to_map()
    with pytest.raises(BlockError):
        Block.decode(encode(fields))


@pytest.mark.parametrize("count", range(1, 10))
def test_every_tx_has_an_inclusion_proof_against_the_header(count: int) -> None:
    block, receipts = next_block(1, GENESIS_HASH, make_txs(1, count))
    for index, tx in enumerate(block.txs):
        proof = block.tx_proof(index)
        assert verify_tx_inclusion(block.header, tx, index, count, proof)
        assert not verify_tx_inclusion(block.header, tx + b"x", index, count, proof)
        if count > 1:
            assert not verify_tx_inclusion(block.header, tx, (index + 1) % count, count, proof)
        receipt_proof = merkle_proof(receipts, index)
        assert verify_receipt_inclusion(block.header, receipts[index], index, count,
                                        receipt_proof)
    with pytest.raises(BlockError):
        block.tx_proof(count)


# -- commit certificate -------------------------------------------------------------


def test_commit_vote_bytes_are_the_domain_separated_signing_payload() -> None:
    block_hash = sha256(b"b")
    assert commit_vote_bytes("c", 2, 7, block_hash) == signing_payload(
        "commit", "c", [2, 7, block_hash])


def test_certificate_round_trips_and_keeps_signatures_sorted() -> None:
    block_hash = sha256(b"block")
    cert = sign_certificate(block_hash, 5, 1, list(reversed(VALIDATOR_KEYS)))
    assert [key for key, _ in cert.signatures] == sorted(VALIDATORS)
    assert CommitCertificate.decode(cert.encode()) == cert
    assert cert.verify(CHAIN_ID, VALIDATORS) is None


@settings(deadline=None)
@given(st.integers(1, 2**63 - 1), uint63, hashes,
       st.lists(st.tuples(hashes, st.binary(min_size=64, max_size=64)), min_size=1,
                max_size=12, unique_by=lambda pair: pair[0]))
def test_any_well_formed_certificate_round_trips(
    seq: int, view: int, block_hash: bytes, signatures: list[tuple[bytes, bytes]]
) -> None:
    cert = CommitCertificate(seq, view, block_hash, tuple(signatures))
    assert CommitCertificate.decode(cert.encode()) == cert
    assert list(cert.signatures) == sorted(signatures)


@settings(max_examples=50, deadline=None)
@given(headers(), st.lists(st.binary(min_size=1, max_size=200), max_size=20, unique=True))
def test_any_well_formed_block_round_trips(header: Header, txs: list[bytes]) -> None:
    block = Block(header, tuple(txs))
    decoded = Block.decode(block.encode())
    assert decoded == block and decoded.hash == header.hash


def test_certificate_decode_rejects_unsorted_signatures() -> None:
    cert = sign_certificate(sha256(b"block"), 5, 1, VALIDATOR_KEYS[:3])
    fields = cert.to_map()
    fields["signatures"] = list(reversed(fields["signatures"]))
    with pytest.raises(BlockError, match="sorted"):
        CommitCertificate.decode(encode(fields))


@pytest.mark.parametrize(
    ("name", "value"),
    [("seq", 0), ("seq", -1), ("view", -1), ("view", True), ("block_hash", b"\x00" * 31),
     ("signatures", []), ("signatures", [[b"\x00" * 32]]),
     ("signatures", [[b"\x00" * 31, b"\x00" * 64]]), ("signatures", [[b"\x00" * 32, b"\x00"]]),
     ("signatures", "x"), ("signatures", [[b"\x00" * 32, b"\x00" * 64]] * 2)],
)
def test_certificate_decode_rejects_every_bad_field(name: str, value: Any) -> None:
    fields = sign_certificate(sha256(b"block"), 5, 1, VALIDATOR_KEYS[:3]).to_map()
    fields[name] = value
    with pytest.raises(BlockError):
        CommitCertificate.decode(encode(fields))


def test_certificate_below_quorum_is_refused_with_a_reason() -> None:
    cert = sign_certificate(sha256(b"block"), 5, 1, VALIDATOR_KEYS[:2])
    reason = cert.verify(CHAIN_ID, VALIDATORS)
    assert reason is not None and "quorum" in reason


def test_certificate_from_a_non_validator_is_refused() -> None:
    outsider = KeyPair(b"\x77" * 32)
    cert = sign_certificate(sha256(b"block"), 5, 1, [*VALIDATOR_KEYS[:2], outsider])
    reason = cert.verify(CHAIN_ID, VALIDATORS)
    assert reason is not None and "not a validator" in reason


def test_certificate_with_one_forged_signature_is_refused() -> None:
    cert = sign_certificate(sha256(b"block"), 5, 1, VALIDATOR_KEYS[:3])
    key, sig = cert.signatures[1]
    forged = dataclasses.replace(
        cert, signatures=(cert.signatures[0], (key, bytes([sig[0] ^ 1]) + sig[1:]),
                          cert.signatures[2]))
    reason = forged.verify(CHAIN_ID, VALIDATORS)
    assert reason is not None and "bad commit signature" in reason


@pytest.mark.parametrize("change", ["chain", "view", "seq", "block"])
def test_certificate_votes_cannot_be_replayed_into_another_context(change: str) -> None:
    block_hash = sha256(b"block")
    cert = sign_certificate(block_hash, 5, 1, VALIDATOR_KEYS[:3])
    chain_id = CHAIN_ID
    if change == "chain":
        chain_id = "other-city"
    elif change == "view":
        cert = dataclasses.replace(cert, view=2)
    elif change == "seq":
        cert = dataclasses.replace(cert, seq=6)
    else:
        cert = dataclasses.replace(cert, block_hash=sha256(b"other"))
    assert cert.verify(chain_id, VALIDATORS) is not None


def test_certificate_against_a_validator_set_with_duplicates_is_refused() -> None:
    cert = sign_certificate(sha256(b"block"), 5, 1, VALIDATOR_KEYS)
    assert cert.verify(CHAIN_ID, [*VALIDATORS, VALIDATORS[0]]) is not None
    assert cert.verify(CHAIN_ID, []) is not None


def test_certificate_needs_the_larger_quorum_for_six_validators() -> None:
    keys = [*VALIDATOR_KEYS, KeyPair(b"\x05" * 32), KeyPair(b"\x06" * 32)]
    validators = [key.public_key for key in keys]
    three = sign_certificate(sha256(b"block"), 5, 1, keys[:3])  # 2f+1 = 3 is not enough
    assert three.verify(CHAIN_ID, validators) is not None
    four = sign_certificate(sha256(b"block"), 5, 1, keys[:4])
    assert four.verify(CHAIN_ID, validators) is None


# -- quorum arithmetic ----------------------------------------------------------------


@pytest.mark.parametrize(("n", "f", "q"), [(1, 0, 1), (2, 0, 2), (3, 0, 2), (4, 1, 3),
                                           (5, 1, 4), (6, 1, 4), (7, 2, 5), (10, 3, 7)])
def test_quorum_sizes_for_small_validator_sets(n: int, f: int, q: int) -> None:
    assert fault_tolerance(n) == f
    assert quorum_size(n) == q


@settings(deadline=None)
@given(st.integers(min_value=1, max_value=10_000))
def test_any_two_quorums_intersect_in_at_least_f_plus_one_and_f_faults_leave_a_quorum(
    n: int,
) -> None:
    f, q = fault_tolerance(n), quorum_size(n)
    assert 2 * q - n >= f + 1
    assert q <= n - f
    assert 3 * f < n
