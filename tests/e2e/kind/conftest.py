"""The chaos figures of the cluster tests, printed at the end of the run (as tests/e2e/chaos does locally)."""

from __future__ import annotations

import pytest

from tests.e2e.chaos.invariant import REPORT


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("chaos figures (kind)")
        for line in REPORT:
            terminalreporter.write_line(line)
