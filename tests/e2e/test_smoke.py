"""The core promises, end to end, with real processes and real clients."""

from __future__ import annotations

import asyncio

import httpx

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient


async def test_message_on_one_replica_reaches_clients_on_both(endpoints: Endpoints) -> None:
    a = ChatClient(endpoints.ws_urls, "fanout", name="alice")
    b = ChatClient(endpoints.ws_urls, "fanout", name="bob")
    await a.connect(0)
    await b.connect(1)
    try:
        client_id = await a.send("hello from A")
        await a.wait_for(lambda: client_id in a.acks)
        message_id = a.acks[client_id]
        await a.wait_for(lambda: message_id in a.unique)
        await b.wait_for(lambda: message_id in b.unique)
        assert b.unique[message_id]["text"] == "hello from A"
        assert b.unique[message_id]["author"] == "alice"
        assert a.duplicates == b.duplicates == []
    finally:
        await a.close()
        await b.close()


async def test_history_api_streams_what_was_sent(endpoints: Endpoints) -> None:
    sender = ChatClient(endpoints.ws_urls, "api")
    await sender.connect(0)
    try:
        for index in range(5):
            await sender.send(f"m{index}")
        await sender.wait_for(lambda: len(sender.acks) == 5)
    finally:
        await sender.close()
    async with httpx.AsyncClient(base_url=endpoints.chat_urls[1]) as http:
        for _ in range(50):
            page = (await http.get("/api/rooms/api/messages")).json()
            if len(page) == 5:
                break
            await asyncio.sleep(0.1)
        assert [m["text"] for m in page] == [f"m{i}" for i in range(5)]
        assert [m["id"] for m in page] == sorted(sender.acks.values())
        ndjson = await http.get("/api/rooms/api/messages?limit=2", headers={"Accept": "application/x-ndjson"})
        assert ndjson.headers["content-type"].startswith("application/x-ndjson")
        assert len(ndjson.text.splitlines()) == 2
