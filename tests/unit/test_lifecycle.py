"""Ownership and crashes: the broker link's supervision, the consumer's drain, the supervisor, injected faults.

The broker and the store are faked here (a connection whose close the test controls, a store whose write the
test holds); tests/integration and tests/e2e run the same paths on a real broker, LevelDB and processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from structlog.testing import capture_logs

from services.common import amqp
from services.common.amqp import BrokerLink
from services.common.ids import UlidGenerator
from services.common.lifecycle import Faults, InjectedFault, Supervisor, Unrecoverable
from services.common.schema import ChatMessage
from services.common.settings import AmqpSettings, LogSettings
from services.history import consumer as consumer_module
from services.history.consumer import HistoryConsumer
from services.history.metrics import HistoryMetrics
from services.history.service import HistoryService
from services.history.settings import HistoryConfig, HistorySettings
from services.history.store import PageQuery, StoreClosed, ThreadedStore, WriteResult

ids = UlidGenerator()


async def eventually(predicate: Callable[[], bool], timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class FakeConnection:
    def __init__(self) -> None:
        self._closed = asyncio.Event()

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    async def closed(self) -> None:
        await self._closed.wait()

    async def close(self) -> None:
        self._closed.set()


class FakeLink(BrokerLink):
    """The real link with the network step replaced: every connect succeeds with a fresh fake connection."""

    def __init__(self, setup: Any, supervisor: Supervisor, on_lost: Any = None) -> None:
        super().__init__(AmqpSettings(reconnect_max_s=0.05), "test", setup, supervisor, on_lost)
        self.connections: list[FakeConnection] = []

    async def _connect(self, url: str) -> Any:
        self.connections.append(FakeConnection())
        return self.connections[-1]


class CrashingOwner:
    """An owner whose per-connection task raises when told to, like a fan-out or drain loop hitting a bug."""

    def __init__(self) -> None:
        self.setups = 0
        self.losses = 0
        self.crash_now = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def setup(self, connection: Any, tasks: asyncio.TaskGroup) -> list[Any]:
        self.setups += 1
        self.crash_now.clear()
        self.tasks.append(tasks.create_task(self._loop(), name="owner-loop"))
        return []

    async def on_lost(self) -> None:
        self.losses += 1
        for task in self.tasks:
            task.cancel()

    async def _loop(self) -> None:
        await self.crash_now.wait()
        raise ZeroDivisionError("bug in the loop")


def crash_logs(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"].startswith("background task crashed")]


async def test_a_crashed_connection_task_is_logged_unready_and_rebuilt_by_a_reconnect() -> None:
    owner = CrashingOwner()
    async with Supervisor("test") as supervisor:
        link = FakeLink(owner.setup, supervisor, owner.on_lost)
        with capture_logs() as logs:
            async with link:
                await eventually(lambda: link.ready)
                owner.crash_now.set()
                await eventually(lambda: not link.ready)
                assert link.connections[0].is_closed, "the crashed task's connection is dropped"
                await eventually(lambda: link.ready and owner.setups == 2)
        assert supervisor.failure is None
    [crash] = crash_logs(logs)
    assert crash["log_level"] == "error"
    assert isinstance(crash["exc_info"], BaseExceptionGroup)
    assert isinstance(crash["exc_info"].exceptions[0], ZeroDivisionError), "the traceback of the task is logged"
    assert owner.losses == 2, "on_lost after the crash, and again when the link stops"


async def test_a_task_that_keeps_crashing_makes_the_process_give_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(amqp, "CRASH_LIMIT", 2)
    fatal: list[BaseException] = []
    owner = CrashingOwner()
    async with Supervisor("test", on_fatal=fatal.append) as supervisor:
        link = FakeLink(owner.setup, supervisor, owner.on_lost)
        async with link:
            for _ in range(3):
                await eventually(lambda: link.ready or bool(fatal))
                owner.crash_now.set()
                await eventually(lambda: not link.ready)
            await eventually(lambda: bool(fatal))
            assert supervisor.failure == "broker-link-test"
            assert not link.ready
    assert isinstance(fatal[0], Unrecoverable)
    assert owner.setups == 3


async def test_stopping_the_link_runs_on_lost_so_the_owners_tasks_end() -> None:
    owner = CrashingOwner()
    async with Supervisor("test") as supervisor:
        link = FakeLink(owner.setup, supervisor, owner.on_lost)
        async with link:
            await eventually(lambda: link.ready)
        assert owner.losses == 1
        assert all(task.done() for task in owner.tasks)
        assert link.connections[0].is_closed


async def test_a_supervised_task_that_dies_is_fatal_and_logged_with_its_traceback() -> None:
    fatal: list[BaseException] = []

    async def broken() -> None:
        raise KeyError("boom")

    with capture_logs() as logs:
        async with Supervisor("test", on_fatal=fatal.append) as supervisor:
            supervisor.spawn(broken(), "broken-task")
            await eventually(lambda: bool(fatal))
    assert supervisor.failure == "broken-task"
    assert isinstance(fatal[0], KeyError)
    [entry] = [e for e in logs if e["event"].startswith("unrecoverable failure")]
    assert isinstance(entry["exc_info"], KeyError)


def test_faults_are_off_unless_named_and_count_down() -> None:
    Faults().crash("history.drain")  # nothing set: no fault
    faults = Faults("history.drain.crash=2, history.write.delay_s=0.25")
    for _ in range(2):
        with pytest.raises(InjectedFault):
            faults.crash("history.drain")
    faults.crash("history.drain")
    faults.crash("chat.fanout")
    assert faults.delay_s("history.write") == 0.25
    always = Faults("chat.fanout.crash=-1")
    for _ in range(5):
        with pytest.raises(InjectedFault):
            always.crash("chat.fanout")


# --- the history consumer's drain, on a fake channel and store ---------------------------------------------


class FakeRawChannel:
    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []
        self.nacks: list[tuple[int, bool]] = []
        self.on_delivery: Callable[[DeliveredMessage], Awaitable[None]] | None = None
        self.cancelled = False
        self.is_closed = False
        self.tags = 0
        self.on_consumer_cancel_callbacks: set[Any] = set()

    async def basic_consume(self, queue: str, callback: Any) -> Any:
        self.on_delivery = callback
        return SimpleNamespace(consumer_tag="ctag")

    async def basic_cancel(self, tag: str) -> None:
        self.cancelled = True

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        self.nacks.append((tag, multiple))

    async def basic_reject(self, tag: int, requeue: bool = True) -> None:
        self.nacks.append((tag, False))

    async def deliver(self, count: int, body: bytes | None = None) -> None:
        assert self.on_delivery is not None
        for _ in range(count):
            msg_id, ts = ids.mint()
            body = body or ChatMessage(msg_id, "ORIGIN01", "r", "ann", "hi", ts).to_wire()
            self.tags += 1
            deliver = spec.Basic.Deliver(consumer_tag="ctag", delivery_tag=self.tags, exchange="chat", routing_key="")
            await self.on_delivery(DeliveredMessage(deliver, None, body, self))  # type: ignore[arg-type]


class FakeAioChannel:
    """Just enough of aio-pika's channel for declare_topology and the consumer's setup."""

    def __init__(self, raw: FakeRawChannel) -> None:
        self.raw = raw

    async def set_qos(self, prefetch_count: int) -> None:
        return None

    async def declare_exchange(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(name=name)

    async def declare_queue(self, name: str, *args: Any, **kwargs: Any) -> Any:
        async def bind(exchange: Any, routing_key: str = "") -> None:
            return None

        return SimpleNamespace(name=name, bind=bind)

    async def get_underlay_channel(self) -> FakeRawChannel:
        return self.raw


class FakeAioConnection:
    def __init__(self) -> None:
        self.channels: list[FakeRawChannel] = []

    @property
    def raw(self) -> FakeRawChannel:
        """The consumer's main channel (chat.history); the second one consumes the dead-letter queue."""
        return self.channels[0]

    async def channel(self, publisher_confirms: bool = False) -> FakeAioChannel:
        self.channels.append(FakeRawChannel())
        return FakeAioChannel(self.channels[-1])


