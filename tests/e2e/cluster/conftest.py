"""Fixtures for the cluster faults: one three-node RabbitMQ 4 cluster per session, healthy before each test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster.cluster import RabbitCluster
from tests.e2e.conftest import REMOTE_CHAT_URLS
from tests.support.procs import LocalTopology

CLUSTER_REPORT: list[str] = []  # one line per fault: the invariant's figures and the recovery times


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if CLUSTER_REPORT:
        terminalreporter.section("cluster fault figures")
        for line in CLUSTER_REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    if REMOTE_CHAT_URLS:
        pytest.skip("starts a local RabbitMQ cluster and local services (running against remote endpoints)")
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables") is None:
        pytest.skip("the cluster needs root, iproute2 and iptables (network namespaces, iptables rules)")
    cluster = RabbitCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def cluster(rabbit_cluster: RabbitCluster) -> RabbitCluster:
    """The session's cluster with every node up and joined and no link cut (an earlier fault may linger)."""
    rabbit_cluster.network.heal_all()
    try:
        rabbit_cluster.wait_members(len(rabbit_cluster.nodes), timeout=20)
    except TimeoutError:
        rabbit_cluster.repair()
    return rabbit_cluster


@pytest.fixture
def cluster_topology(cluster: RabbitCluster, tmp_path: Path) -> Iterator[LocalTopology]:
    """History and two chat replicas in a fresh vhost, AMQP_URL listing all three nodes."""
    topology = LocalTopology(cluster.url(cluster.add_vhost()), tmp_path)
    try:
        yield topology
    finally:
        topology.stop()
