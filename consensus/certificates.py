"""Checks of signatures and quorum certificates against the validator set.

Each function returns None when the thing is valid and otherwise the reason, and never
raises on peer input. Quorum sizes come from the config (ledger.quorum by default).
"""

from __future__ import annotations

from consensus.config import ReplicaConfig
from consensus.events import CommitProof
from consensus.messages import (
    NULL_DIGEST,
    NULL_PAYLOAD,
    CheckpointProof,
    Message,
    PreparedCert,
    ViewChange,
    signed_bytes,
)
from ledger.crypto import signing_payload


def signature_ok(config: ReplicaConfig, message: Message) -> bool:
    if not 0 <= message.sender < config.n:
        return False
    return config.verify(config.validators[message.sender], signed_bytes(message, config.chain_id),
                         message.signature)


def payload_matches(config: ReplicaConfig, digest: bytes, payload: bytes) -> bool:
    if digest == NULL_DIGEST:
        return payload == NULL_PAYLOAD
    if payload == NULL_PAYLOAD:
        return False
    return config.digest_of(payload) == digest


def check_prepared_cert(config: ReplicaConfig, cert: PreparedCert) -> str | None:
    pp = cert.pre_prepare
    if pp.sender != config.primary(pp.view):
        return "prepared pre-prepare not from that view's primary"
    if pp.payload is not None and not payload_matches(config, pp.digest, pp.payload):
        return "prepared payload does not match its digest"
    senders = {p.sender for p in cert.prepares}
    if len(senders) != len(cert.prepares) or pp.sender in senders:
        return "prepares must come from distinct backups"
    if len(senders) < config.quorum - 1:
        return f"{len(senders)} prepares, a prepared certificate needs {config.quorum - 1}"
    for prepare in cert.prepares:
        if (prepare.view, prepare.seq, prepare.digest) != (pp.view, pp.seq, pp.digest):
            return "a prepare does not match the pre-prepare"
    if not signature_ok(config, pp):
        return "bad pre-prepare signature"
    if not all(signature_ok(config, p) for p in cert.prepares):
        return "bad prepare signature"
    return None


def check_checkpoint_proof(config: ReplicaConfig, proof: CheckpointProof) -> str | None:
    if proof.seq < config.base_seq:
        return "checkpoint precedes this validator set's epoch"
    if proof.seq == config.base_seq:
        # The epoch's base is settled by the previous set: no votes, and one known state.
        if proof.checkpoints or (proof.seq and proof.state_digest != config.base_state_digest):
            return "the epoch's base checkpoint needs no votes and has a known state"
        return None
    if proof.seq % config.checkpoint_interval_seqs:
        return "checkpoint seq is not a multiple of the checkpoint interval"
    senders = {c.sender for c in proof.checkpoints}
    if len(senders) != len(proof.checkpoints) or len(senders) < config.quorum:
        return "a stable checkpoint needs a quorum of distinct validators"
    if not all(signature_ok(config, c) for c in proof.checkpoints):
        return "bad checkpoint signature"
    return None


def check_view_change(config: ReplicaConfig, vc: ViewChange, need_payloads: bool) -> str | None:
    if need_payloads and not vc.has_payloads():
        return "view change lacks the payloads of its prepared certificates"
    high = vc.stable.seq + config.watermark_window_seqs
    if any(cert.seq > high for cert in vc.prepared):
        return "prepared certificate above the high watermark"
    reason = check_checkpoint_proof(config, vc.stable)
    if reason:
        return reason
    for cert in vc.prepared:
        reason = check_prepared_cert(config, cert)
        if reason:
            return reason
    if not signature_ok(config, vc):
        return "bad view-change signature"
    return None


def commit_vote_bytes(chain_id: str, view: int, seq: int, digest: bytes) -> bytes:
    """The bytes of a COMMIT vote: identical to ledger.block.commit_vote_bytes."""
    return signing_payload("commit", chain_id, [view, seq, digest])


def _commit_proof_signers_problem(config: ReplicaConfig, proof: CommitProof) -> str | None:
    keys = [key for key, _ in proof.signatures]
    if len(set(keys)) != len(keys):
        return "a validator signed the certificate twice"
    if len(keys) < config.quorum:
        return f"{len(keys)} commit signatures, a quorum is {config.quorum}"
    members = set(config.validators)
    if any(key not in members for key in keys):
        return "a certificate signer is not a validator"
    return None


def commit_proof_signatures(config: ReplicaConfig,
                            proof: CommitProof) -> list[tuple[bytes, bytes, bytes]]:
    """The (public key, message, signature) triples check_commit_proof would verify, with
    the very same bytes; none for a proof it refuses before checking any signature. Lets
    the node verify them elsewhere first (at most one per validator, whatever a peer sent)."""
    if _commit_proof_signers_problem(config, proof) is not None:
        return []
    message = commit_vote_bytes(config.chain_id, proof.view, proof.seq, proof.digest)
    return [(key, message, signature) for key, signature in proof.signatures]


def check_commit_proof(config: ReplicaConfig, proof: CommitProof) -> str | None:
    problem = _commit_proof_signers_problem(config, proof)
    if problem is not None:
        return problem
    message = commit_vote_bytes(config.chain_id, proof.view, proof.seq, proof.digest)
    for key, signature in proof.signatures:
        if not config.verify(key, message, signature):
            return "bad commit signature in certificate"
    return None
