"""Fixtures for multi-process tests: a cluster factory that always kills its processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ledger.network_setup import init_network
from node import Node
from tests.integration.cluster import Cluster


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    # Remember each phase's outcome on the item so fixtures can tell a failed test.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # tests/conftest.py gives every integration test one rerun; an expected failure (xfail
    # on a known bug) needs none, and its second minute-long run would only slow the suite.
    for item in items:
        if item.get_closest_marker("xfail") is not None:
            item.add_marker(pytest.mark.flaky(reruns=0), append=False)


@pytest.fixture
def make_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """`make_cluster(nodes=4, consensus={...}, start=True)` -> a running Cluster.

    Every process of every cluster made here is SIGKILLed at teardown, pass or fail; on
    failure the tail of each node's log is printed to help the reader.
    """
    clusters: list[Cluster] = []

    def make(nodes: int = 4, consensus: dict[str, int] | None = None,
             start: bool = True) -> Cluster:
        cluster = Cluster.create(tmp_path / f"c{len(clusters)}", nodes, consensus)
        clusters.append(cluster)
        if start:
            cluster.start()
        return cluster

    try:
        yield make
    finally:
        failed = getattr(request.node, "rep_call", None)
        for cluster in clusters:
            if failed is not None and failed.failed:
                print(cluster.diagnostics())
            cluster.close()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A running 4-validator network."""
    return make_cluster()


@pytest.fixture
def open_node() -> Iterator[Callable[[Path], Node]]:
    """Makes real Nodes from home dirs, in this process and not running: a test drives
    their methods directly (no sockets); their threads and stores are closed after."""
    made: list[Node] = []

    def make(home: Path) -> Node:
        made.append(Node(home))
        return made[-1]

    try:
        yield make
    finally:
        for node in made:
            node.verifier.close()
            node._record_writer.shutdown(wait=True)
            node.store.close()


@pytest.fixture
def local_node(tmp_path: Path, open_node: Callable[[Path], Node]) -> Node:
    """A real Node (see open_node) of a fresh 4-node network."""
    return open_node(init_network(tmp_path / "net", 4).homes[0])
