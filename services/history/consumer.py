"""The durable subscriber: consume this replica's history queue, store in synced LevelDB batches, then ack.

Replica 0 consumes ``chat.history`` and ``chat.history.dlq``; replica n >= 1 ``chat.history.<n>`` and its own
``chat.history.<n>.dlq`` (``services.common.topology.history_queue``). When the broker cancels the consumer (the
queue was deleted by hand, or expired), the consumer redeclares the queue, consumes again and calls
``on_queue_recreated``: what was routed to the deleted queue is gone, so the service copies it from a peer.

A delivery is acked only after the batch holding it is on disk, so a crash at any point leaves it in the
queue; the store's idempotent write makes the redelivery harmless.

A failed write (disk full) never returns deliveries to the queue. On RabbitMQ 4 a quorum queue dead-letters a
message after ``delivery-limit`` (default 20) returns, and 4.0-4.2 count every return: nack, reject with requeue,
and a channel closed with the message unacked (4.3 stops counting nack). So the consumer cancels its broker
consumers (``basic.cancel``: a quorum queue keeps a cancelled consumer's unacked messages checked out to it,
uncounted) and holds the failed batch and what arrived behind it; the service is unready; a probe write every
``retry_interval_s`` lets the held deliveries be written and acked and consumption resume. Only a lost connection
(a crash, a broker restart) returns them, one count each.

What still reaches the dead-letter queue (20 crash-restarts under load, or a message an operator moved there) is
consumed too, on a channel of its own: readable messages are written like any other (idempotently: one already
stored is dropped) and acked; unreadable ones are held unacked, so they stay in the DLQ, and are counted
(``durable_chat_dlq_unreadable_messages``) and logged.

One drain task per connection takes deliveries in order, writes each batch and acks it with ``multiple`` up to
its last tag on the main channel: every lower tag there was settled before (acked or rejected by this same task,
in order). Dead letters are acked one by one: their channel holds unreadable ones unacked.
A write is never abandoned and then acked past: stopping (``drain``) cancels the broker consumer and waits for
the task to write and ack what it holds; if it must be cancelled (too slow, or the connection is gone), nothing
after it is acked on that channel, and the unacked deliveries return to the queue with the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractQueue
from aiormq.abc import AbstractChannel as RawChannel
from aiormq.abc import DeliveredMessage

from services.common.amqp import channel_gone, unless_channel_gone
from services.common.lifecycle import Faults, cancel_and_wait, stop_within
from services.common.schema import ChatMessage, InvalidMessage
from services.common.settings import AmqpSettings
from services.common.topology import HistoryQueue, declare_topology, replica_queue
from services.history.metrics import HistoryMetrics
from services.history.settings import HistorySettings
from services.history.store import ThreadedStore, WriteResult

log = structlog.get_logger(__name__)
DRAIN_TIMEOUT_S = 8.0  # within the runner's shutdown budget; past it, what is unacked is redelivered


class HistoryConsumer:
    """Entered after the broker link, so that it leaves first and drains over a live connection."""

    def __init__(
        self,
        store: ThreadedStore,
        settings: HistorySettings,
        amqp: AmqpSettings,
        metrics: HistoryMetrics,
        faults: Faults | None = None,
        on_queue_recreated: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self.history_queue: HistoryQueue = replica_queue(amqp, settings.ordinal)
        self._on_queue_recreated = on_queue_recreated
        self._aio_channel: AbstractChannel | None = None
        self._settings = settings
        self._amqp = amqp
        self._metrics = metrics
        self._faults = faults or Faults()
        self._queue: AbstractQueue | None = None
        self._channel: RawChannel | None = None
        self._dlq_channel: RawChannel | None = None
        self._consumer_tag: str | None = None
        self._dlq_consumer_tag: str | None = None
        self._unreadable_dead_letters = 0
        self._pending: list[DeliveredMessage] = []
        self._has_pending = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._retry_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._writing = 0  # deliveries in the batch being written
        self.storage_failed = False
        self.attached = asyncio.Event()  # set while consuming: the copier starts only once our queue is consumed
        # Deliveries taken from the broker and settled (written, or set aside as unreadable), in delivery order:
        # once `settled` reaches what `received` was at some moment, everything delivered before it is stored.
        self.received = 0
        self.settled = 0

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
        self.received = self.settled  # what the lost connection held comes back as new deliveries
        self._consumer_tag = self._dlq_consumer_tag = None
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self._amqp.prefetch)
        topology = await declare_topology(channel, self._amqp.exchange, [self.history_queue])
        self._queue = topology.history_queue
        self._aio_channel = channel
        self._channel = await channel.get_underlay_channel()
        self._channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        dlq_channel = await connection.channel(publisher_confirms=False)
        await dlq_channel.set_qos(prefetch_count=self._amqp.prefetch)
        self._dlq_channel = await dlq_channel.get_underlay_channel()
        self._dlq_channel.on_consumer_cancel_callbacks.add(self._on_broker_cancel)
        self._tasks = tasks
        self._drain_task = tasks.create_task(self._drain_loop(), name="history-drain")
        if self.storage_failed:
            self._start_retry()
        elif not self._stopping:
            await self._start_consuming()
        self._metrics.broker_connected.set(1)
        return [channel, dlq_channel]

    async def on_lost(self) -> None:
        # Unacked deliveries return to the queue with the connection; forget them here.
        self._consumer_tag = self._dlq_consumer_tag = None
        self._metrics.consuming.set(0)
        self.attached.clear()
        self._count_unreadable(-self._unreadable_dead_letters)  # the held ones went back to the DLQ
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
        assert self._dlq_channel is not None
        result = await self._dlq_channel.basic_consume(self.history_queue.dead_letter_queue, self._on_delivery)
        self._dlq_consumer_tag = result.consumer_tag
        self._metrics.consuming.set(1)
        self.attached.set()

    async def _cancel_consumer(self) -> None:
        """``basic.cancel``: no more deliveries; those received stay ours, unacked, until we settle them."""
        tags = [(self._channel, self._consumer_tag), (self._dlq_channel, self._dlq_consumer_tag)]
        self._consumer_tag = self._dlq_consumer_tag = None
        self._metrics.consuming.set(0)
        self.attached.clear()
        for channel, tag in tags:
            if tag is not None and channel is not None:
                with unless_channel_gone():
                    await channel.basic_cancel(tag)

    async def _on_broker_cancel(self, frame: object) -> None:
        """The broker cancelled a consumer of ours: its queue was deleted (by hand, or expired)."""
        tag = getattr(frame, "consumer_tag", None)
        if tag is None or tag not in (self._consumer_tag, self._dlq_consumer_tag):
            return
        log.error(
            "the broker cancelled the history consumer (queue deleted?); redeclaring it and copying what it lost",
            queue=self.history_queue.name, consumer_tag=tag,
        )
        # Runs inside the channel's frame reader: an RPC awaited here would wait for a reply that reader must read.
        lost_messages = tag == self._consumer_tag
        if self._tasks is not None and not self._stopping:
            self._tasks.create_task(self._reattach(lost_messages), name="history-reattach")

    async def _reattach(self, lost_messages: bool) -> None:
        assert self._aio_channel is not None
        await self._cancel_consumer()
        try:
            topology = await declare_topology(self._aio_channel, self._amqp.exchange, [self.history_queue])
            self._queue = topology.history_queue
            if not self.storage_failed and not self._stopping:
                await self._start_consuming()
        except Exception as exc:
            if not channel_gone(exc):
                raise
            # the connection is going: the link reconnects and consumes again
            log.warning("could not redeclare the history queue; the broker link reconnects", error=repr(exc)[:300])
            return
        log.info("history queue redeclared and consumed again", queue=self.history_queue.name)
        if lost_messages and self._on_queue_recreated is not None:
            self._on_queue_recreated()

    async def _on_delivery(self, message: DeliveredMessage) -> None:
        # Called once per delivery by aiormq; it only queues, one drain task does the work in batches.
        self.received += 1
        self._pending.append(message)
        self._has_pending.set()

    async def _drain_loop(self) -> None:
        linger = self._settings.batch_linger_ms / 1000
        while True:
            if not self._pending or self.storage_failed:
                if self._stopping:
                    return  # what is held stays unacked: the broker redelivers it
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
                await self._unreadable(delivery, exc)
        if not accepted:
            self.settled += len(batch)
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
        self.settled += len(batch)
        await self._ack(accepted)
        self._record(result, len(accepted))

    async def _ack(self, written: list[DeliveredMessage]) -> None:
        main = [d for d in written if d.channel is not self._dlq_channel]
        if main:
            # Acking the newest delivery with `multiple` settles the whole batch in one frame.
            await _settle(main[-1].channel.basic_ack(_tag(main[-1]), multiple=True), "ack")
        dead_letters = [d for d in written if d.channel is self._dlq_channel]
        for delivery in dead_letters:
            await _settle(delivery.channel.basic_ack(_tag(delivery)), "ack")
        if dead_letters:
            self._metrics.dlq_stored.inc(len(dead_letters))
            log.warning("dead letters written to history", count=len(dead_letters))

    async def _unreadable(self, delivery: DeliveredMessage, exc: InvalidMessage) -> None:
        if delivery.channel is self._dlq_channel:
            # Held unacked, so it stays in the DLQ for an operator; a requeue would only spend its delivery count.
            log.error("unreadable message left in the dead-letter queue", error=str(exc), size=len(delivery.body))
            self._count_unreadable(1)
            return
        log.error("unreadable delivery dead-lettered", error=str(exc), size=len(delivery.body))
        self._metrics.dead_lettered.inc()
        await _settle(delivery.channel.basic_reject(_tag(delivery), requeue=False), "reject")

    def _count_unreadable(self, change: int) -> None:
        self._unreadable_dead_letters += change
        self._metrics.dlq_unreadable.set(self._unreadable_dead_letters)
        if change > 0 and self._unreadable_dead_letters >= self._amqp.prefetch:
            log.error(
                "the dead-letter queue's prefetch is full of unreadable messages; readable ones behind them wait",
                held=self._unreadable_dead_letters,
            )

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
        self.storage_failed = True
        # Held in front of what arrived behind them, so tags are still written and acked in order.
        self._pending[:0] = batch
        log.error(
            "storage write failed; stopped consuming, holding the deliveries until a write succeeds",
            error=repr(exc)[:300], held=len(self._pending),
        )
        await self._cancel_consumer()
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
            log.info("storage writable again; writing the held deliveries and resuming consumption")
            self._has_pending.set()
            if not self._stopping:
                with unless_channel_gone():  # a lost channel: the link reconnects and consumes
                    await self._start_consuming()


async def _settle(frame: Awaitable[object], what: str) -> None:
    """Send an ack, nack or reject; a closed channel already returned its deliveries to the queue."""
    try:
        await frame
    except Exception as exc:
        if not channel_gone(exc):
            raise
        log.warning("could not settle deliveries; the broker redelivers them", frame=what, error=repr(exc)[:200])


def _tag(delivery: DeliveredMessage) -> int:
    tag = delivery.delivery_tag
    assert tag is not None, "a consumed delivery always has a tag"
    return tag
