"""Per-origin order: ids from one replica reach every queue in id order (contract section 3).

The cursor rule is exact only if this holds, so the test also shows the failure it guards against: a
publisher that awaits between minting an id and handing the message to the channel delivers out of order.
"""

from __future__ import annotations

import asyncio
import random

import aio_pika
from pamqp import commands as spec

from services.chat.hub import Hub
from services.chat.metrics import ChatMetrics
from services.chat.relay import ChatRelay
from services.chat.ring import RecentRing
from services.common.ids import UlidGenerator
from services.common.schema import ChatMessage
from services.common.settings import AmqpSettings

SENDERS, PER_SENDER = 20, 25


async def observed_order(amqp_url: str, publish_all) -> list[str]:  # type: ignore[no-untyped-def]
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange("chat", aio_pika.ExchangeType.FANOUT, durable=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange)
    await publish_all()
    received: list[str] = []
    async with queue.iterator() as messages:
        async for message in messages:
            await message.ack()
            received.append(ChatMessage.from_wire(message.body).id)
            if len(received) == SENDERS * PER_SENDER:
                break
    await connection.close()
    return received


async def test_the_relay_keeps_per_origin_order_under_concurrent_senders(amqp_url: str) -> None:
    settings = AmqpSettings(url=amqp_url)
    relay = ChatRelay(settings, Hub(), RecentRing(10_000), ChatMetrics.create(), "ORIGIN01")
    connection = await aio_pika.connect(amqp_url)
    await relay.setup(connection)

    async def sender(index: int) -> None:
        for n in range(PER_SENDER):
            for _ in range(random.randint(0, 3)):  # vary the interleaving between senders
                await asyncio.sleep(0)
            await relay.publish("r", None, f"{index}-{n}", None)

    async def publish_all() -> None:
        await asyncio.gather(*(sender(i) for i in range(SENDERS)))

    try:
        received = await observed_order(amqp_url, publish_all)
    finally:
        await relay.on_lost()
        await connection.close()
    assert received == sorted(received)


async def test_awaiting_between_mint_and_publish_breaks_the_order(amqp_url: str) -> None:
    """The regression this design guards against, shown on the same broker with a naive publisher."""
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    underlay = await channel.get_underlay_channel()
    ids = UlidGenerator()
    rng = random.Random(7)

    async def naive_sender(index: int) -> None:
        for n in range(PER_SENDER):
            msg_id, ts = ids.mint()
            for _ in range(rng.randint(0, 5)):  # e.g. an idempotency lookup or a log call that yields
                await asyncio.sleep(0)
            body = ChatMessage(msg_id, "NAIVE001", "r", None, f"{index}-{n}", ts).to_wire()
            await underlay.basic_publish(
                body, exchange="chat", properties=spec.Basic.Properties(delivery_mode=2), wait=False
            )

    async def publish_all() -> None:
        await asyncio.gather(*(naive_sender(i) for i in range(SENDERS)))

    try:
        received = await observed_order(amqp_url, publish_all)
    finally:
        await connection.close()
    assert received != sorted(received)
