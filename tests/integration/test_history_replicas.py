"""History replicas against the machine's broker (own vhost) and a real LevelDB: each ordinal's queue, dead
letters and expiry; a changed expiry; a replica whose queue is deleted by hand consuming again and copying."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiormq
from structlog.testing import capture_logs

from services.common.ids import UlidGenerator
from services.common.schema import ChatMessage
from services.common.settings import AmqpSettings, LogSettings
from services.common.topology import declare_topology, history_queues
from services.history.service import HistoryService
from services.history.settings import HistoryConfig, HistorySettings
from services.history.store import ExportPosition, RoomDigest

gen = UlidGenerator()


def vhost_of(amqp_url: str) -> str:
    return urlsplit(amqp_url).path.lstrip("/")


def list_queues(amqp_url: str) -> dict[str, dict[str, object]]:
    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "-p", vhost_of(amqp_url), "name", "arguments",
         "--formatter", "json"], check=True, capture_output=True, text=True, timeout=60,
    ).stdout
    return {queue["name"]: queue for queue in json.loads(out)}


def arguments(queue: dict[str, object]) -> dict[str, object]:
    # rabbitmqctl 3.10 prints arguments as [name, type, value] triples (newer versions: a map).
    raw = queue["arguments"]
    return dict(raw) if isinstance(raw, dict) else {name: value for name, _, value in raw}  # type: ignore[attr-defined]


async def depth(connection: aio_pika.abc.AbstractConnection, name: str) -> int:
    """Ready messages, from a passive declare (rabbitmqctl's counts of quorum queues lag by seconds)."""
    return (await _declare_ok(connection, name)).message_count or 0


async def consumers(connection: aio_pika.abc.AbstractConnection, name: str) -> int:
    return (await _declare_ok(connection, name)).consumer_count or 0


async def _declare_ok(connection: aio_pika.abc.AbstractConnection, name: str) -> aiormq.spec.Queue.DeclareOk:
    channel = await connection.channel()
    queue = await channel.declare_queue(name, passive=True)
    await channel.close()
    return queue.declaration_result


async def wait_until(predicate, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def message(room: str = "room", client_id: str | None = None) -> ChatMessage:
    msg_id, ts = gen.mint()
    return ChatMessage(msg_id, "ORIGIN01", room, "ann", f"text {msg_id}", ts, client_id)


async def test_each_ordinal_has_its_queue_its_own_dead_letters_and_an_expiry(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_topology(channel, "chat", history_queues(3, expires_s=3600))
        await declare_topology(channel, "chat", history_queues(3, expires_s=3600))  # idempotent
        await topology.exchange.publish(aio_pika.Message(message().to_wire(), delivery_mode=2), routing_key="")
        queues = list_queues(amqp_url)
        assert {"chat.history", "chat.history.1", "chat.history.2", "chat.history.dlq", "chat.history.1.dlq",
                "chat.history.2.dlq"} <= set(queues)
        assert arguments(queues["chat.history"]) == {
            "x-queue-type": "quorum", "x-dead-letter-exchange": "chat.dlx",
            "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
        assert arguments(queues["chat.history.2"])["x-expires"] == 3_600_000
        assert arguments(queues["chat.history.2.dlq"])["x-expires"] == 3_600_000
        assert "x-expires" not in arguments(queues["chat.history.dlq"])
        assert [await depth(connection, f) for f in ("chat.history", "chat.history.1", "chat.history.2")] == [1, 1, 1]

        # A message refused by replica 2 is dead-lettered to replica 2's DLQ alone.
        consumer = await connection.channel()
        queue = await consumer.get_queue("chat.history.2")
        delivery = await queue.get(timeout=5)
        assert delivery is not None
        await delivery.reject(requeue=False)
        dead_letters = ("chat.history.2.dlq", "chat.history.1.dlq", "chat.history.dlq")
        for _ in range(50):
            if await depth(connection, dead_letters[0]):
                break
            await asyncio.sleep(0.1)
        assert [await depth(connection, name) for name in dead_letters] == [1, 0, 0]
    finally:
        await connection.close()


async def test_a_changed_expiry_keeps_the_existing_queue_with_one_error_line(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await declare_topology(channel, "chat", history_queues(2, expires_s=3600))
        with capture_logs() as logs:
            topology = await declare_topology(channel, "chat", history_queues(2, expires_s=7200))
        kept = [entry for entry in logs if entry["log_level"] == "error"]
        assert [entry["queue"] for entry in kept] == ["chat.history.1.dlq", "chat.history.1"]
        assert "PRECONDITION_FAILED" in str(kept[1]["broker_said"])
        assert topology.history_queues[1].name == "chat.history.1"
        assert arguments(list_queues(amqp_url)["chat.history.1"])["x-expires"] == 3_600_000
        await channel.declare_queue("chat.history.1", passive=True)  # the channel is usable again
    finally:
        await connection.close()


def replica_config(amqp_url: str, data_dir: Path, ordinal: int, peers: str) -> HistoryConfig:
    return HistoryConfig(
        history=HistorySettings(data_dir=str(data_dir), retry_interval_s=0.2, replica=ordinal, peers=peers),
        amqp=AmqpSettings(url=amqp_url, heartbeat_s=2, history_replicas=2, history_queue_expires_s=600),
        log=LogSettings(),
    )


async def publish(amqp_url: str, messages: list[ChatMessage]) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    topology = await declare_topology(channel, "chat", history_queues(2, expires_s=600))
    for item in messages:
        await topology.exchange.publish(aio_pika.Message(item.to_wire(), delivery_mode=2), routing_key="")
    await connection.close()


async def test_a_replica_whose_queue_is_deleted_consumes_again_and_copies_again(
    amqp_url: str, tmp_path: Path
) -> None:
    # Peers that never answer: the copy finds none ready, so the replica serves what it holds ("no_peer").
    unreachable = "http://127.0.0.1:9,http://127.0.0.1:9"
    before = [message(client_id="k1"), message(client_id="k1")] + [message(room=r) for r in "abc" for _ in range(5)]
    await publish(amqp_url, before)
    with capture_logs() as logs:
        async with HistoryService(replica_config(amqp_url, tmp_path, 1, unreachable)) as service:
            await wait_until(lambda: not service.readiness_problems())
            assert service.copier.status.state == "no_peer"
            assert service.consumer.history_queue.name == "chat.history.1"
            digests = await _wait_digests(service, 16)
            assert digests == _recomputed(await service.store.export(ExportPosition(), 100_000))

            connection = await aio_pika.connect(amqp_url)
            channel = await connection.channel()
            await channel.queue_delete("chat.history.1")
            await connection.close()
            await wait_until(lambda: sum(1 for e in logs if e["event"].startswith("no ready peer")) == 2)
            await wait_until(lambda: not service.readiness_problems())
            await publish(amqp_url, [message(room="d")])
            digests = await _wait_digests(service, 17)
            connection = await aio_pika.connect(amqp_url)
            try:
                assert [await consumers(connection, name) for name in ("chat.history.1", "chat.history.1.dlq")] \
                    == [1, 1]
            finally:
                await connection.close()
    assert any(e["event"].startswith("the broker cancelled the history consumer") for e in logs)


async def _wait_digests(service: HistoryService, count: int) -> list[RoomDigest]:
    for _ in range(400):
        digests = await service.store.digests()
        if sum(d.count for d in digests) >= count:
            return digests
        await asyncio.sleep(0.05)
    raise AssertionError(f"{count} messages not stored in time")


def _recomputed(rows: list[tuple[str, str, bytes]]) -> list[RoomDigest]:
    digests: dict[str, RoomDigest] = {}
    for room, msg_id, _ in rows:
        digests.setdefault(room, RoomDigest(room)).add(msg_id)
    return [digests[room] for room in sorted(digests)]

