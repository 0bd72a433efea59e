"""The local topology as real processes on a private RabbitMQ node, or remote endpoints (kind).

When DURABLE_CHAT_E2E_CHAT_URLS (comma-separated base URLs of two chat replicas) is set, the suite runs
against those endpoints instead, and tests that kill local processes skip.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import LocalTopology
from tests.support.rabbit import PrivateRabbit, default_engine

REMOTE_CHAT_URLS = [u for u in os.environ.get("DURABLE_CHAT_E2E_CHAT_URLS", "").split(",") if u]
REMOTE_HISTORY_URL = os.environ.get("DURABLE_CHAT_E2E_HISTORY_URL", "")


@dataclass
class Endpoints:
    """What a test talks to: WebSocket URLs of the replicas and the history base URL."""

    chat_urls: list[str]
    history_url: str
    topology: LocalTopology | None = None

    @property
    def ws_urls(self) -> list[str]:
        return [url.replace("http", "ws", 1) + "/ws" for url in self.chat_urls]

    def local(self) -> LocalTopology:
        if self.topology is None:
            pytest.skip("needs local processes to kill (running against remote endpoints)")
        return self.topology


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "rabbitmq(version): run the test's private node on RabbitMQ `version` ('4' or '3.10'); "
        "unmarked tests use DCT_RABBITMQ, else 4",
    )


def requested_engine(request: pytest.FixtureRequest) -> str:
    """The RabbitMQ engine a test asked for with ``@pytest.mark.rabbitmq(...)``, else the run's default."""
    marker = request.node.get_closest_marker("rabbitmq")
    return str(marker.args[0]) if marker else default_engine()


@pytest.fixture(scope="session")
def private_rabbits() -> Iterator[dict[str, PrivateRabbit]]:
    """One private node per engine for the whole run, started when a test first asks for that engine."""
    nodes: dict[str, PrivateRabbit] = {}
    try:
        yield nodes
    finally:
        for node in nodes.values():
            node.destroy()


@pytest.fixture
def private_rabbit(request: pytest.FixtureRequest, private_rabbits: dict[str, PrivateRabbit]) -> PrivateRabbit:
    engine = requested_engine(request)
    if engine not in private_rabbits:
        node = PrivateRabbit(engine=engine)
        try:
            node.start()
        except BaseException:
            node.destroy()
            raise
        private_rabbits[engine] = node
    return private_rabbits[engine]


@pytest.fixture
def vhost_url(private_rabbit: PrivateRabbit, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"t-{abs(hash(request.node.nodeid)) % 10**8}"
    private_rabbit.ctl("add_vhost", name)
    private_rabbit.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@127.0.0.1:{private_rabbit.port}/{name}"
    finally:
        if private_rabbit.port:
            try:
                private_rabbit.ctl("delete_vhost", name)
            except Exception:
                pass


def _topology_env(request: pytest.FixtureRequest) -> dict[str, str]:
    marker = request.node.get_closest_marker("topology_env")
    return dict(marker.args[0]) if marker else {}


@pytest.fixture
async def endpoints(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Endpoints]:
    if REMOTE_CHAT_URLS:
        if request.node.get_closest_marker("topology_env"):
            pytest.skip("needs replicas started with test-specific settings (running against remote endpoints)")
        yield Endpoints(REMOTE_CHAT_URLS, REMOTE_HISTORY_URL)
        return
    vhost = request.getfixturevalue("vhost_url")
    topology = LocalTopology(vhost, tmp_path, extra_env=_topology_env(request))
    try:
        topology.start()
        yield Endpoints([chat.url for chat in topology.chats], topology.history.url, topology)
    finally:
        topology.stop()
