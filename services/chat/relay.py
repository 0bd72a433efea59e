"""The replica's broker side: publish client messages with confirms, consume its own queue into the hub.

Per-origin order. Ids from one replica must reach every queue in id order, or a client's cursor could skip a
message. ``publish`` therefore mints the id and enters aiormq's ``basic_publish`` in one synchronous step
(no ``await`` in between), on one publishing channel; aiormq writes frames in lock order, which is call order.
The consumer never requeues: a requeued message would come back out of order.

Lifetime. The relay is an async context manager entered after the broker link: leaving it stops consuming and lets
the fan-out loop hand what it already received to the clients before the link closes the connection. Its tasks live
in the link's per-connection ``TaskGroup``; one that crashes takes the connection down and is rebuilt at reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from types import TracebackType

import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from services.chat.catchup import HistoryStanding, QueueStats
from services.chat.hub import Entry, Hub
from services.chat.metrics import ChatMetrics
from services.chat.ring import RecentRing
from services.common.amqp import channel_gone
from services.common.ids import UlidGenerator
from services.common.lifecycle import Faults, cancel_and_wait, stop_within
from services.common.schema import ChatMessage, InvalidMessage, message_frame_from_wire
from services.common.settings import AmqpSettings
from services.common.topology import declare_replica_queue, declare_topology, replica_queue, replica_queues

log = structlog.get_logger(__name__)
# Every second: a sync trusts that history has caught up only on a recent poll (services/chat/catchup.py).
QUEUE_POLL_INTERVAL_S = 1.0
# History queues beyond AMQP_HISTORY_REPLICAS are looked for up to this ordinal (the setting's own bound).
MAX_HISTORY_ORDINAL = 64
DRAIN_TIMEOUT_S = 5.0


class PublishFailed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ChatRelay:
    def __init__(
        self,
        amqp: AmqpSettings,
        hub: Hub,
        ring: RecentRing,
        metrics: ChatMetrics,
        origin: str,
        ids: UlidGenerator | None = None,
        on_fanout: Callable[[int], None] | None = None,
        faults: Faults | None = None,
        standing: HistoryStanding | None = None,
    ) -> None:
        self._amqp = amqp
        self._hub = hub
        self._ring = ring
        self._metrics = metrics
        self.origin = origin
        self._ids = ids or UlidGenerator()
        self._publish_channel: aiormq.abc.AbstractChannel | None = None
        self._consumer: tuple[aiormq.abc.AbstractChannel, str] | None = None
        self._inbox: list[DeliveredMessage] = []
        self._has_inbox = asyncio.Event()
        self._draining = False
        self._fanout: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._on_fanout = on_fanout
        self._faults = faults or Faults()
        self._standing = standing or HistoryStanding([])
        self._exported_queues: set[str] = set()

    @property
    def ready(self) -> bool:
        channel = self._publish_channel
        return self._consumer is not None and channel is not None and not channel.is_closed

    async def __aenter__(self) -> ChatRelay:
        self._draining = False
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.drain()

    async def setup(self, connection: AbstractConnection, tasks: asyncio.TaskGroup) -> list[AbstractChannel]:
        """Run by the broker link at every (re)connect: topology, own queue, consumer, pollers."""
        publish_channel = await connection.channel(publisher_confirms=True)
        # Every history replica's queue, so a message published before a replica ever ran waits for it.
        topology = await declare_topology(publish_channel, self._amqp.exchange, replica_queues(self._amqp))
        consume_channel = await connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=self._amqp.prefetch)
        queue = await declare_replica_queue(consume_channel, topology.exchange)
        self._inbox = []
        self._standing.reset()  # a new queue: what was routed to the old one is history's alone to hold
        self._fanout = tasks.create_task(self._fanout_loop(), name="relay-fanout")
        self._tasks = [self._fanout, tasks.create_task(self._poll_history_queue(connection), name="relay-queue-poll")]
        # Consume on aiormq's channel: aio-pika would wrap every delivery in an IncomingMessage and a second
        # task (~30 us of Python per message), and this consumer only needs the body and the delivery tag.
        underlay = await consume_channel.get_underlay_channel()
        consumed = await underlay.basic_consume(queue.name, self._on_delivery)
        assert consumed.consumer_tag is not None
        self._consumer = (underlay, consumed.consumer_tag)
        self._publish_channel = await publish_channel.get_underlay_channel()
        self._metrics.broker_connected.set(1)
        log.info("replica queue bound", queue=queue.name, origin=self.origin)
        return [publish_channel, consume_channel]

    async def on_lost(self) -> None:
        self._publish_channel = None
        self._consumer = None
        self._standing.reset()
        self._metrics.broker_connected.set(0)
        tasks, self._tasks, self._fanout = self._tasks, [], None
        await cancel_and_wait(tasks)

    async def drain(self) -> None:
        """Stop consuming, hand what was received to the clients, stop the tasks; the link closes the rest."""
        self._draining = True
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            channel, tag = consumer
            with contextlib.suppress(Exception):  # a closed channel has no consumer left to cancel
                await channel.basic_cancel(tag)
        self._has_inbox.set()
        if self._fanout is not None:
            await stop_within(self._fanout, DRAIN_TIMEOUT_S, "relay fan-out")
        await cancel_and_wait([task for task in self._tasks if not task.done()])

    async def publish(self, room: str, author: str | None, text: str, client_id: str | None) -> ChatMessage:
        """Publish persistently with a confirm; return the accepted message or raise PublishFailed."""
        channel = self._publish_channel
        if channel is None or channel.is_closed:
            self._metrics.publish_failures.labels(reason="disconnected").inc()
            raise PublishFailed("not connected to the broker")
        started = time.perf_counter()
        # From here to basic_publish's lock there must be no await: see the module docstring.
        msg_id, ts = self._ids.mint()
        message = ChatMessage(
            id=msg_id, origin=self.origin, room=room, author=author, text=text, ts=ts, client_id=client_id
        )
        try:
            confirmation = await channel.basic_publish(
                message.to_wire(),
                exchange=self._amqp.exchange,
                routing_key="",
                properties=spec.Basic.Properties(
                    delivery_mode=2, content_type="application/json", message_id=msg_id
                ),
                mandatory=True,
                timeout=self._amqp.publish_timeout_s,
                wait=False,  # do not hold the channel lock until the frame is flushed; order is kept anyway
            )  # type: ignore[call-arg]  # aiormq's Channel takes `wait`; its abstract base does not declare it
        except TimeoutError:
            raise self._failed("timeout") from None
        except aiormq.exceptions.DeliveryError:
            raise self._failed("nack") from None
        except Exception as exc:
            if not channel_gone(exc):
                raise
            log.warning("publish failed", error=repr(exc)[:200])
            raise self._failed("disconnected") from None
        except asyncio.CancelledError:
            # aiormq hands the reader task's CancelledError to pending confirms when it tears a dead connection
            # down (missed heartbeats). Unless this task itself is being cancelled, that is a lost connection.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.warning("publish failed: connection torn down while waiting for the confirm")
            raise self._failed("disconnected") from None
        if not isinstance(confirmation, spec.Basic.Ack):
            raise self._failed("returned")
        self._metrics.confirm_seconds.observe(time.perf_counter() - started)
        self._metrics.published.inc()
        return message

    def _failed(self, reason: str) -> PublishFailed:
        self._metrics.publish_failures.labels(reason=reason).inc()
        return PublishFailed(reason)

    async def _on_delivery(self, delivery: DeliveredMessage) -> None:
        # aiormq calls this once per delivery; it only queues, the fan-out task handles batches.
        self._inbox.append(delivery)
        self._has_inbox.set()

    async def _fanout_loop(self) -> None:
        while True:
            if not self._inbox:
                if self._draining:
                    return
                self._has_inbox.clear()
                await self._has_inbox.wait()
                # One more turn of the loop: aiormq hands each delivery of a socket read to a task of its own,
                # and the rest of them land in the inbox now. A bigger batch is fewer writes per client.
                await asyncio.sleep(0)
                continue
            batch, self._inbox = self._inbox, []
            self._faults.crash("chat.fanout")
            items = self._decode(batch)
            for message, frame in items:
                self._ring.add(message, frame)
            deliveries = self._hub.dispatch(items)
            self._metrics.delivered.inc(deliveries)
            if self._on_fanout is not None:
                self._on_fanout(deliveries)
            with contextlib.suppress(Exception):  # a closed channel: the link reconnects and clients resume
                last = batch[-1]
                if last.delivery_tag is not None:
                    await last.channel.basic_ack(last.delivery_tag, multiple=True)

    def _decode(self, batch: list[DeliveredMessage]) -> list[Entry]:
        items = []
        now_ms = time.time() * 1000
        for delivery in batch:
            try:
                message = ChatMessage.from_wire(delivery.body)
                frame = message_frame_from_wire(delivery.body)
            except InvalidMessage as exc:
                log.error("unreadable message dropped by replica", error=str(exc), size=len(delivery.body))
                continue
            self._metrics.delivery_lag.observe(max(0.0, (now_ms - message.ts) / 1000))
            items.append((message, frame))
        self._metrics.received.inc(len(batch))
        return items

    async def _poll_history_queue(self, connection: AbstractConnection) -> None:
        """Export every history queue's backlog and consumers from here too, so their alerts fire while a history
        replica is down or gone (scaled down: its queue then only fills); note which replicas caught up."""
        poller = _QueuePoller(connection)
        while True:
            try:
                stats = await self._history_queue_stats(poller)
                self._export(stats)
                await self._standing.observe(stats)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("history queue poll failed", error=repr(exc)[:200])
                poller.channel = None
                self._standing.reset()
            await asyncio.sleep(QUEUE_POLL_INTERVAL_S)

    async def _history_queue_stats(self, poller: _QueuePoller) -> dict[str, QueueStats]:
        """Every history queue of an ordinal below AMQP_HISTORY_REPLICAS that exists (one can expire), then those
        above it up to the first that does not exist (left by a scale-down)."""
        stats: dict[str, QueueStats] = {}
        for ordinal in range(MAX_HISTORY_ORDINAL):
            name = replica_queue(self._amqp, ordinal).name
            found = await poller.stats(name)
            if found is not None:
                stats[name] = found
            elif ordinal >= self._amqp.history_replicas:
                break
        return stats

    def _export(self, stats: dict[str, QueueStats]) -> None:
        for gone in self._exported_queues - stats.keys():  # deleted (expired): no stale series left behind
            self._metrics.history_queue_messages.remove(gone)
            self._metrics.history_queue_consumers.remove(gone)
        for name, queue in stats.items():
            self._metrics.history_queue_messages.labels(queue=name).set(queue.ready)
            self._metrics.history_queue_consumers.labels(queue=name).set(queue.consumers)
        self._exported_queues = set(stats)


class _QueuePoller:
    """Passive declares on a channel of its own; a queue that does not exist closes it, so it is opened again."""

    def __init__(self, connection: AbstractConnection) -> None:
        self._connection = connection
        self.channel: AbstractChannel | None = None

    async def stats(self, name: str) -> QueueStats | None:
        if self.channel is None or self.channel.is_closed:
            self.channel = await self._connection.channel(publisher_confirms=False)
        try:
            result = (await self.channel.declare_queue(name, passive=True)).declaration_result
        except aiormq.exceptions.ChannelNotFoundEntity:
            self.channel = None
            return None
        return QueueStats(result.message_count or 0, result.consumer_count or 0)
