"""A rule module shipped by another package is found through its entry point when genesis
names it, and a genesis naming a module that is not installed stops the node with a
clear reason."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ledger.crypto import KeyPair
from ledger.executor import Executor
from ledger.network_setup import init_network
from ledger.rules import BlockContext
from ledger.state import WorldState
from ledger.tx import sign_tx
from txtypes.base import ModuleNotInstalled, load_modules

PARKING_MODULE = '''
from typing import ClassVar
from collections.abc import Mapping
from pydantic import BaseModel, Field
from txtypes.base import Payload, TxFamily


class PayPayload(Payload):
    zone: str = Field(min_length=1, max_length=16)
    minutes: int = Field(ge=1, le=600)


class ParkingFamily(TxFamily):
    family: ClassVar[str] = "parking"
    operations: ClassVar[Mapping[str, type[BaseModel]]] = {"pay": PayPayload}

    def apply_pay(self, ctx, state):
        key = f"parking/{ctx.payload.zone}/{ctx.sender_address}".encode()
        total = (state.get_obj(key) or 0) + ctx.payload.minutes
        state.put_obj(key, total)
        return {"minutes": total}
'''


def _install_parking_package(site: Path) -> None:
    """What `pip install city-parking` leaves on sys.path: the module and its dist-info."""
    (site / "city_parking.py").write_text(textwrap.dedent(PARKING_MODULE))
    info = site / "city_parking-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: city-parking\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[cityledger.txtypes]\nparking = city_parking:ParkingFamily\n")


def test_module_from_another_package_is_loaded_when_genesis_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    _install_parking_package(site)
    monkeypatch.syspath_prepend(str(site))
    modules = load_modules(["governance", "parking"])
    assert [m.family for m in modules] == ["governance", "parking"]
    executor = Executor("third-party", modules)
    driver = KeyPair.generate()
    tx = sign_tx(driver, "third-party", "parking", "pay", 0, {"zone": "harbour", "minutes": 90})
    state = WorldState.in_memory()
    result = executor.execute_block(state.reader(), BlockContext("third-party", 1, 1, bytes(32)),
                                    [tx])
    assert result.receipts[0].ok and result.receipts[0].result == {"minutes": 90}
    # The package's own schema is enforced: zero minutes is refused, changing nothing.
    bad = sign_tx(driver, "third-party", "parking", "pay", 0, {"zone": "harbour", "minutes": 0})
    rejected = executor.execute_block(state.reader(),
                                      BlockContext("third-party", 1, 1, bytes(32)), [bad])
    assert rejected.receipts[0].code == "invalid_payload"
    assert not any(key.startswith(b"parking/") for key in rejected.writes)


def test_genesis_naming_a_missing_module_is_refused_with_a_clear_reason() -> None:
    with pytest.raises(ModuleNotInstalled, match="'parking'.*not installed"):
        load_modules(["governance", "parking"])


def test_node_start_refuses_genesis_with_missing_module(tmp_path: Path) -> None:
    layout = init_network(tmp_path / "net", 1, p2p_base_port=39101, rpc_base_port=39201)
    home = layout.homes[0]
    genesis = json.loads((home / "genesis.json").read_text())
    genesis["modules"].append({"name": "parking", "params": {}})
    (home / "genesis.json").write_text(json.dumps(genesis))
    done = subprocess.run([sys.executable, "-m", "cli", "node", "start", "--home", str(home)],
                          capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert "parking" in last_line and "not installed" in last_line
