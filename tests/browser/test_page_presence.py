"""Presence on the page in Chromium: two pages on two replicas see each other, the typing line, and a leave."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, expect

from tests.browser.test_page import open_page, room, say
from tests.e2e.conftest import Endpoints


async def test_two_pages_on_two_replicas_see_each_other_and_who_is_typing(
    browser: Browser, shared_endpoints: Endpoints, artifacts: Path
) -> None:
    name = room()
    alice = await open_page(browser, shared_endpoints.chat_urls[0], name, "alice")
    await expect(alice.locator("#members li.member")).to_have_text(["alice"])
    bob = await open_page(browser, shared_endpoints.chat_urls[1], name, "bob")
    for page in (alice, bob):  # the member list, live: bob's join reached alice's replica
        await expect(page.locator("#members li.member")).to_have_text(["alice", "bob"])
        await expect(page.locator("#occupancy")).to_have_text("2 connected")
    await expect(bob.locator("#members li.member.me")).to_have_text(["bob"])

    await bob.locator("#text").press_sequentially("hel")
    await expect(alice.locator("#typing")).to_have_text("bob is typing…")
    await alice.screenshot(path=str(artifacts / "page-presence.png"))
    await expect(bob.locator("#typing")).to_have_text("")  # never one's own
    await say(bob, "hello")  # the message ends the typing line at once
    await expect(alice.locator("#messages li.msg .text")).to_have_text(["hello"])
    await expect(alice.locator("#typing")).to_have_text("")

    await alice.locator("#text").press_sequentially("hi")
    await expect(bob.locator("#typing")).to_have_text("alice is typing…")
    await expect(bob.locator("#typing")).to_have_text("", timeout=8_000)  # valid 5 s, then gone

    await bob.close()
    await expect(alice.locator("#members li.member")).to_have_text(["alice"])
    await alice.close()
