"""Compatibility job: the core end-to-end promises on Debian 12's RabbitMQ 3.10.

The rest of the suite runs its private nodes on RabbitMQ 4 (what users run); `make run` on a fresh Debian 12
still gets Debian's 3.10, so the core flows (seam, cursor recovery, history crash and outage, history API)
also run here on a 3.10 private node, in the same `make test`.
"""

from __future__ import annotations

import pytest

from tests.e2e.test_core import (
    test_after_recovers_exactly_what_a_client_missed,
    test_chat_keeps_working_while_history_is_down,
    test_history_api_pages_and_refuses_bad_parameters,
    test_history_killed_mid_stream_stores_every_message_exactly_once,
    test_new_clients_get_history_then_live_without_gap_or_duplicate,
)

pytestmark = pytest.mark.rabbitmq("3.10")

__all__ = [
    "test_after_recovers_exactly_what_a_client_missed",
    "test_chat_keeps_working_while_history_is_down",
    "test_history_api_pages_and_refuses_bad_parameters",
    "test_history_killed_mid_stream_stores_every_message_exactly_once",
    "test_new_clients_get_history_then_live_without_gap_or_duplicate",
]
