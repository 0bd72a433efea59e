"""The cluster the kind tests run against, and their chaos figures printed at the end of the run (as tests/e2e/chaos
does locally)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.chaos.invariant import REPORT
from tests.e2e.kind.kube import CHAT, HISTORY, Cluster, expose, kubectl, node_address, wait_http


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("chaos figures (kind)")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    address = node_address()
    chat_port = expose("e2e-chat", CHAT, 8000)
    history_port = expose("e2e-history", HISTORY, 8001)
    found = Cluster(f"http://{address}:{chat_port}", f"http://{address}:{history_port}")
    wait_http(found.chat_url + "/readyz")
    wait_http(found.history_url + "/readyz")
    try:
        yield found
    finally:
        kubectl("delete", "service", "-l", "e2e=kind-chaos", "--wait=false")
