"""docs/PROTOCOL.md's test vectors must be exactly what the code produces, byte for byte.

The vectors are rebuilt here from fixed seeds and compared with the block between the
`vectors:begin` and `vectors:end` markers in the document. To print the block after a
deliberate protocol change: `python -m tests.ledger.test_protocol_vectors`.
"""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ledger.block import Block, CommitCertificate, commit_vote_bytes, receipts_root_of
from ledger.codec import encode
from ledger.crypto import KeyPair, sha256, signing_payload
from ledger.merkle import leaf_hash, merkle_proof, merkle_root, verify_proof
from ledger.tx import Tx, decode_and_verify, sign_tx

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
VECTOR_LINE = re.compile(r"^([a-z0-9_.]+) = ([0-9a-f]*)$")
CHAIN_ID = "city-test"


def build_vectors() -> dict[str, str]:
    vectors: dict[str, bytes] = {}
    client = KeyPair(bytes(range(32)))
    validators = [KeyPair(bytes(range(32 * i, 32 * (i + 1)))) for i in range(1, 5)]
    vectors["client.seed"] = client.seed
    vectors["client.public_key"] = client.public_key
    vectors["client.address"] = bytes.fromhex(client.address)
    for index, key in enumerate(validators):
        vectors[f"validator{index}.public_key"] = key.public_key

    vectors["codec.example"] = encode(
        {"s": "é", "b": b"\x01\x02", "a": [0, -1, 127, 128, 300, 2**32, None, True, False]})

    tx = sign_tx(client, CHAIN_ID, "tokens", "transfer", 0,
                 {"to": bytes.fromhex(validators[0].address), "amount": 1500, "memo": "bus"})
    vectors["tx.unsigned_body"] = encode(tx.unsigned_body())
    vectors["tx.signing_payload"] = signing_payload("tx", CHAIN_ID, tx.unsigned_body())
    vectors["tx.signature"] = tx.signature
    vectors["tx.wire"] = tx.raw
    vectors["tx.hash"] = tx.hash

    leaves = [b"a", b"b", b"c"]
    vectors["merkle.leaf_hash_a"] = leaf_hash(b"a")
    vectors["merkle.root_abc"] = merkle_root(leaves)
    vectors["merkle.proof_abc_index2"] = b"".join(merkle_proof(leaves, 2))
    vectors["merkle.root_empty"] = merkle_root([])

    receipt = encode({"code": "ok"})
    block = Block.build(
        chain_id=CHAIN_ID, height=1, prev_hash=sha256(b"genesis"),
        timestamp_ms=1_800_000_000_000, proposer=validators[0].public_key, view=0,
        txs=[tx.raw], state_root=sha256(b"state"), receipts_root=receipts_root_of([receipt]),
    )
    vectors["block.receipt"] = receipt
    vectors["header.tx_root"] = block.header.tx_root
    vectors["header.receipts_root"] = block.header.receipts_root
    vectors["header.bytes"] = block.header.encode()
    vectors["header.hash"] = block.hash
    vectors["block.bytes"] = block.encode()

    vote = commit_vote_bytes(CHAIN_ID, 0, 1, block.hash)
    vectors["commit.vote_bytes"] = vote
    vectors["commit.signature_validator0"] = validators[0].sign(vote)
    cert = CommitCertificate(1, 0, block.hash,
                             tuple((key.public_key, key.sign(vote)) for key in validators[:3]))
    vectors["commit.certificate"] = cert.encode()
    return {name: value.hex() for name, value in vectors.items()}


def document_vectors() -> dict[str, str]:
    text = PROTOCOL_MD.read_text()
    block = text.split("<!-- vectors:begin -->", 1)[1].split("<!-- vectors:end -->", 1)[0]
    vectors: dict[str, str] = {}
    for line in block.splitlines():
        match = VECTOR_LINE.match(line.strip())
        if match:
            assert match[1] not in vectors, f"vector {match[1]} appears twice"
            vectors[match[1]] = match[2]
    return vectors


def test_protocol_document_vectors_match_the_code_byte_for_byte() -> None:
    documented = document_vectors()
    built = build_vectors()
    assert sorted(documented) == sorted(built), "vector names differ from the document"
    for name, value in built.items():
        assert documented[name] == value, f"{name} differs from docs/PROTOCOL.md"


def test_documented_tx_verifies_and_certificate_checks_against_the_documented_keys() -> None:
    vectors = {name: bytes.fromhex(value) for name, value in document_vectors().items()}
    tx = decode_and_verify(vectors["tx.wire"], CHAIN_ID)
    assert isinstance(tx, Tx) and tx.hash == vectors["tx.hash"]
    assert sha256(vectors["tx.wire"]) == vectors["tx.hash"]
    assert sha256(vectors["header.bytes"]) == vectors["header.hash"]
    block = Block.decode(vectors["block.bytes"])
    assert block.hash == vectors["header.hash"] and block.check_tx_root() is None
    cert = CommitCertificate.decode(vectors["commit.certificate"])
    validators = [vectors[f"validator{i}.public_key"] for i in range(4)]
    assert cert.verify(CHAIN_ID, validators) is None
    # Independently of ledger.crypto: OpenSSL checks the documented signatures.
    client = Ed25519PublicKey.from_public_bytes(vectors["client.public_key"])
    client.verify(vectors["tx.signature"], vectors["tx.signing_payload"])
    validator0 = Ed25519PublicKey.from_public_bytes(vectors["validator0.public_key"])
    validator0.verify(vectors["commit.signature_validator0"], vectors["commit.vote_bytes"])
    assert vectors["tx.signing_payload"].endswith(vectors["tx.unsigned_body"])
    assert vectors["block.bytes"].find(vectors["header.bytes"]) > 0
    proof = vectors["merkle.proof_abc_index2"]
    assert verify_proof(vectors["merkle.root_abc"], b"c", 2, 3,
                        [proof[i:i + 32] for i in range(0, len(proof), 32)])


if __name__ == "__main__":
    for vector_name, hex_value in build_vectors().items():
        print(f"{vector_name} = {hex_value}")
