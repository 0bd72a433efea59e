"""The history service in-process against a real broker and a real LevelDB on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import orjson

from services.common.ids import UlidGenerator
from services.common.schema import ChatMessage
from services.common.settings import AmqpSettings, LogSettings
from services.common.topology import DEAD_LETTER_QUEUE, declare_topology
from services.history.service import HistoryService
from services.history.settings import HistoryConfig, HistorySettings
from services.history.store import PageQuery

gen = UlidGenerator()


def message(client_id: str | None = None, author: str | None = "ann") -> ChatMessage:
    msg_id, ts = gen.mint()
    return ChatMessage(msg_id, "ORIGIN01", "room", author, f"text {msg_id}", ts, client_id)


async def publish(amqp_url: str, bodies: list[bytes]) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    topology = await declare_topology(channel, "chat", "chat.history")
    for body in bodies:
        await topology.exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key="", mandatory=True)
    await connection.close()


async def queue_depth(amqp_url: str, name: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(name, passive=True)
    await connection.close()
    return int(queue.declaration_result.message_count or 0)


def config(amqp_url: str, data_dir: Path) -> HistoryConfig:
    return HistoryConfig(
        history=HistorySettings(data_dir=str(data_dir), retry_interval_s=0.2),
        amqp=AmqpSettings(url=amqp_url, heartbeat_s=2),
        log=LogSettings(),
    )


async def wait_until(predicate, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def stored(service: HistoryService) -> list[dict[str, object]]:
    return [orjson.loads(b) for b in await service.store.page(PageQuery(room="room", limit=1000))]


async def wait_stored(service: HistoryService, count: int) -> list[dict[str, object]]:
    for _ in range(400):
        messages = await stored(service)
        if len(messages) >= count and not service.readiness_problems():
            return messages
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} messages not stored in time")


async def test_what_was_published_before_history_ever_ran_is_stored_once(amqp_url: str, tmp_path: Path) -> None:
    first = message(client_id="k1")
    resend_new_id = message(client_id="k1")  # a resend that reached the broker twice, under a new id
    plain = [message() for _ in range(50)]
    bodies = [first.to_wire(), first.to_wire(), resend_new_id.to_wire()] + [m.to_wire() for m in plain]
    await publish(amqp_url, bodies + [b"not json", b'{"v":1,"id":"bad"}'])

    async with HistoryService(config(amqp_url, tmp_path)) as service:
        await wait_stored(service, 51)
        await wait_until(lambda: service.metrics.dead_lettered._value.get() == 2)
        assert [m["id"] for m in await stored(service)] == sorted([first.id] + [m.id for m in plain])
        assert service.metrics.duplicates.labels(key="id")._value.get() == 1
        assert service.metrics.duplicates.labels(key="client_id")._value.get() == 1
    assert await queue_depth(amqp_url, "chat.history") == 0
    assert await queue_depth(amqp_url, DEAD_LETTER_QUEUE) == 2
