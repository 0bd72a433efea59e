"""Reading a room's whole history over HTTP, page by page, as a client of the public API would; writing messages
straight into one history replica."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from services.common.ids import UlidGenerator
from services.common.schema import ChatMessage


async def fetch_all(base_url: str, room: str, prefix: str = "") -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    after = ""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        while True:
            params = {"limit": "1000", **({"after": after} if after else {})}
            response = await http.get(f"{prefix}/rooms/{room}/messages", params=params)
            response.raise_for_status()
            page = response.json()
            messages += page
            if len(page) < 1000:
                return messages
            after = page[-1]["id"]


async def wait_stored(base_url: str, room: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Poll until the room holds at least ``count`` messages; return them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            messages = await fetch_all(base_url, room)
        except httpx.HTTPError:
            messages = []
        if len(messages) >= count or asyncio.get_running_loop().time() > deadline:
            return messages
        await asyncio.sleep(0.2)


def minted(room: str, count: int, author: str | None = None, origin: str = "test0000") -> list[ChatMessage]:
    """``count`` valid messages of ``room`` with fresh ids, as a chat replica would have published them."""
    ids = UlidGenerator()
    messages = []
    for n in range(count):
        msg_id, ts = ids.mint()
        messages.append(ChatMessage(msg_id, origin, room, author, f"{room} #{n}", ts))
    return messages


async def import_into(base_url: str, messages: list[ChatMessage]) -> None:
    """Store messages on one history replica only, through its write endpoint (``POST /import``)."""
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{base_url}/import", content=b"\n".join(m.to_wire() for m in messages) + b"\n")
        response.raise_for_status()
