"""The chat page in Chromium against real replicas: both ways across replicas, history on reload, literal text."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import Endpoints

expect.set_options(timeout=15_000)
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


async def test_reloaded_page_shows_the_history_once_in_order(browser: Browser, shared_endpoints: Endpoints) -> None:
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


async def test_text_renders_literally_and_refusals_are_shown(browser: Browser, shared_endpoints: Endpoints) -> None:
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
