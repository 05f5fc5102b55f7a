"""Ed25519 sign and verify rates: `cryptography` (OpenSSL) against PyNaCl (libsodium).

    python -m benchmarks.crypto_verify [--rounds 7] [--ops 3000] [--out bench-out/]

Signs and verifies a 260-byte message (the size of a typical transaction) on one core.
Each round times `ops` operations over distinct messages for every case in turn; the table shows the median
wall-clock rate over the rounds with its spread, and the median rate per CPU second of
this process, which stays meaningful when other processes share the cores.
Results go to OUT/crypto_verify.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import nacl.bindings
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger.crypto import KeyPair, verify

MESSAGE_BYTES = 260
SEED = bytes(range(32))


def _rates(operation: Callable[[int], None], ops: int) -> tuple[float, float]:
    """(ops per wall-clock second, ops per CPU second of this process)."""
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    for index in range(ops):
        operation(index)
    wall_s = time.perf_counter() - wall_started
    cpu_s = max(time.process_time() - cpu_started, 1e-9)
    return ops / wall_s, ops / cpu_s


def measure(rounds: int, ops: int) -> dict[str, dict[str, float]]:
    messages = [os.urandom(MESSAGE_BYTES) for _ in range(ops)]
    ossl_key = Ed25519PrivateKey.from_private_bytes(SEED)
    ossl_public = ossl_key.public_key()
    nacl_pair = KeyPair(SEED)
    _, nacl_secret = nacl.bindings.crypto_sign_seed_keypair(SEED)
    signatures = [nacl_pair.sign(message) for message in messages]
    # Both libraries implement the same deterministic RFC 8032 signatures.
    assert ossl_key.sign(messages[0]) == signatures[0]

    def ossl_verify(index: int) -> None:
        try:
            ossl_public.verify(signatures[index], messages[index])
        except InvalidSignature as exc:  # pragma: no cover - would void the benchmark
            raise SystemExit("cryptography rejected a valid signature") from exc

    def nacl_verify(index: int) -> None:
        nacl.bindings.crypto_sign_open(signatures[index] + messages[index],
                                       nacl_pair.public_key)

    def ledger_verify(index: int) -> None:
        if not verify(nacl_pair.public_key, messages[index], signatures[index]):
            raise SystemExit("ledger.crypto.verify rejected a valid signature")

    def ossl_sign(index: int) -> None:
        ossl_key.sign(messages[index])

    def nacl_sign(index: int) -> None:
        nacl.bindings.crypto_sign(messages[index], nacl_secret)

    cases: dict[str, Callable[[int], None]] = {
        "verify cryptography (OpenSSL)": ossl_verify,
        "verify PyNaCl (libsodium)": nacl_verify,
        "verify ledger.crypto.verify": ledger_verify,
        "sign cryptography (OpenSSL)": ossl_sign,
        "sign PyNaCl (libsodium)": nacl_sign,
    }
    for operation in cases.values():
        operation(0)  # warm up
    # Rounds interleave the cases so a burst of load from other processes hits all alike.
    wall_by_case: dict[str, list[float]] = {name: [] for name in cases}
    cpu_by_case: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, operation in cases.items():
            wall, cpu = _rates(operation, ops)
            wall_by_case[name].append(wall)
            cpu_by_case[name].append(cpu)
    results: dict[str, dict[str, float]] = {}
    for name in cases:
        wall_rates, cpu_rates = wall_by_case[name], cpu_by_case[name]
        results[name] = {
            "median_per_s": statistics.median(wall_rates),
            "min_per_s": min(wall_rates),
            "max_per_s": max(wall_rates),
            # CPU-time rate: what one core delivers, even when other processes share it.
            "median_per_cpu_s": statistics.median(cpu_rates),
            "median_cpu_us_per_op": 1e6 / statistics.median(cpu_rates),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)

    results = measure(args.rounds, args.ops)
    print(f"Ed25519, {MESSAGE_BYTES}-byte messages, one core, median of {args.rounds} rounds "
          f"x {args.ops} ops (load average {os.getloadavg()[0]:.2f})")
    print(f"{'operation':32} {'median/s':>10} {'min/s':>9} {'max/s':>9} "
          f"{'per CPU-s':>10} {'CPU us/op':>9}")
    for name, row in results.items():
        print(f"{name:32} {row['median_per_s']:>10,.0f} {row['min_per_s']:>9,.0f} "
              f"{row['max_per_s']:>9,.0f} {row['median_per_cpu_s']:>10,.0f} "
              f"{row['median_cpu_us_per_op']:>9.1f}")
    speedup = (results["verify PyNaCl (libsodium)"]["median_per_cpu_s"]
               / results["verify cryptography (OpenSSL)"]["median_per_cpu_s"])
    print(f"PyNaCl verifies {speedup:.2f}x as fast as cryptography per CPU second")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "crypto_verify",
        "message_bytes": MESSAGE_BYTES,
        "rounds": args.rounds,
        "ops_per_round": args.ops,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "results": results,
        "pynacl_verify_speedup": speedup,
    }
    path = args.out / "crypto_verify.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
