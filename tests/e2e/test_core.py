"""Issue 2's end-to-end promises: seam, recovery by cursor, history crash and outage."""

from __future__ import annotations

import asyncio

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.history import fetch_all, wait_stored
from tests.support.load import Senders


def before_synced(client: ChatClient) -> list[str]:
    """The backlog (at most 100, in id order), then the live messages held back while it was sent."""
    synced_at = next(i for i, f in enumerate(client.frames) if f["type"] == "synced")
    return [f["id"] for f in client.frames[:synced_at] if f["type"] == "message"]


async def test_new_clients_get_history_then_live_without_gap_or_duplicate(endpoints: Endpoints) -> None:
    senders = Senders(endpoints.ws_urls, "seam", count=4)
    await senders.start()
    joiners: list[ChatClient] = []
    try:
        await senders.wait_acked(150)
        for index in range(6):
            joiner = ChatClient(endpoints.ws_urls, "seam")
            await joiner.connect(index)
            joiners.append(joiner)
            await asyncio.sleep(0.15)
        await senders.wait_acked(senders.sent - 4 + 100)
    finally:
        await senders.stop()
    acked = sorted(senders.acked.values())
    for joiner in joiners:
        await joiner.wait_for(lambda j=joiner: acked[-1] in j.unique)
        backlog = before_synced(joiner)[:100]
        assert backlog == sorted(backlog) and len(backlog) == 100
        assert joiner.duplicates == []
        expected = [i for i in acked if i >= joiner.messages[0]["id"]]
        missing = set(expected) - set(joiner.unique)
        assert not missing, f"{len(missing)} messages missing at the seam"
        await joiner.close()


async def test_after_recovers_exactly_what_a_client_missed(endpoints: Endpoints) -> None:
    reader = ChatClient(endpoints.ws_urls, "resume")
    await reader.connect(0)
    senders = Senders(endpoints.ws_urls, "resume", count=2)
    await senders.start(total=40)
    await senders.wait_acked(40)
    await reader.wait_for(lambda: set(senders.acked.values()) <= set(reader.unique))
    await reader.close()
    seen = set(reader.unique)

    more = Senders(endpoints.ws_urls, "resume", count=2)
    await more.start(total=60)
    await more.wait_acked(60)
    await more.stop()
    await senders.stop()
    missed = set(more.acked.values())

    before = len(reader.messages)
    await reader.reconnect(1)
    recovered = [m["id"] for m in reader.messages[before:]]
    assert sorted(recovered) == sorted(missed) and not (set(recovered) & seen)
    assert reader.duplicates == []
    await reader.close()


async def test_history_killed_mid_stream_stores_every_message_exactly_once(endpoints: Endpoints) -> None:
    topology = endpoints.local()
    senders = Senders(endpoints.ws_urls, "crash", count=4)
    await senders.start(total=2000)
    try:
        await senders.wait_acked(500)
        topology.history.kill()
        await senders.wait_acked(1000)
        topology.history.start()
        await senders.wait_acked(2000, timeout=120)
    finally:
        await senders.stop()
    acked = set(senders.acked.values())
    assert len(acked) == 2000
    stored = await wait_stored(endpoints.history_url, "crash", 2000)
    ids = [m["id"] for m in stored]
    assert len(ids) == len(set(ids)) == 2000 and set(ids) == acked


async def test_chat_keeps_working_while_history_is_down(endpoints: Endpoints) -> None:
    topology = endpoints.local()
    topology.history.kill()
    a = ChatClient(endpoints.ws_urls, "outage")
    b = ChatClient(endpoints.ws_urls, "outage")
    await a.connect(0)
    await b.connect(1)
    assert [e["code"] for e in a.errors] == ["history_unavailable"]
    assert a.frames[0]["type"] == "error" and [f["type"] for f in a.frames if f["type"] != "presence"][-1] == "synced"
    sent = [await a.send(f"while down {i}") for i in range(10)]
    await a.wait_for(lambda: all(c in a.acks for c in sent))
    await b.wait_for(lambda: set(a.acks.values()) <= set(b.unique))
    late = ChatClient(endpoints.ws_urls, "outage")
    await late.connect(1)  # history still down: the ring holds what this replica delivered
    assert set(a.acks.values()) <= set(late.unique)
    topology.history.start()
    stored = await wait_stored(endpoints.history_url, "outage", 10)
    assert sorted(m["id"] for m in stored) == sorted(a.acks.values())
    for client in (a, b, late):
        await client.close()


async def test_history_api_pages_and_refuses_bad_parameters(endpoints: Endpoints) -> None:
    senders = Senders(endpoints.ws_urls, "pages", count=1)
    await senders.start(total=25)
    await senders.wait_acked(25)
    await senders.stop()
    stored = await wait_stored(endpoints.history_url, "pages", 25)
    assert [m["id"] for m in stored] == sorted(senders.acked.values())
    assert len(await fetch_all(endpoints.chat_urls[0], "pages", prefix="/api")) == 25
