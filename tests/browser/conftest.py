"""Chromium (Debian's package) driven by Playwright, on the shared private node's local topology."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import *  # noqa: F403  (vhost_url, endpoints)
from tests.e2e.conftest import Endpoints
from tests.support.rabbit import PrivateRabbit
from tests.support.shared_node import module_topology, revive, shared_private_rabbit

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


@pytest.fixture(scope="session")
def private_rabbit() -> Iterator[PrivateRabbit]:
    with shared_private_rabbit() as node:
        yield node


@pytest.fixture(scope="module")
def module_endpoints(private_rabbit: PrivateRabbit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    with module_topology(private_rabbit, tmp_path_factory.mktemp("topology")) as endpoints:
        yield endpoints


@pytest.fixture
def shared_endpoints(module_endpoints: Endpoints) -> Endpoints:
    """The module's topology, with anything a previous test killed started again (each test uses its own room)."""
    return revive(module_endpoints)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = _chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
