"""A node home's config.json: bad settings are an operator error before anything opens."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.network_setup import init_network
from ledger.state import ROOT_KEY
from ledger.store import BlockStore, StoreMemoryLimits
from node import Node, NodeConfig, NodeError


def _home_with(tmp_path: Path, **settings: object) -> Path:
    home = init_network(tmp_path / "net", 4).homes[0]
    config = json.loads((home / "config.json").read_text())
    config.update(settings)
    (home / "config.json").write_text(json.dumps(config))
    return home


@pytest.mark.parametrize(("settings", "says"), [
    ({"store_cache_mb": 0}, "store_cache_mb must be an integer in 1..4096"),
    ({"store_cache_mb": "64"}, "store_cache_mb must be an integer"),
    ({"store_open_files_max": 4}, "store_open_files_max must be an integer in 32..65536"),
    ({"verify_threads": -1}, "verify_threads must be an integer in 0..64"),
    ({"verify_threads": 1.0}, "verify_threads must be an integer"),
    ({"store_cache_size": 8}, "unknown settings ['store_cache_size']"),
    ({"mempool_txs_max": True}, "mempool_txs_max must be an integer"),
    ({"mempool_txs_max": "100000"}, "mempool_txs_max must be an integer"),
    ({"tx_wait_timeout_s": -1}, "tx_wait_timeout_s must be a number"),
    ({"rpc_body_bytes_max": 1.5e6}, "rpc_body_bytes_max must be an integer"),
    ({"rpc_listen": "localhost"}, "rpc_listen must be host:port"),
    ({"p2p_listen": "127.0.0.1:99999"}, "p2p_listen must be host:port"),
    ({"node_name": ""}, "node_name must be a non-empty string"),
    ({"node_name": 7}, "node_name must be a non-empty string"),
])
def test_bad_settings_stop_the_node_with_a_clear_error(
        tmp_path: Path, settings: dict[str, object], says: str) -> None:
    home = _home_with(tmp_path, **settings)
    with pytest.raises(NodeError) as info:
        Node(home)
    assert says in str(info.value)
    assert not (home / "data" / "ledger.db").exists()  # nothing was created


def test_store_settings_reach_the_store(
        tmp_path: Path, open_node: Callable[[Path], Node],
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = _home_with(tmp_path, store_cache_mb=16, store_open_files_max=64)
    opened: list[StoreMemoryLimits | None] = []
    real_open = BlockStore.open

    def recording_open(path: Path, limits: StoreMemoryLimits | None = None) -> BlockStore:
        opened.append(limits)
        return real_open(path, limits)

    monkeypatch.setattr(BlockStore, "open", recording_open)
    node = open_node(home)
    assert opened == [StoreMemoryLimits(block_cache_mb=16, open_files_max=64)]
    assert node.store.tip()[0] == 0  # opened with those limits and initialised with genesis


def test_genesis_init_homes_check_on_the_loop_and_a_lone_node_defaults_to_threads(
        tmp_path: Path, open_node: Callable[[Path], Node]) -> None:
    home = _home_with(tmp_path)
    assert json.loads((home / "config.json").read_text())["verify_threads"] == 0
    assert open_node(home).verifier.threads == 0
    config = json.loads((home / "config.json").read_text())
    del config["verify_threads"]
    (home / "config.json").write_text(json.dumps(config))
    assert NodeConfig.load(home / "config.json").verify_threads == 2


def test_a_data_dir_of_another_state_format_stops_the_node_with_a_clear_error(
        tmp_path: Path) -> None:
    home = _home_with(tmp_path)
    path = home / "data" / "ledger.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    store = BlockStore.open(path)
    store.db.put(ROOT_KEY, bytes(32))  # state with no format marker: an older version's
    store.close()
    with pytest.raises(NodeError, match="binary-tree format.*begun again.*--fresh"):
        Node(home)
    BlockStore.open(path).close()  # the node let go of the database on its way out
