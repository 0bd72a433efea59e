"""Chromium (Debian's package) driven by Playwright, and the local topology shared by a module's tests."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import *  # noqa: F403  (private_rabbit, vhost_url, endpoints)
from tests.e2e.conftest import REMOTE_CHAT_URLS, REMOTE_HISTORY_URL, Endpoints
from tests.support.procs import LocalTopology
from tests.support.rabbit import PrivateRabbit

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]

try:
    from playwright.async_api import Browser, async_playwright
except ImportError:  # pragma: no cover - depends on the machine
    async_playwright = None


def _chromium() -> str:
    if async_playwright is None:
        pytest.skip("playwright is not installed (run scripts/install-browser-tools.sh)")
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (run scripts/install-browser-tools.sh)")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = _chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="module")
def shared_endpoints(private_rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """One topology for the tests of a module that kill nothing (each uses its own room)."""
    if REMOTE_CHAT_URLS:
        yield Endpoints(REMOTE_CHAT_URLS, REMOTE_HISTORY_URL)
        return
    vhost = f"b-{uuid.uuid4().hex[:10]}"
    private_rabbit.ctl("add_vhost", vhost)
    private_rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    topology = LocalTopology(
        f"amqp://guest:guest@127.0.0.1:{private_rabbit.port}/{vhost}", tmp_path_factory.mktemp("topology")
    )
    try:
        topology.start()
        yield Endpoints([chat.url for chat in topology.chats], topology.history.url, topology)
    finally:
        topology.stop()
        try:
            private_rabbit.ctl("delete_vhost", vhost)
        except Exception:
            pass


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
