"""The page across a history outage (issue 10 item 1): it keeps its connect cursor after an incomplete sync
and ends with every message of the room, once each, in id order."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.conftest import Endpoints
from tests.support.gap import GAP_TOPOLOGY_ENV, GapScenario
from tests.support.history import wait_stored
from tests.support.tcp_proxy import TcpProxy

expect.set_options(timeout=40_000)  # the page's reconnect backoff grows while its load balancer is down


@pytest.mark.topology_env(GAP_TOPOLOGY_ENV)
@pytest.mark.parametrize("past_ring_window", [False, True], ids=["within-ring", "past-ring"])
async def test_page_fills_the_gap_of_a_history_outage_in_id_order(
    browser: Browser, endpoints: Endpoints, tmp_path: Path, past_ring_window: bool
) -> None:
    topology = endpoints.local()
    scenario = GapScenario(endpoints, f"page-gap-{uuid.uuid4().hex[:8]}")
    balancer = TcpProxy([chat.port for chat in topology.chats], tmp_path)
    shown = lambda page: page.locator("#messages li.msg")  # noqa: E731
    try:
        balancer.start()
        page = await browser.new_page(viewport={"width": 960, "height": 640})
        await page.goto(f"{balancer.url}/?room={scenario.room}&name=ann")
        await expect(page.locator("#state")).to_have_attribute("data-state", "live")
        await scenario.send(1, "first")
        await expect(shown(page)).to_have_count(1)

        balancer.stop()  # the page's network is gone: it holds a cursor and misses 50 stored messages
        await expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting")
        await scenario.miss_while_away()
        await scenario.history_down(past_ring_window)
        balancer.start()
        await expect(page.locator("#notice")).to_contain_text("History is unavailable")
        await expect(page.locator("#state")).to_have_attribute("data-state", "live")
        await scenario.send_live()
        await expect(page.locator("#messages li.msg .text").filter(has_text="live 04")).to_have_count(1)
        if past_ring_window:
            await expect(shown(page)).to_have_count(1 + len(scenario.live))

        # Away again before history returns: the live messages must not have moved its reconnect cursor.
        balancer.stop()
        await expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting")
        await scenario.history_up()
        await wait_stored(endpoints.history_url, scenario.room, 1 + len(scenario.expected))
        balancer.start()
        await expect(shown(page)).to_have_count(1 + len(scenario.expected))
        await expect(page.locator("#notice")).to_be_hidden()
        ids = await shown(page).evaluate_all("items => items.map(i => i.dataset.id)")
        assert ids[1:] == scenario.expected and ids == sorted(ids)
    finally:
        balancer.stop()
        await scenario.close()
