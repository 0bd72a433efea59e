"""No silent gap after a history outage (issue 10 item 1, contract section 3): the raw protocol."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.gap import GAP_TOPOLOGY_ENV, GapScenario
from tests.support.history import wait_stored

pytestmark = pytest.mark.topology_env(GAP_TOPOLOGY_ENV)
WINDOW_VARIANTS = pytest.mark.parametrize("past_ring_window", [False, True], ids=["within-ring", "past-ring"])


async def come_back_during_outage(endpoints: Endpoints, past_ring_window: bool) -> tuple[GapScenario, ChatClient]:
    """A holds a cursor, misses 50 stored messages, comes back while history is down, then gets 5 live ones."""
    scenario = GapScenario(endpoints, f"gap-{uuid.uuid4().hex[:8]}")
    a = ChatClient(endpoints.ws_urls, scenario.room, name="a")
    await a.connect(0)
    first = await scenario.send(1, "first")
    await a.wait_for(lambda: first[0] in a.unique)
    await a.close()
    await scenario.miss_while_away()
    await scenario.history_down(past_ring_window)
    await a.reconnect(0)
    assert [e["code"] for e in a.errors] == ["history_unavailable"]
    synced = [f for f in a.frames if f["type"] == "synced"]
    assert synced[-1]["complete"] is False
    assert a.gap_cursor == first[0]
    await scenario.send_live()
    await a.wait_for(lambda: set(scenario.live) <= set(a.unique))
    if past_ring_window:  # the scenario really opens the gap: the ring no longer holds the 50
        assert not set(scenario.missed) & set(a.unique)
    return scenario, a


def held_after_first(a: ChatClient) -> list[str]:
    return sorted(set(a.unique) - {a.messages[0]["id"]})


@WINDOW_VARIANTS
async def test_a_client_that_stays_connected_gets_the_gap_once_history_returns(
    endpoints: Endpoints, past_ring_window: bool
) -> None:
    scenario, a = await come_back_during_outage(endpoints, past_ring_window)
    try:
        await scenario.history_up()
        await a.complete.wait()
        assert held_after_first(a) == scenario.expected
        assert a.duplicates == []  # the backfill never repeats what went out live
        synced = [f for f in a.frames if f["type"] == "synced"]
        assert synced[-1] == {"type": "synced", "last": max(scenario.expected), "complete": True}
        assert a.gap_cursor is None
    finally:
        await a.close()
        await scenario.close()


@WINDOW_VARIANTS
async def test_a_client_that_reconnects_keeps_its_connect_cursor_until_a_complete_sync(
    endpoints: Endpoints, past_ring_window: bool
) -> None:
    scenario, a = await come_back_during_outage(endpoints, past_ring_window)
    first = a.messages[0]["id"]
    try:
        await a.close()  # gone again before history returns: the live messages must not move its cursor
        assert a.resume_cursor() == first
        await scenario.history_up()
        await wait_stored(endpoints.history_url, scenario.room, 1 + len(scenario.expected))
        await a.reconnect(1)
        await a.complete.wait()
        assert held_after_first(a) == scenario.expected
        # A resume with an older cursor repeats what the client holds; it drops those by id (contract section 3).
        assert set(a.duplicates) <= set(scenario.live) | set(scenario.missed)
    finally:
        await a.close()
        await scenario.close()


QUEUED = 1500


@pytest.mark.topology_env(
    {**GAP_TOPOLOGY_ENV, "HISTORY_BATCH_MAX": "100", "DURABLE_CHAT_TEST_FAULTS": "history.write.delay_s=0.5"}
)
async def test_a_client_that_syncs_while_history_drains_its_queue_still_gets_everything_once(
    endpoints: Endpoints,
) -> None:
    """History answers but is behind its queue (it was down; it drains slowly): a sync then cannot be complete,
    since what history has not stored yet is no longer in any ring."""
    topology = endpoints.local()
    scenario = GapScenario(endpoints, f"drain-{uuid.uuid4().hex[:8]}")
    a = ChatClient(endpoints.ws_urls, scenario.room, name="a")
    try:
        await a.connect(0)
        first = await scenario.send(1, "first")
        await a.wait_for(lambda: first[0] in a.unique)
        await a.close()
        topology.history.kill()
        queued = await scenario.send(QUEUED, "queued")  # confirmed: they wait in history's queue
        await scenario.history_down(past_ring_window=True)  # and leave the rings
        await scenario.history_up()  # answers at once, stores 100 messages every half second
        await a.reconnect(0)
        assert a.errors == []  # history answered: it is behind, not unavailable
        assert [f["complete"] for f in a.frames if f["type"] == "synced"][-1] is False
        await scenario.send_live()
        await asyncio.wait_for(a.complete.wait(), 120)
        assert set(queued) | set(scenario.live) <= set(a.unique)
        assert a.duplicates == []
    finally:
        await a.close()
        await scenario.close()
