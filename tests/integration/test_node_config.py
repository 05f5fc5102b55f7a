"""A node home's config.json: bad settings are an operator error before anything opens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.network_setup import init_network
from node import Node, NodeError


def _home_with(tmp_path: Path, **settings: object) -> Path:
    home = init_network(tmp_path / "net", 4).homes[0]
    config = json.loads((home / "config.json").read_text())
    config.update(settings)
    (home / "config.json").write_text(json.dumps(config))
    return home


@pytest.mark.parametrize("settings", [
    {"store_cache_mb": 0}, {"store_cache_mb": "64"}, {"store_open_files_max": 4},
    {"store_cache_size": 8},
])
def test_bad_store_settings_stop_the_node_with_a_clear_error(
        tmp_path: Path, settings: dict[str, object]) -> None:
    home = _home_with(tmp_path, **settings)
    with pytest.raises(NodeError) as info:
        Node(home)
    assert ("store memory limits" in str(info.value)) or ("unknown settings" in str(info.value))
    assert not (home / "data" / "ledger.db").exists()  # nothing was created


def test_store_settings_reach_the_store(tmp_path: Path) -> None:
    home = _home_with(tmp_path, store_cache_mb=16, store_open_files_max=64)
    node = Node(home)
    try:
        assert node.config.store_cache_mb == 16
        assert node.store.tip()[0] == 0  # opened and initialised with genesis
    finally:
        node.verifier.close()
        node._record_writer.shutdown(wait=True)
        node.store.close()
