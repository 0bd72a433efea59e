"""The durable subscriber: consume ``chat.history``, store in synced LevelDB batches, then ack.

A delivery is acked only after the batch holding it is on disk, so a crash at any point leaves it in the
queue; the store's idempotent write makes the redelivery harmless. When a write fails (disk full), the batch
is requeued once, the consumer is cancelled and the service goes unready; a probe write every
``retry_interval_s`` resumes consuming when the disk takes writes again, instead of requeueing in a loop.

One drain task per connection takes deliveries in order, writes each batch and acks it with ``multiple`` up to
its last tag: every lower tag on that channel was settled before (acked, rejected or nacked by this same task).
A write is never abandoned and then acked past: stopping (``drain``) cancels the broker consumer and waits for
the task to write and ack what it holds; if it must be cancelled (too slow, or the connection is gone), nothing
after it is acked on that channel, and the unacked deliveries return to the queue with the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from types import TracebackType

import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage

from services.common.lifecycle import Faults, cancel_and_wait, stop_within
from services.common.schema import ChatMessage, InvalidMessage
from services.common.settings import AmqpSettings
from services.common.topology import declare_topology
from services.history.metrics import HistoryMetrics
from services.history.settings import HistorySettings
from services.history.store import ThreadedStore, WriteResult

log = structlog.get_logger(__name__)
DRAIN_TIMEOUT_S = 8.0  # within the runner's shutdown budget; past it, what is unacked is redelivered
_CHANNEL_GONE = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


class HistoryConsumer:
    """Entered after the broker link, so that it leaves first and drains over a live connection."""

    def __init__(
        self,
        store: ThreadedStore,
        settings: HistorySettings,
        amqp: AmqpSettings,
        metrics: HistoryMetrics,
        faults: Faults | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._amqp = amqp
        self._metrics = metrics
        self._faults = faults or Faults()
        self._queue: AbstractQueue | None = None
        self._channel: RawChannel | None = None
        self._consumer_tag: str | None = None
        self._pending: list[DeliveredMessage] = []
        self._has_pending = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._retry_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._writing = 0  # deliveries in the batch being written
        self.storage_failed = False

    @property
    def consuming(self) -> bool:
        return self._consumer_tag is not None

    async def __aenter__(self) -> HistoryConsumer:
        self._stopping = False
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.drain()

    async def setup(self, connection: AbstractConnection, tasks: asyncio.TaskGroup) -> list[AbstractChannel]:
        """Run by the broker link at every (re)connect; the tasks live as long as this connection."""
        self._pending = []
        self._consumer_tag = None
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self._amqp.prefetch)
        topology = await declare_topology(channel, self._amqp.exchange, self._amqp.history_queue)
        self._queue = topology.history_queue
        self._channel = await channel.get_underlay_channel()
        self._tasks = tasks
        self._drain_task = tasks.create_task(self._drain_loop(), name="history-drain")
        if self.storage_failed:
            self._start_retry()
        elif not self._stopping:
            await self._start_consuming()
        self._metrics.broker_connected.set(1)
        return [channel]

    async def on_lost(self) -> None:
        # Unacked deliveries return to the queue with the connection; forget them here.
        self._consumer_tag = None
        self._metrics.consuming.set(0)
        self._tasks = None
        tasks = [task for task in (self._drain_task, self._retry_task) if task is not None]
        self._drain_task = self._retry_task = None
        await cancel_and_wait(tasks)
        self._pending = []

    async def drain(self) -> None:
        """Stop taking deliveries, then write and ack what was already received; a clean stop acks everything."""
        self._stopping = True
        await self._cancel_consumer()
        retry, self._retry_task = self._retry_task, None
        if retry is not None:
            await cancel_and_wait([retry])
        self._has_pending.set()
        task = self._drain_task
        if task is not None:
            log.info("draining: consumer cancelled", writing=self._writing, pending=len(self._pending))
            if await stop_within(task, DRAIN_TIMEOUT_S, "history drain"):
                log.info("drained: every delivery received was written and acked")

    async def _start_consuming(self) -> None:
        assert self._queue is not None and self._channel is not None
        # Consume on aiormq's channel: aio-pika would wrap every delivery in an IncomingMessage and a second
        # task (~30 us of Python per message); the drain loop only needs bodies and delivery tags.
        result = await self._channel.basic_consume(self._queue.name, self._on_delivery)
        self._consumer_tag = result.consumer_tag
        self._metrics.consuming.set(1)

    async def _cancel_consumer(self) -> None:
        tag, self._consumer_tag = self._consumer_tag, None
        self._metrics.consuming.set(0)
        if tag is not None and self._channel is not None:
            with contextlib.suppress(*_CHANNEL_GONE):
                await self._channel.basic_cancel(tag)

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        # Called once per delivery by aiormq; it only queues, one drain task does the work in batches.
        self._pending.append(message)
        self._has_pending.set()

    async def _drain_loop(self) -> None:
        linger = self._settings.batch_linger_ms / 1000
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._has_pending.clear()
                await self._has_pending.wait()
                continue
            if len(self._pending) < self._settings.batch_max and linger and not self._stopping:
                await asyncio.sleep(linger)
            # Stopping: what is left is bounded by the prefetch, and one synced write is quicker than several.
            batch = self._pending[: len(self._pending) if self._stopping else self._settings.batch_max]
            del self._pending[: len(batch)]
            self._faults.crash("history.drain")
            await self._flush(batch)

    async def _flush(self, batch: list[DeliveredMessage]) -> None:
        readable: list[tuple[ChatMessage, bytes]] = []
        accepted: list[DeliveredMessage] = []
        for delivery in batch:
            try:
                readable.append((ChatMessage.from_wire(delivery.body), delivery.body))
                accepted.append(delivery)
            except InvalidMessage as exc:
                log.error("unreadable delivery dead-lettered", error=str(exc), size=len(delivery.body))
                self._metrics.dead_lettered.inc()
                await _settle(delivery.channel.basic_reject(_tag(delivery), requeue=False), "reject")
        if not accepted:
            return
        started = time.perf_counter()
        self._writing = len(readable)
        try:
            result = await self._store.write(readable)
        except Exception as exc:
            await self._storage_failed(accepted, exc)
            return
        finally:
            self._writing = 0
        self._metrics.batch_seconds.observe(time.perf_counter() - started)
        # Acking the newest accepted delivery with `multiple` settles the whole batch in one frame.
        await _settle(accepted[-1].channel.basic_ack(_tag(accepted[-1]), multiple=True), "ack")
        self._record(result, len(accepted))

    def _record(self, result: WriteResult, size: int) -> None:
        self._metrics.batch_size.observe(size)
        self._metrics.stored.inc(len(result.stored))
        self._metrics.duplicates.labels(key="id").inc(result.duplicate_ids)
        self._metrics.duplicates.labels(key="client_id").inc(result.duplicate_client_ids)
        if result.stored:
            now_ms = time.time() * 1000
            for message in result.stored:
                self._metrics.lag.observe(max(0.0, (now_ms - message.ts) / 1000))
            self._metrics.newest_stored_ts.set(max(m.ts for m in result.stored) / 1000)

    async def _storage_failed(self, batch: list[DeliveredMessage], exc: Exception) -> None:
        self._metrics.store_failures.inc()
        log.error("storage write failed; requeued and stopped consuming", error=repr(exc)[:300], batch=len(batch))
        self.storage_failed = True
        await self._cancel_consumer()
        pending, self._pending = self._pending, []
        await _settle(batch[-1].channel.basic_nack(_tag(batch[-1]), multiple=True, requeue=True), "nack")
        for delivery in pending:
            await _settle(delivery.channel.basic_nack(_tag(delivery), requeue=True), "nack")
        self._start_retry()

    def _start_retry(self) -> None:
        if self._tasks is not None and not self._stopping and (self._retry_task is None or self._retry_task.done()):
            self._retry_task = self._tasks.create_task(self._retry_storage(), name="history-storage-retry")

    async def _retry_storage(self) -> None:
        while self.storage_failed:
            await asyncio.sleep(self._settings.retry_interval_s)
            try:
                await self._store.reopen()
                await self._store.probe()
            except Exception as exc:
                log.warning("storage still failing", error=repr(exc)[:300])
                continue
            self.storage_failed = False
            log.info("storage writable again; resuming consumption")
            if not self._stopping:
                with contextlib.suppress(*_CHANNEL_GONE):  # a lost channel: the link reconnects and consumes
                    await self._start_consuming()


async def _settle(frame: Awaitable[object], what: str) -> None:
    """Send an ack, nack or reject; a closed channel already returned its deliveries to the queue."""
    try:
        await frame
    except _CHANNEL_GONE as exc:
        log.warning("could not settle deliveries; the broker redelivers them", frame=what, error=repr(exc)[:200])


def _tag(delivery: DeliveredMessage) -> int:
    tag = delivery.delivery_tag
    assert tag is not None, "a consumed delivery always has a tag"
    return tag