class HeldStore:
    """A store whose writes wait for the test to release them, like a slow disk."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.writing = asyncio.Event()
        self.written: list[str] = []

    async def write(self, messages: list[tuple[ChatMessage, bytes]]) -> WriteResult:
        self.writing.set()
        await self.release.wait()
        self.written += [message.id for message, _ in messages]
        return WriteResult(stored=[message for message, _ in messages])


def consumer_on(store: object, faults: Faults | None = None) -> HistoryConsumer:
    settings = HistorySettings(batch_max=5, batch_linger_ms=0, retry_interval_s=0.02)
    return HistoryConsumer(store, settings, AmqpSettings(), HistoryMetrics.create(), faults)  # type: ignore[arg-type]


async def test_a_graceful_stop_waits_for_the_write_in_flight_then_writes_and_acks_the_rest() -> None:
    store = HeldStore()
    consumer = consumer_on(store)
    connection = FakeAioConnection()
    async with asyncio.TaskGroup() as tasks:
        async with consumer:
            await consumer.setup(connection, tasks)  # type: ignore[arg-type]
            await connection.raw.deliver(12)
            await store.writing.wait()  # the first batch of 5 is on the "disk", 7 wait behind it
            stopping = asyncio.create_task(consumer.__aexit__(None, None, None))
            await asyncio.sleep(0.1)
            assert connection.raw.cancelled, "a stop first cancels the broker consumer"
            assert not stopping.done(), "it does not cancel the write in flight"
            assert connection.raw.acks == []
            store.release.set()
            await stopping
        await consumer.on_lost()
    assert len(store.written) == 12
    assert connection.raw.acks == [(5, True), (12, True)], "the batch in flight, then the 7 behind it in one write"


async def test_a_stop_that_must_cancel_a_write_acks_nothing_past_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "DRAIN_TIMEOUT_S", 0.2)
    store = HeldStore()
    consumer = consumer_on(store)
    connection = FakeAioConnection()
    async with asyncio.TaskGroup() as tasks:
        await consumer.setup(connection, tasks)  # type: ignore[arg-type]
        await connection.raw.deliver(12)
        await store.writing.wait()
        await consumer.drain()  # the write never finishes within the drain timeout
        await consumer.on_lost()
    assert connection.raw.acks == [], "nothing is acked: the unwritten deliveries return to the queue"


async def test_a_crash_in_the_drain_loop_surfaces_in_the_connections_task_group_and_acks_nothing() -> None:
    store = HeldStore()
    store.release.set()
    consumer = consumer_on(store, Faults("history.drain.crash=1"))
    connection = FakeAioConnection()
    with pytest.raises(BaseExceptionGroup) as crashed:
        async with asyncio.TaskGroup() as tasks:
            await consumer.setup(connection, tasks)  # type: ignore[arg-type]
            await connection.raw.deliver(3)
            await asyncio.sleep(1)  # cancelled by the crash
    assert isinstance(crashed.value.exceptions[0], InjectedFault)
    assert connection.raw.acks == [] and store.written == []


class FailingStore:
    """A store whose next ``failures`` writes raise, like a disk that fills and frees."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[str] = []

    async def write(self, messages: list[tuple[ChatMessage, bytes]]) -> WriteResult:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        self.written += [message.id for message, _ in messages]
        return WriteResult(stored=[message for message, _ in messages])

    async def reopen(self) -> None:
        return None

    async def probe(self) -> None:
        return None


