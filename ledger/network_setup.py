"""Creating a network: genesis documents and per-node home directories.

A node's home directory holds everything it needs to start:
    HOME/config.json      node name, listen addresses, limits, logging
    HOME/genesis.json     the network's genesis (identical on every node)
    HOME/node_key.json    the validator's Ed25519 key (mode 0600)
    HOME/tls/             the TLS certificate bound to that key (written by the CLI via p2p)
    HOME/data/            LevelDB (blocks, state, consensus records)
`genesis init` also writes the agencies' account keys (the keys that sign governance,
token and registry transactions) under OUT/accounts/, one file per agency.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ledger.crypto import KeyPair

AGENCIES = (
    "treasury",
    "civil-registry",
    "utility",
    "social-services",
    "transport",
    "health",
    "education",
    "housing",
    "parks",
    "police",
)
# Roles each agency's account holds at genesis (everyone also holds "agency").
AGENCY_ROLES: dict[str, tuple[str, ...]] = {
    "treasury": ("treasury",),
    "civil-registry": ("registrar", "issuer"),
    "utility": ("utility",),
    "social-services": ("issuer",),
    "health": ("issuer",),
    "education": ("issuer",),
}
P2P_BASE_PORT = 26601
RPC_BASE_PORT = 26701


@dataclass(frozen=True, slots=True)
class NetworkLayout:
    out_dir: Path
    homes: list[Path]
    rpc_urls: list[str]
    genesis_path: Path


def agency_name(index: int) -> str:
    if index < len(AGENCIES):
        return AGENCIES[index]
    return f"agency-{index + 1}"


def _write_json(path: Path, data: Any, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    path.chmod(mode)


def default_module_params(accounts: dict[str, KeyPair]) -> list[dict[str, Any]]:
    """Rule modules and their genesis parameters for a fresh network."""
    roles: dict[str, list[str]] = {"agency": sorted(k.address for k in accounts.values())}
    for agency, agency_roles in AGENCY_ROLES.items():
        if agency in accounts:
            for role in agency_roles:
                roles.setdefault(role, []).append(accounts[agency].address)
    agencies = sorted(k.address for k in accounts.values())
    return [
        {
            "name": "governance",
            "params": {
                "roles": {role: sorted(holders) for role, holders in sorted(roles.items())},
                "agencies": agencies,
                "approval_quorum": len(agencies) // 2 + 1,
            },
        },
        {"name": "identity", "params": {}},
        {"name": "tokens", "params": {}},
        {"name": "contracts", "params": {}},
        {"name": "energy", "params": {"interval_blocks": 10}},
    ]


def init_network(
    out_dir: Path,
    validators: int,
    *,
    chain_id: str = "cityledger-local",
    host: str = "127.0.0.1",
    p2p_base_port: int = P2P_BASE_PORT,
    rpc_base_port: int = RPC_BASE_PORT,
    genesis_time_ms: int = 0,
    consensus: dict[str, int] | None = None,
) -> NetworkLayout:
    """Write genesis.json, N node homes and the agencies' account keys under `out_dir`."""
    if validators < 1:
        raise ValueError("a network needs at least one validator")
    if (out_dir / "genesis.json").exists():
        raise FileExistsError(f"{out_dir / 'genesis.json'} exists; choose an empty directory")
    node_keys = [KeyPair.generate() for _ in range(validators)]
    accounts = {agency_name(i): KeyPair.generate() for i in range(validators)}
    for name, key in accounts.items():
        key.save(out_dir / "accounts" / f"{name}.json")
    genesis = {
        "chain_id": chain_id,
        "genesis_time_ms": genesis_time_ms,
        "consensus": {
            "checkpoint_interval_blocks": 16,
            # Generous enough that a full block validated on a busy 2-core machine does
            # not trigger a view change; tests that kill primaries pass a shorter one.
            "view_change_timeout_ms": 4000,
            "batch_txs_max": 1000,
            "batch_interval_ms": 10,
            **(consensus or {}),
        },
        "validators": [
            {
                "name": agency_name(i),
                "public_key": key.public_key.hex(),
                "p2p_address": f"{host}:{p2p_base_port + i}",
                "rpc_address": f"{host}:{rpc_base_port + i}",
            }
            for i, key in enumerate(node_keys)
        ],
        "modules": default_module_params(accounts),
    }
    genesis_path = out_dir / "genesis.json"
    _write_json(genesis_path, genesis)
    homes: list[Path] = []
    for i, key in enumerate(node_keys):
        home = out_dir / f"node{i}"
        key.save(home / "node_key.json")
        _write_json(home / "genesis.json", genesis)
        _write_json(
            home / "config.json",
            {
                "node_name": agency_name(i),
                "p2p_listen": f"{host}:{p2p_base_port + i}",
                "rpc_listen": f"{host}:{rpc_base_port + i}",
                # Every node of this layout runs on one machine: threads beside each
                # node's event loop would only compete for the same cores (docs/OPERATIONS).
                "verify_threads": 0,
            },
        )
        homes.append(home)
    rpc_urls = [f"http://{host}:{rpc_base_port + i}/rpc" for i in range(validators)]
    return NetworkLayout(out_dir, homes, rpc_urls, genesis_path)
