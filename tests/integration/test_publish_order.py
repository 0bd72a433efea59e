"""Per-origin order: ids from one replica reach every queue in id order (contract section 3).

The cursor rule is exact only if this holds, so the test also shows the failure it guards against: a
publisher that awaits between minting an id and handing the message to the channel delivers out of order.
Each sender draws its awaits from its own seeded RNG before it starts, so the interleaving is the same on every
run: the negative case reorders by construction, never by luck (contract section 3).
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
SEED = 20261129


def await_counts(index: int, most: int) -> list[int]:
    """How many times sender INDEX yields before each of its messages: fixed by the seed, not by scheduling."""
    rng = random.Random(SEED * 1000 + index)
    return [rng.randint(0, most) for _ in range(PER_SENDER)]


async def yield_times(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


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

    async def sender(index: int) -> None:
        for n, count in enumerate(await_counts(index, 3)):
            await yield_times(count)  # vary the interleaving between senders
            await relay.publish("r", None, f"{index}-{n}", None)

    async def publish_all() -> None:
        await asyncio.gather(*(sender(i) for i in range(SENDERS)))

    try:
        async with asyncio.TaskGroup() as tasks:
            await relay.setup(connection, tasks)
            try:
                received = await observed_order(amqp_url, publish_all)
            finally:
                await relay.on_lost()
    finally:
        await connection.close()
    assert received == sorted(received)


async def test_awaiting_between_mint_and_publish_breaks_the_order(amqp_url: str) -> None:
    """The regression this design guards against, shown on the same broker with a naive publisher."""
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    underlay = await channel.get_underlay_channel()
    ids = UlidGenerator()
    handed_over: list[str] = []  # ids in the order they reach basic_publish

    async def naive_sender(index: int) -> None:
        for n, count in enumerate(await_counts(index, 5)):
            msg_id, ts = ids.mint()
            await yield_times(count)  # e.g. an idempotency lookup or a log call that yields
            body = ChatMessage(msg_id, "NAIVE001", "r", None, f"{index}-{n}", ts).to_wire()
            handed_over.append(msg_id)
            await underlay.basic_publish(
                body, exchange="chat", properties=spec.Basic.Properties(delivery_mode=2), wait=False
            )

    async def publish_all() -> None:
        await asyncio.gather(*(naive_sender(i) for i in range(SENDERS)))

    try:
        received = await observed_order(amqp_url, publish_all)
    finally:
        await connection.close()
    # The seeded schedule hands ids over out of mint order (a large share of them, not one by chance), the broker
    # delivers them in hand-over order, so the queue sees them out of id order.
    out_of_place = sum(a != b for a, b in zip(handed_over, sorted(handed_over), strict=True))
    assert out_of_place > len(handed_over) // 2
    assert received == handed_over
    assert received != sorted(received)
