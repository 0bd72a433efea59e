"""Presence and typing across two real replicas on a real broker (contract section 10).

Heartbeats every second and a 3 s TTL, so that a killed replica's members vanish within the test's patience.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.history import fetch_all

HEARTBEAT_S, TTL_S = 1.0, 3.0
pytestmark = pytest.mark.topology_env(
    {"CHAT_PRESENCE_HEARTBEAT_S": str(HEARTBEAT_S), "CHAT_PRESENCE_TTL_S": str(TTL_S)}
)


async def presence_of(base_url: str, room: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        response = await http.get(f"/api/rooms/{room}/presence")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def until(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.1)


def counter(metrics_text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in metrics_text.splitlines() if line.startswith(name))


async def test_members_joins_leaves_typing_and_opt_out_across_two_replicas(endpoints: Endpoints) -> None:
    urls = endpoints.ws_urls
    ann = ChatClient(urls, "lobby", name="ann")
    bob = ChatClient(urls, "lobby", name="bob")
    ann_again = ChatClient(urls, "lobby", name="ann")
    anonymous = ChatClient(urls, "lobby")
    silent = ChatClient(urls, "lobby", name="sil", presence=False)
    elsewhere = ChatClient(urls, "other", name="eve")
    clients = [ann, bob, ann_again, anonymous, silent, elsewhere]
    try:
        await ann.connect(0)
        await ann.wait_for(lambda: bool(ann.presence_events), timeout=5)
        assert ann.presence_events[0]["type"] == "presence" and set(ann.members) == {"ann"}
        synced_at = next(i for i, f in enumerate(ann.frames) if f["type"] == "synced")
        assert ann.frames[synced_at + 1]["type"] == "presence"  # right after `synced`
        # Presence is eventually consistent: a join reaches the other replica after a flush (50 ms) and a hop.
        await until(lambda: _has(endpoints.chat_urls[1], "lobby", {"ann": 1}, occupancy=1))
        await bob.connect(1)
        await ann.wait_for(lambda: "bob" in ann.members, timeout=5)
        assert {"type": "join", "room": "lobby", "author": "bob"} in ann.presence_events
        await bob.wait_for(lambda: bool(bob.presence_events), timeout=5)
        assert set(bob.members) == {"ann", "bob"}  # the snapshot holds the member on the other replica

        await ann_again.connect(1)  # the same author on the other replica: one member, two connections
        await anonymous.connect(0)
        await silent.connect(1)
        await elsewhere.connect(0)
        for base in endpoints.chat_urls:  # every replica answers for the cluster
            await until(lambda b=base: _has(b, "lobby", {"ann": 2, "bob": 1}, occupancy=5))
        assert [f["type"] for f in bob.presence_events].count("join") == 0, bob.presence_events  # not news
        assert "sil" not in ann.members and silent.presence_events == []

        # Typing: only the room, only the others, at most one per author per 2 s, never acked, never stored.
        for _ in range(3):
            await ann.send_typing()
        await bob.wait_for(lambda: bob.typing_from() == ["ann"], timeout=5)
        await anonymous.wait_for(lambda: anonymous.typing_from() == ["ann"], timeout=5)
        await asyncio.sleep(0.5)
        assert bob.typing_from() == ["ann"] and anonymous.typing_from() == ["ann"]
        assert {"type": "typing", "room": "lobby", "author": "ann"} in bob.presence_events
        assert ann.typing_from() == ann_again.typing_from() == elsewhere.typing_from() == []
        assert silent.presence_events == [] and not ann.acks and not ann.errors
        await asyncio.sleep(2.0)
        await ann.send_typing()
        await bob.wait_for(lambda: bob.typing_from() == ["ann", "ann"], timeout=5)

        await bob.close()
        await ann.wait_for(lambda: "bob" not in ann.members, timeout=5)
        assert {"type": "leave", "room": "lobby", "author": "bob"} in ann.presence_events
        await ann_again.close()
        await asyncio.sleep(0.5)
        assert "ann" in ann.members  # still connected once: no leave
        assert {"type": "leave", "room": "lobby", "author": "ann"} not in anonymous.presence_events
        assert silent.presence_events == []
        assert all(f["type"] != "typing" or f["author"] != "eve" for f in ann.presence_events)
    finally:
        for client in clients:
            await client.close()
    # Presence never reaches the `chat` exchange: history stores none of it and no replica consumed a message.
    assert await fetch_all(endpoints.history_url, "lobby") == []
    async with httpx.AsyncClient(timeout=5) as http:
        texts = [(await http.get(f"{base}/metrics")).text for base in endpoints.chat_urls]
    assert [counter(text, "durable_chat_messages_received_total") for text in texts] == [0, 0]
    # Both typing events went out from ann's replica and came in at the other one, over the presence exchange.
    typing = 'durable_chat_presence_messages_total{direction="%s",kind="typing"}'
    assert [counter(text, typing % "out") for text in texts] == [2, 0]
    assert [counter(text, typing % "in") for text in texts] == [0, 2]


async def _has(base_url: str, room: str, connections: dict[str, int], occupancy: int) -> bool:
    body = await presence_of(base_url, room)
    listed = {m["author"]: m["connections"] for m in body["members"]}
    return listed == connections and body["occupancy"] == occupancy


async def test_a_killed_replicas_members_vanish_within_the_ttl(endpoints: Endpoints) -> None:
    topology = endpoints.local()
    ann = ChatClient(endpoints.ws_urls, "kill", name="ann")
    bob = ChatClient(endpoints.ws_urls, "kill", name="bob")
    try:
        await ann.connect(0)
        await bob.connect(1)
        await ann.wait_for(lambda: "bob" in ann.members, timeout=5)
        await asyncio.sleep(HEARTBEAT_S * 1.5)  # at least one heartbeat of replica 1 has been taken
        topology.chats[1].kill()
        killed = time.monotonic()
        await ann.wait_for(lambda: "bob" not in ann.members, timeout=TTL_S + 5)
        assert time.monotonic() - killed <= TTL_S + 1.5  # TTL, plus a sweep interval and scheduling
        assert {"type": "leave", "room": "kill", "author": "bob"} in ann.presence_events
        assert await _has(endpoints.chat_urls[0], "kill", {"ann": 1}, occupancy=1)

        # A replica that restarts rebuilds its view from the others' heartbeats (its hello asks for them).
        topology.chats[1].start()
        await until(lambda: _has(endpoints.chat_urls[1], "kill", {"ann": 1}, occupancy=1), timeout=5)
        await bob.reconnect(1)
        await ann.wait_for(lambda: "bob" in ann.members, timeout=5)
    finally:
        await ann.close()
        await bob.close()
