"""Crashed loops and graceful stops, in-process on a real broker and a real LevelDB.

Faults are injected the way the e2e tests do it in real processes: ``DURABLE_CHAT_TEST_FAULTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from structlog.testing import capture_logs

from services.chat.hub import Subscriber
from services.chat.relay import PublishFailed
from services.chat.service import ChatService
from services.chat.settings import ChatConfig, ChatSettings
from services.common.ids import UlidGenerator
from services.common.lifecycle import TEST_FAULTS_ENV, InjectedFault
from services.common.schema import ChatMessage, SendRequest
from services.common.settings import AmqpSettings, LogSettings
from services.common.topology import declare_topology
from services.history.service import HistoryService
from services.history.settings import HistoryConfig, HistorySettings
from services.history.store import PageQuery, ThreadedStore

ids = UlidGenerator()


class Readiness:
    """Samples a readiness predicate every 10 ms, so a short unready stretch is seen."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.samples: list[bool] = []
        self._task = asyncio.ensure_future(self._sample(ready))

    async def _sample(self, ready: Callable[[], bool]) -> None:
        while True:
            self.samples.append(ready())
            await asyncio.sleep(0.01)

    def went_unready_after_ready(self) -> bool:
        first_ready = self.samples.index(True) if True in self.samples else len(self.samples)
        return False in self.samples[first_ready:]

    def stop(self) -> None:
        self._task.cancel()


async def until(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def crashes(logs: list[dict[str, Any]]) -> list[BaseException]:
    return [e["exc_info"] for e in logs if e["event"].startswith("background task crashed")]


def injected(group: BaseException) -> bool:
    return isinstance(group, BaseExceptionGroup) and isinstance(group.exceptions[0], InjectedFault)


async def publish(amqp_url: str, count: int) -> list[str]:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True)
    topology = await declare_topology(channel, "chat", "chat.history")
    minted = []
    for n in range(count):
        msg_id, ts = ids.mint()
        body = ChatMessage(msg_id, "ORIGIN01", "room", "ann", f"text {n}", ts).to_wire()
        await topology.exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key="", mandatory=True)
        minted.append(msg_id)
    await connection.close()
    return minted


async def drain_queue(amqp_url: str) -> list[str]:
    """Ids of what is still in chat.history (taken out of it)."""
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue("chat.history", passive=True)
    left = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        left.append(ChatMessage.from_wire(message.body).id)
    await connection.close()
    return left


def history_config(amqp_url: str, data_dir: Path) -> HistoryConfig:
    return HistoryConfig(
        history=HistorySettings(data_dir=str(data_dir), retry_interval_s=0.2),
        amqp=AmqpSettings(url=amqp_url, heartbeat_s=2, reconnect_max_s=0.2),
        log=LogSettings(),
    )


async def stored_ids(service: HistoryService) -> list[str]:
    return [orjson.loads(b)["id"] for b in await service.store.page(PageQuery(room="room", limit=10_000))]


async def test_a_crash_in_the_relay_fan_out_loop_is_logged_unready_and_recovered(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_FAULTS_ENV, "chat.fanout.crash=1")
    config = ChatConfig(
        chat=ChatSettings(history_url="http://127.0.0.1:9"),
        amqp=AmqpSettings(url=amqp_url, heartbeat_s=2, reconnect_max_s=0.2),
        log=LogSettings(),
    )
    with capture_logs() as logs:
        async with ChatService(config) as service:
            await until(lambda: service.ready)
            readiness = Readiness(lambda: service.ready)
            with contextlib.suppress(PublishFailed):  # the crash can close the connection before the confirm
                await service.accept("room", "ann", SendRequest(text="first", client_id="k1"))
            await until(lambda: bool(crashes(logs)))
            await until(lambda: service.ready)
            await service.accept("room", "ann", SendRequest(text="second", client_id="k2"))
            await until(lambda: service.metrics.received._value.get() >= 1)
            readiness.stop()
    [crash] = crashes(logs)
    assert injected(crash), "the crash is logged with the loop's own exception and traceback"
    assert readiness.went_unready_after_ready()


async def test_a_crash_in_the_history_drain_loop_is_logged_unready_and_recovered(
    amqp_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_FAULTS_ENV, "history.drain.crash=1")
    minted = await publish(amqp_url, 50)
    with capture_logs() as logs:
        async with HistoryService(history_config(amqp_url, tmp_path)) as service:
            readiness = Readiness(lambda: not service.readiness_problems())
            await until(lambda: bool(crashes(logs)))
            for _ in range(400):
                if len(await stored_ids(service)) == 50 and not service.readiness_problems():
                    break
                await asyncio.sleep(0.05)
            readiness.stop()
            assert await stored_ids(service) == minted
    [crash] = crashes(logs)
    assert injected(crash)
    assert False in readiness.samples
    assert await drain_queue(amqp_url) == []


async def test_a_graceful_stop_during_slow_writes_acks_only_what_it_stored(
    amqp_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_FAULTS_ENV, "history.write.delay_s=0.3")
    minted = await publish(amqp_url, 600)
    async with HistoryService(history_config(amqp_url, tmp_path)) as service:
        await until(lambda: service.metrics.stored._value.get() > 0)  # writes are under way: stop among them
    left = await drain_queue(amqp_url)
    async with ThreadedStore(str(tmp_path)) as store:
        stored = [orjson.loads(b)["id"] for b in await store.page(PageQuery(room="room", limit=10_000))]
    acked = set(minted) - set(left)
    assert acked <= set(stored), f"{len(acked - set(stored))} acked but not stored"
    assert len(stored) == len(set(stored))
    assert acked and left, f"the stop happened among the writes ({len(acked)} acked, {len(left)} left)"


async def test_leaving_a_replica_closes_its_clients_1012_before_the_broker_link(amqp_url: str) -> None:
    config = ChatConfig(
        chat=ChatSettings(history_url="http://127.0.0.1:9"),
        amqp=AmqpSettings(url=amqp_url, heartbeat_s=2, reconnect_max_s=0.2),
        log=LogSettings(),
    )
    closed: list[tuple[int, bool]] = []
    async with ChatService(config) as service:
        await until(lambda: service.ready)

        async def send_text(text: str) -> None:
            return None

        async def close(code: int, reason: str) -> None:
            closed.append((code, service.ready))
            service.hub.unsubscribe(subscriber)  # what the connection's handler does once its socket is closed

        subscriber = Subscriber("room", send_text, close, 10, False)
        service.hub.subscribe(subscriber)
    assert closed == [(1012, True)], "closed with 1012 while the replica was still connected"
    assert len(service.hub) == 0
