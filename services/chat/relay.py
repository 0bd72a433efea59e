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

from services.chat.catchup import HistoryCatchUp, HistoryProgress
from services.chat.hub import Entry, Hub
from services.chat.metrics import ChatMetrics
from services.chat.ring import RecentRing
from services.common.ids import UlidGenerator
from services.common.lifecycle import Faults, cancel_and_wait, stop_within
from services.common.schema import ChatMessage, InvalidMessage, message_frame_from_wire
from services.common.settings import AmqpSettings
from services.common.topology import declare_replica_queue, declare_topology

log = structlog.get_logger(__name__)
# Every second: a sync trusts that history has caught up only on a recent poll (services/chat/catchup.py).
QUEUE_POLL_INTERVAL_S = 1.0
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
        catch_up: HistoryCatchUp | None = None,
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
        self._catch_up = catch_up or HistoryCatchUp(_no_progress)

    @property
    def history_caught_up(self) -> bool:
        """Whether history has stored what was published before this replica's queue was bound (see sync)."""
        return self._catch_up.caught_up

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
        topology = await declare_topology(publish_channel, self._amqp.exchange, self._amqp.history_queue)
        consume_channel = await connection.channel(publisher_confirms=False)
        await consume_channel.set_qos(prefetch_count=self._amqp.prefetch)
        queue = await declare_replica_queue(consume_channel, topology.exchange)
        self._inbox = []
        self._catch_up.reset()  # a new queue: what was routed to the old one is history's alone to hold
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
        self._catch_up.reset()
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
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
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
        """Export the history backlog from here too, so its alert fires while the history service is down; note
        whether history has caught up with its queue."""
        channel: AbstractChannel | None = None
        while True:
            try:
                if channel is None or channel.is_closed:
                    channel = await connection.channel(publisher_confirms=False)
                queue = await channel.declare_queue(self._amqp.history_queue, passive=True)
                result = queue.declaration_result
                self._metrics.history_queue_messages.set(result.message_count or 0)
                self._metrics.history_queue_consumers.set(result.consumer_count or 0)
                await self._catch_up.observe(result.message_count or 0, result.consumer_count or 0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("history queue poll failed", error=repr(exc)[:200])
                channel = None
                self._catch_up.reset()
            await asyncio.sleep(QUEUE_POLL_INTERVAL_S)


async def _no_progress() -> HistoryProgress | None:
    return None
