"""A page behind a load balancer survives its replica's SIGKILL, and says so when history is down."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from playwright.async_api import Browser, expect

from tests.browser.test_page import say, texts
from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.tcp_proxy import TcpProxy

expect.set_options(timeout=20_000)


async def test_page_fails_over_and_shows_messages_sent_meanwhile_once(
    browser: Browser, endpoints: Endpoints, tmp_path: Path, artifacts: Path
) -> None:
    topology = endpoints.local()
    room = f"failover-{uuid.uuid4().hex[:8]}"
    proxy = TcpProxy([chat.port for chat in topology.chats], tmp_path)
    watcher = ChatClient(endpoints.ws_urls[:1], room, name="watcher")
    sender: ChatClient | None = None
    try:
        proxy.start()
        page = await browser.new_page(viewport={"width": 960, "height": 640})
        await page.goto(f"{proxy.url}/?room={room}&name=frank")
        await expect(page.locator("#state")).to_have_attribute("data-state", "live")
        await watcher.connect(0)
        await say(page, "before the crash")
        await expect(texts(page)).to_have_text(["before the crash"])
        await watcher.wait_for(lambda: len(watcher.unique) == 1)
        # The replica that accepted the page's message is the one the page is connected to.
        page_origin = next(iter(watcher.unique.values()))["origin"]
        await watcher.close()
        origins = [httpx.get(f"{chat.url}/readyz").json()["origin"] for chat in topology.chats]
        victim = origins.index(page_origin)
        survivor = 1 - victim

        topology.chats[victim].kill()
        await say(page, "typed while reconnecting")  # pending now, resent with its client_id after the resume
        sender = ChatClient(endpoints.ws_urls, room, name="grace")
        await sender.connect(survivor)
        meanwhile = [f"meanwhile {i}" for i in range(3)]
        for text in meanwhile:
            await sender.send(text)
        await sender.wait_for(lambda: len(sender.acks) == 3)

        for text in ["before the crash", *meanwhile, "typed while reconnecting"]:
            await expect(texts(page).filter(has_text=text)).to_have_count(1)
        await expect(page.locator("#messages li.msg")).to_have_count(5)
        await expect(page.locator("#pending li")).to_have_count(0)
        await expect(page.locator("#state")).to_have_attribute("data-state", "live")
        assert int(await page.locator("#state").get_attribute("data-connections") or 0) >= 2
        ids = await page.locator("#messages li.msg").evaluate_all("items => items.map(i => i.dataset.id)")
        assert ids == sorted(ids) and len(set(ids)) == 5
        await sender.wait_for(lambda: any(m["text"] == "typed while reconnecting" for m in sender.messages))
        assert [m["text"] for m in sender.messages].count("typed while reconnecting") == 1

        # History down: the page says so, still shows the recent messages and stays live.
        topology.history.kill()
        await page.reload()
        await expect(page.locator("#notice")).to_contain_text("History is unavailable")
        await expect(page.locator("#state")).to_have_attribute("data-state", "live")
        await say(page, "history is down, chat is not")
        await expect(texts(page).filter(has_text="history is down, chat is not")).to_have_count(1)
        await expect(page.locator("#pending li")).to_have_count(0)
        await page.screenshot(path=str(artifacts / "page-history-unavailable.png"))
    finally:
        await watcher.close()
        if sender is not None:
            await sender.close()
        proxy.stop()
