"""Reading a room's whole history over HTTP, page by page, as a client of the public API would."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx


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