async def test_a_storage_failure_holds_the_deliveries_instead_of_returning_them_to_the_queue() -> None:
    """On RabbitMQ 4 every return spends one of a message's 20 deliveries; 25 failures must spend none."""
    store = FailingStore(failures=25)
    consumer = consumer_on(store)
    connection = FakeAioConnection()
    async with asyncio.TaskGroup() as tasks:
        await consumer.setup(connection, tasks)  # type: ignore[arg-type]
        await connection.raw.deliver(12)
        await eventually(lambda: consumer.storage_failed)
        assert connection.raw.cancelled, "it stops taking deliveries"
        await eventually(lambda: len(store.written) == 12 and consumer.consuming)
        assert not consumer.storage_failed
        await consumer.on_lost()
    assert store.failures == 0
    assert connection.raw.nacks == [], "nothing was returned to the queue"
    assert connection.raw.acks[-1] == (12, True)


async def test_readable_dead_letters_are_stored_and_acked_unreadable_ones_held_and_counted() -> None:
    store = HeldStore()
    store.release.set()
    consumer = consumer_on(store)
    connection = FakeAioConnection()
    async with asyncio.TaskGroup() as tasks:
        await consumer.setup(connection, tasks)  # type: ignore[arg-type]
        dlq = connection.channels[1]
        await dlq.deliver(3)
        await dlq.deliver(2, body=b"not a message")
        await eventually(lambda: len(store.written) == 3)
        await eventually(lambda: consumer._metrics.dlq_unreadable._value.get() == 2)
        assert dlq.acks == [(1, False), (2, False), (3, False)], "one by one: the unreadable stay unacked"
        assert dlq.nacks == [], "unreadable dead letters are neither requeued nor dropped"
        assert consumer._metrics.dlq_stored._value.get() == 3
        await consumer.on_lost()
    assert consumer._metrics.dlq_unreadable._value.get() == 0, "returned to the DLQ with the connection"


# --- LevelDB is the lifespan's, not the constructor's -------------------------------------------------------


def test_constructing_the_history_service_does_not_open_leveldb(tmp_path: Path) -> None:
    """Opening takes LevelDB's lock: an app built twice (or imported by a tool) must not hold it."""
    data_dir = tmp_path / "db"
    config = HistoryConfig(history=HistorySettings(data_dir=str(data_dir)), amqp=AmqpSettings(), log=LogSettings())
    HistoryService(config)
    HistoryService(config)
    assert not data_dir.exists()


async def test_the_store_is_open_only_inside_its_context(tmp_path: Path) -> None:
    store = ThreadedStore(str(tmp_path / "db"))
    assert store.closed
    async with store:
        assert not store.closed
        assert await store.page(PageQuery(room="r", limit=10)) == []
    assert store.closed
    with pytest.raises(StoreClosed):
        await store.page(PageQuery(room="r", limit=10))
