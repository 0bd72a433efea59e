"""The chat page in Chromium against real replicas: across replicas, history on reload, literal text, and a
page behind a load balancer that survives its replica's SIGKILL and says so when history is down."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import httpx
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.tcp_proxy import TcpProxy

expect.set_options(timeout=20_000)
XSS = "<img src=x onerror=alert(1)>"
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "screenshot.png"


def room() -> str:
    return f"page-{uuid.uuid4().hex[:8]}"


async def open_page(browser: Browser, base: str, room_name: str, name: str) -> Page:
    page = await browser.new_page(viewport={"width": 960, "height": 640})
    await page.goto(f"{base}/?room={room_name}&name={name}")
    await expect(page.locator("#state")).to_have_attribute("data-state", "live")
    return page


async def say(page: Page, text: str) -> None:
    await page.locator("#text").fill(text)
    await page.locator("#text").press("Enter")


def texts(page: Page):  # type: ignore[no-untyped-def]
    return page.locator("#messages li.msg .text")


async def test_two_pages_on_two_replicas_exchange_messages_both_ways(
    browser: Browser, shared_endpoints: Endpoints, artifacts: Path
) -> None:
    name = room()
    alice = await open_page(browser, shared_endpoints.chat_urls[0], name, "alice")
    # Bob joins through the form on the other replica.
    bob = await browser.new_page(viewport={"width": 960, "height": 640})
    await bob.goto(f"{shared_endpoints.chat_urls[1]}/")
    await bob.locator("#join-name").fill("bob")
    await bob.locator("#join-room").fill(name)
    await bob.locator("#join button[type=submit]").click()
    await expect(bob.locator("#state")).to_have_attribute("data-state", "live")
    await expect(bob.locator("#room-label")).to_have_text(f"#{name}")

    await say(alice, "Hi Bob! I'm on replica 0.")
    await expect(texts(bob)).to_have_text(["Hi Bob! I'm on replica 0."])
    await say(bob, "Hello Alice, replica 1 here.\nEnter sends, Shift+Enter breaks the line.")
    await say(alice, "Messages survive reloads and replica crashes.")
    expected = [
        "Hi Bob! I'm on replica 0.",
        "Hello Alice, replica 1 here.\nEnter sends, Shift+Enter breaks the line.",
        "Messages survive reloads and replica crashes.",
    ]
    for page in (alice, bob):
        await expect(texts(page)).to_have_text(expected)
        await expect(page.locator("#pending li")).to_have_count(0)  # every own message acked and echoed
    await expect(alice.locator("#messages li.msg.mine")).to_have_count(2)
    await expect(bob.locator("#messages li.msg.mine .author")).to_have_text(["bob"])
    await bob.locator("#text").fill("typing…")
    await bob.screenshot(path=str(artifacts / "page.png"))
    if os.environ.get("DURABLE_CHAT_UPDATE_SCREENSHOT") == "1":
        await bob.screenshot(path=str(DOCS_SCREENSHOT))


async def test_reloaded_page_shows_the_history_once_in_order(
    browser: Browser, shared_endpoints: Endpoints
) -> None:
    name = room()
    page = await open_page(browser, shared_endpoints.chat_urls[0], name, "carol")
    await expect(page.locator("#empty")).to_be_visible()
    sent = ["first", "second", "third"]
    for text in sent:
        await say(page, text)
    await expect(texts(page)).to_have_text(sent)
    await expect(page.locator("#pending li")).to_have_count(0)

    await page.reload()
    await expect(page.locator("#state")).to_have_attribute("data-state", "live")
    await expect(texts(page)).to_have_text(sent)
    # A newcomer on the other replica sees the same history.
    other = await open_page(browser, shared_endpoints.chat_urls[1], name, "dan")
    await expect(texts(other)).to_have_text(sent)
    ids = await other.locator("#messages li.msg").evaluate_all("items => items.map(i => i.dataset.id)")
    assert ids == sorted(ids) and len(set(ids)) == 3


async def test_text_renders_literally_and_refusals_are_shown(
    browser: Browser, shared_endpoints: Endpoints
) -> None:
    dialogs: list[str] = []
    name = room()
    page = await open_page(browser, shared_endpoints.chat_urls[1], name, "<b>eve</b>")
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await say(page, XSS)
    await expect(texts(page)).to_have_text([XSS])
    await expect(page.locator("#messages li.msg .author")).to_have_text(["<b>eve</b>"])
    await expect(page.locator("#messages img, #messages b")).to_have_count(0)

    await say(page, "x" * 5000)  # over CHAT_MAX_MESSAGE_BYTES (4096)
    await expect(page.locator('#errors .error[data-code="too_large"]')).to_be_visible()
    await expect(page.locator("#pending li.failed .status")).to_have_text(re.compile("not sent: too_large"))

    await page.reload()  # the stored text is still only text
    await expect(page.locator("#state")).to_have_attribute("data-state", "live")
    await expect(texts(page)).to_have_text([XSS])
    await expect(page.locator("#messages img")).to_have_count(0)
    assert dialogs == []


async def test_page_fails_over_and_shows_messages_sent_meanwhile_once(
    browser: Browser, shared_endpoints: Endpoints, tmp_path: Path, artifacts: Path
) -> None:
    """Last in the module: it kills a replica and the history service (the next test would get them back)."""
    endpoints = shared_endpoints
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
        async with httpx.AsyncClient() as http:
            origins = [(await http.get(f"{chat.url}/readyz")).json()["origin"] for chat in topology.chats]
        victim = origins.index(page_origin)
        survivor = 1 - victim

        # The page's network drops and its replica dies (SIGKILL). While it is away, others send more than the
        # 100 messages a connect without a cursor gets: only a resume with the per-origin cursor shows them all.
        await page.context.set_offline(True)
        topology.chats[victim].kill()
        await expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting")
        await say(page, "typed while reconnecting")  # pending now, resent with its client_id after the resume
        await expect(page.locator("#pending li.pending")).to_have_count(1)
        sender = ChatClient(endpoints.ws_urls, room, name="grace")
        await sender.connect(survivor)
        meanwhile = [f"meanwhile {i:03d}" for i in range(110)]
        for text in meanwhile:
            await sender.send(text)
        await sender.wait_for(lambda: len(sender.acks) == len(meanwhile))
        await expect(page.locator("#messages li.msg")).to_have_count(1)
        await page.context.set_offline(False)  # back online: the load balancer sends the page to the survivor

        await expect(page.locator("#messages li.msg")).to_have_count(2 + len(meanwhile))
        shown = await texts(page).all_text_contents()
        assert sorted(shown) == sorted(["before the crash", *meanwhile, "typed while reconnecting"])
        await expect(page.locator("#pending li")).to_have_count(0)
        await expect(page.locator("#state")).to_have_attribute("data-state", "live")
        assert int(await page.locator("#state").get_attribute("data-connections") or 0) >= 2
        ids = await page.locator("#messages li.msg").evaluate_all("items => items.map(i => i.dataset.id)")
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
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
