"""RabbitMQ 4's quorum-queue delivery limit never turns a storage outage into dead letters (issue 10, item 6).

Since 4.0 a quorum queue dead-letters a message after 20 returns (default ``delivery-limit``), and 4.0-4.2 count
every return. The history service holds what it could not write instead of returning it, and stores what reaches
``chat.history.dlq`` anyway. Real processes on a private RabbitMQ 4 node; storage failures are injected with
``DURABLE_CHAT_TEST_FAULTS`` (the next N batch writes raise, as on a full disk).
"""

from __future__ import annotations

import aio_pika
import httpx
import pytest

from services.common.ids import UlidGenerator
from services.common.lifecycle import TEST_FAULTS_ENV
from services.common.schema import ChatMessage
from services.common.topology import DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE
from tests.e2e.conftest import Endpoints
from tests.support.history import wait_stored
from tests.support.load import Senders

FAILURES = 25


async def ready_count(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


def metric(base_url: str, name: str) -> float:
    for line in httpx.get(f"{base_url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


@pytest.mark.rabbitmq("4")
@pytest.mark.topology_env({TEST_FAULTS_ENV: f"history.write.crash={FAILURES}", "HISTORY_RETRY_INTERVAL_S": "0.1"})
async def test_25_storage_failures_in_a_row_under_load_dead_letter_nothing(endpoints: Endpoints) -> None:
    topology = endpoints.local()
    senders = Senders(endpoints.ws_urls, "full-disk", count=4)
    await senders.start()
    await senders.wait_acked(200)

    def failures_logged() -> bool:
        return topology.history.tail(5000).count("storage write failed") >= FAILURES

    await senders.clients[0].wait_for(failures_logged, timeout=60)
    await senders.wait_acked(len(senders.acked) + 100)  # and load goes on after the recovery
    await senders.stop()
    acked = set(senders.acked.values())
    stored = await wait_stored(endpoints.history_url, "full-disk", len(acked))
    ids = [m["id"] for m in stored]
    assert len(ids) == len(set(ids)), "stored once"
    assert acked - set(ids) == set(), "acked but not stored"
    assert metric(topology.history.url, "durable_chat_store_failures_total") == FAILURES
    assert await ready_count(topology.amqp_url, DEAD_LETTER_QUEUE) == 0, "no message was dead-lettered"
    assert metric(topology.history.url, "durable_chat_dlq_messages_stored_total") == 0


@pytest.mark.rabbitmq("4")
async def test_readable_dead_letters_are_stored_once_and_unreadable_ones_stay_counted(endpoints: Endpoints) -> None:
    """What reached the DLQ anyway (20 crash-restarts under load, say) is stored; what cannot be read stays."""
    topology = endpoints.local()
    ids = UlidGenerator()
    readable = []
    for n in range(30):
        msg_id, ts = ids.mint()
        readable.append(ChatMessage(msg_id, "ORIGIN01", "dead", "ann", f"dead letter {n}", ts))
    connection = await aio_pika.connect(topology.amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    dlx = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
    bodies = [m.to_wire() for m in readable] + [m.to_wire() for m in readable[:5]] + [b"not json", b"{}"]
    for body in bodies:  # 5 dead-lettered twice: stored once
        await dlx.publish(aio_pika.Message(body, delivery_mode=2), routing_key="")
    await connection.close()
    stored = await wait_stored(endpoints.history_url, "dead", 30)
    assert sorted(m["id"] for m in stored) == sorted(m.id for m in readable)
    assert metric(topology.history.url, "durable_chat_dlq_unreadable_messages") == 2
    assert metric(topology.history.url, "durable_chat_dlq_messages_stored_total") == 35
    topology.history.terminate()
    assert await ready_count(topology.amqp_url, DEAD_LETTER_QUEUE) == 2, "the unreadable stay in the DLQ"

