"""The chat page in Chromium against the cluster: the browser suite's tests (tests/browser/test_page.py) on the two
chat pods reached through port-forwards (run.sh sets DURABLE_CHAT_E2E_CHAT_URLS). The test that SIGKILLs a local
replica skips, as the e2e suite's do: its cluster counterpart is test_kind_chaos.py."""

from __future__ import annotations

import pytest

from tests.browser.conftest import artifacts, browser  # noqa: F401  (fixtures the tests below use)
from tests.browser.test_page import (  # noqa: F401  (collected here, against the cluster)
    test_reloaded_page_shows_the_history_once_in_order,
    test_text_renders_literally_and_refusals_are_shown,
    test_two_pages_on_two_replicas_exchange_messages_both_ways,
)
from tests.e2e.conftest import REMOTE_CHAT_URLS, REMOTE_HISTORY_URL, Endpoints

pytestmark = [pytest.mark.kind, pytest.mark.e2e]
if len(REMOTE_CHAT_URLS) < 2:
    pytestmark.append(pytest.mark.skip(reason="no cluster: DURABLE_CHAT_E2E_CHAT_URLS is unset (run.sh sets it)"))


@pytest.fixture
def shared_endpoints() -> Endpoints:
    return Endpoints(REMOTE_CHAT_URLS, REMOTE_HISTORY_URL)
