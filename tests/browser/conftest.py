"""Chromium (Debian's package) driven by Playwright, on the shared private node's local topology."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.conftest import *  # noqa: F403  (vhost_url, endpoints)
from tests.support.shared_fixtures import module_endpoints, private_rabbit, shared_endpoints  # noqa: F401

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
