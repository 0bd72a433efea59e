"""Chat replicas declare every history replica's queue at start (AMQP_HISTORY_REPLICAS): a message published
before a history replica ever ran waits in its queue for it, and the chat replicas show that queue's backlog."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.e2e.chaos.conftest import metric
from tests.e2e.chaos.replicas import room_count
from tests.support.load import Senders
from tests.support.procs import LocalTopology


async def test_a_message_published_before_a_history_replica_ever_ran_waits_for_it(
    vhost_url: str, tmp_path: Path
) -> None:
    topology = LocalTopology(vhost_url, tmp_path, history_replicas=2)
    never_ran = topology.histories[1]
    never_ran.env["HISTORY_PEERS"] = ""  # no peer to copy from: what it gets, it gets from its own queue
    senders = Senders([c.ws_url for c in topology.chats], "early", count=2)
    try:
        await asyncio.to_thread(topology.history.start)
        for chat in topology.chats:
            await asyncio.to_thread(chat.start)
        await senders.start(total=60)
        await senders.wait_acked(60)
        gauge = 'queue="chat.history.1"'
        for _ in range(50):  # the chat replicas poll every second
            waiting = await asyncio.to_thread(metric, topology.chats[0].url, "durable_chat_history_queue_messages",
                                              gauge)
            if waiting == 60:
                break
            await asyncio.sleep(0.2)
        assert waiting == 60, f"chat.history.1 should hold the 60 messages for its replica, the gauge says {waiting}"
        consumers = await asyncio.to_thread(metric, topology.chats[0].url, "durable_chat_history_queue_consumers",
                                            gauge)
        assert consumers == 0

        await asyncio.to_thread(never_ran.start)
        for _ in range(100):
            if await room_count(never_ran.url, "early") == 60:
                break
            await asyncio.sleep(0.2)
        assert await room_count(never_ran.url, "early") == 60
        assert await room_count(topology.history.url, "early") == 60
    finally:
        await senders.stop()
        topology.stop()
