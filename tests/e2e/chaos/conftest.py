"""Chaos fixtures: a topology the test configures before it starts, a broker of the test's own, helpers."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.chaos.invariant import REPORT
from tests.e2e.conftest import REMOTE_CHAT_URLS, requested_engine
from tests.support.procs import LocalTopology
from tests.support.rabbit import PrivateRabbit, running_private_rabbit

MakeTopology = Callable[..., LocalTopology]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("chaos figures")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def make_topology(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeTopology]:
    """Build (not start) a LocalTopology on this test's vhost; every one built is killed at the end."""
    if REMOTE_CHAT_URLS:
        pytest.skip("kills and configures local processes (running against remote endpoints)")
    built: list[LocalTopology] = []

    def make(
        env: dict[str, str] | None = None, amqp_url: str | None = None, history_replicas: int = 1
    ) -> LocalTopology:
        url = amqp_url or request.getfixturevalue("vhost_url")
        topology = LocalTopology(url, tmp_path, extra_env=env or {}, history_replicas=history_replicas)
        built.append(topology)
        return topology

    try:
        yield make
    finally:
        for topology in built:
            topology.stop()


@pytest.fixture
def dedicated_rabbit(request: pytest.FixtureRequest) -> Iterator[PrivateRabbit]:
    """A node for this test alone, so stopping it does not disturb the session's node."""
    with running_private_rabbit(engine=requested_engine(request)) as node:
        yield node


def add_vhost(node: PrivateRabbit) -> str:
    name = f"chaos-{uuid.uuid4().hex[:8]}"
    node.ctl("add_vhost", name)
    node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    return f"amqp://guest:guest@127.0.0.1:{node.port}/{name}"


def vhost_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def status(url: str, path: str = "/readyz") -> int:
    try:
        return httpx.get(f"{url}{path}", timeout=2).status_code
    except httpx.HTTPError:
        return 0


async def wait_status(url: str, code: int, timeout: float = 30, path: str = "/readyz") -> float:
    """Poll until ``path`` answers ``code``; return the seconds it took."""
    started = time.monotonic()
    while True:
        if await asyncio.to_thread(status, url, path) == code:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{url}{path} did not answer {code} in {timeout} s")
        await asyncio.sleep(0.2)


def metric(url: str, name: str, labels: str = "") -> float | None:
    """Sum of the samples called ``name`` (whose label set contains ``labels``) on ``url``/metrics."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    total, found = 0.0, False
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match and labels in (match.group(1) or ""):
            total += float(match.group(2))
            found = True
    return total if found else None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def queue_depth(node: PrivateRabbit, vhost: str, queue: str = "chat.history") -> int:
    for line in node.ctl("list_queues", "-p", vhost, "-q", "name", "messages").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    raise KeyError(queue)
