"""`durable-chat tail` across a history outage (issue 10 item 1): it ends with every message, each once."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e.conftest import Endpoints
from tests.support.gap import GAP_TOPOLOGY_ENV, GapScenario
from tests.support.history import wait_stored
from tests.support.tail import Tail


@pytest.mark.topology_env(GAP_TOPOLOGY_ENV)
@pytest.mark.parametrize("past_ring_window", [False, True], ids=["within-ring", "past-ring"])
async def test_tail_resumes_across_a_history_outage_with_its_connect_cursor(
    endpoints: Endpoints, past_ring_window: bool
) -> None:
    topology = endpoints.local()
    scenario = GapScenario(endpoints, f"cli-gap-{uuid.uuid4().hex[:8]}")
    try:
        (first,) = await scenario.send(1, "first")
        await scenario.miss_while_away()
        await scenario.history_down(past_ring_window)
        async with Tail(endpoints.chat_urls[0], "--room", scenario.room, "--after", first) as tail:
            await tail.until(lambda: tail.notes("following") == 1)
            assert tail.notes("history is unavailable") == 1
            await scenario.send_live()
            await tail.until(lambda: set(scenario.live) <= {m["id"] for m in tail.out})
            # Its replica dies before history returns; the live messages must not have moved its cursor.
            topology.chats[0].kill()
            await scenario.history_up()
            await wait_stored(endpoints.history_url, scenario.room, 1 + len(scenario.expected))
            await asyncio.to_thread(topology.chats[0].start)
            await tail.until(lambda: len(tail.out) >= len(scenario.expected), limit_s=30)
            await asyncio.sleep(0.3)  # anything doubled would show up by now
            ids = [m["id"] for m in tail.out]
            assert sorted(ids) == scenario.expected
    finally:
        await scenario.close()
