"""Presence and typing, the replica's side: its connections in, frames out, and the `chat.presence` exchange.

Apart from the durable path by construction: a fanout exchange of its own (``<AMQP_EXCHANGE>.presence``, never
``chat``, so history stores none of it), transient messages without confirms, and its own connection (a second
``BrokerLink``), exclusive auto-delete queue and consumer, so that a burst of presence traffic never queues in
front of messages, and a presence channel that fails never closes the clients. The queue drops its oldest
messages past a length bound and after ``CHAT_PRESENCE_TTL_S``: presence that old is stale anyway.

What goes out: joins and leaves of this replica's connections, batched for ``FLUSH_DELAY_S`` into one ``state``
message (the current counts of what changed, never increments, so a lost message is repaired by the next one);
the whole state every ``CHAT_PRESENCE_HEARTBEAT_S`` in parts of ``CHAT_PRESENCE_HEARTBEAT_CHUNK`` entries;
typing events, batched the same way (one message per flush, not per event: each costs a publish here and a
delivery at every other replica); ``hello`` at every (re)connect, which makes every other replica heartbeat soon,
and ``bye`` when the replica stops. Frames to clients go only to connections that take part (``presence`` not
``0``) and have had their `synced`, through ``Subscriber.push``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType

import aiormq
import orjson
import structlog
from aio_pika import ExchangeType
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from services.chat.hub import Subscriber
from services.chat.metrics import ChatMetrics
from services.chat.presence import (
    InvalidPresence,
    PresenceMessage,
    PresenceView,
    Snapshot,
    Ticket,
    Transition,
    TypingThrottle,
    Verdict,
)
from services.chat.settings import ChatSettings
from services.common.settings import AmqpSettings

log = structlog.get_logger(__name__)
FLUSH_DELAY_S = 0.05  # joins and leaves of one burst of connections go out as one message
HELLO_ANSWER_MAX_S = 1.0  # a hello is answered with a heartbeat within this (jittered: not all at once)
OUTBOX_MAX = 10_000  # messages waiting for the presence channel; more are dropped (presence is best effort)
QUEUE_MAX_LENGTH = 100_000
TRANSIENT = spec.Basic.Properties(delivery_mode=1, content_type="application/json")


def presence_exchange(amqp: AmqpSettings) -> str:
    return f"{amqp.exchange}.presence"


def now_ms() -> int:
    return int(time.time() * 1000)


class PresenceRelay:
    def __init__(
        self,
        settings: ChatSettings,
        amqp: AmqpSettings,
        metrics: ChatMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._exchange = presence_exchange(amqp)
        self._metrics = metrics
        self.origin = ""
        self.view = PresenceView(settings.presence_ttl_s, settings.presence_max_members_per_room, clock)
        self._sent_typing = TypingThrottle(
            settings.presence_typing_throttle_s, settings.presence_typing_max_entries, clock
        )
        self._shown_typing = TypingThrottle(
            settings.presence_typing_throttle_s, settings.presence_typing_max_entries, clock
        )
        self._listeners: dict[str, dict[Subscriber, str | None]] = {}  # room -> presence-on subscriber -> author
        self._dirty: dict[str, set[str]] = {}  # room -> authors whose counts here changed since the last flush
        self._typing_out: list[tuple[str, str]] = []  # (room, author) typing here since the last flush
        self._outbox: deque[PresenceMessage] = deque()
        self._wakeup = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._inbox: list[DeliveredMessage] = []
        self._has_inbox = asyncio.Event()
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._sweeper: asyncio.Task[None] | None = None
        metrics.presence_members.set_function(lambda: self.view.local_members)
        metrics.presence_occupancy.set_function(lambda: self.view.local_connections)

    # ---- lifetime

    async def __aenter__(self) -> PresenceRelay:
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="presence-sweep")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        # The clients are gone by now (the service closes them first): tell the others at once, not by TTL.
        self._outbox.clear()
        self._dirty.clear()
        self._typing_out.clear()
        await self._publish(PresenceMessage("bye", self.origin, now_ms()))

    async def setup(self, connection: AbstractConnection, tasks: asyncio.TaskGroup) -> list[AbstractChannel]:
        """Run by the presence link at every (re)connect: exchange, own queue, consumer, sender and heartbeat."""
        channel = await connection.channel(publisher_confirms=False)
        exchange = await channel.declare_exchange(self._exchange, ExchangeType.FANOUT, durable=True)
        ttl_ms = int(self._settings.presence_ttl_s * 1000)
        queue = await channel.declare_queue(
            "", exclusive=True, auto_delete=True, durable=False,
            arguments={"x-max-length": QUEUE_MAX_LENGTH, "x-overflow": "drop-head", "x-message-ttl": ttl_ms},
        )
        await queue.bind(exchange)
        underlay = await channel.get_underlay_channel()
        self._inbox = []
        tasks.create_task(self._receive_loop(), name="presence-receive")
        await underlay.basic_consume(queue.name, self._on_delivery, no_ack=True)
        self._underlay = underlay
        tasks.create_task(self._send_loop(), name="presence-send")
        tasks.create_task(self._heartbeat_loop(), name="presence-heartbeat")
        self._enqueue(PresenceMessage("hello", self.origin, now_ms()))
        log.info("presence queue bound", queue=queue.name, exchange=self._exchange)
        return [channel]

    async def on_lost(self) -> None:
        # Other replicas' entries stay until they expire: a short broker blip does not empty every room.
        self._underlay = None
        self._outbox.clear()
        self._typing_out.clear()  # stale before the link is back; counts (`_dirty`) go out after the reconnect

    # ---- this replica's connections

    def enter(self, subscriber: Subscriber, author: str | None, listening: bool) -> Ticket:
        """Count a connection that has had its `synced`; a listening one gets the snapshot, then events."""
        refused = self.view.refused_members
        ticket, transitions = self.view.connect(subscriber.room, author if listening else None, now_ms())
        self._count_refused(refused)
        if listening:
            subscriber.push(self.snapshot(subscriber.room).frame())
        self._changed(ticket)
        self._announce(transitions, skip=subscriber)
        if listening:
            self._listeners.setdefault(subscriber.room, {})[subscriber] = author
        return ticket

    def leave(self, subscriber: Subscriber, ticket: Ticket) -> None:
        listeners = self._listeners.get(subscriber.room)
        if listeners is not None:
            listeners.pop(subscriber, None)
            if not listeners:
                del self._listeners[subscriber.room]
        self._announce(self.view.disconnect(ticket))
        self._changed(ticket)

    def typing(self, subscriber: Subscriber, author: str | None) -> None:
        """A client is typing: to the other listening authors of the room here, and to the other replicas."""
        if author is None or subscriber not in self._listeners.get(subscriber.room, {}):
            return  # anonymous or not taking part: nobody could be told who is typing
        if not self._throttled(self._sent_typing.allow(subscriber.room, author)):
            self._deliver_typing(subscriber.room, author)
            if len(self._typing_out) >= OUTBOX_MAX:
                self._metrics.presence_dropped.labels(reason="outbox_full").inc()
                return
            self._typing_out.append((subscriber.room, author))
            self._wakeup.set()

    def snapshot(self, room: str) -> Snapshot:
        return self.view.snapshot(room, self._settings.presence_snapshot_members)

    def _changed(self, ticket: Ticket) -> None:
        authors = self._dirty.setdefault(ticket.room, set())
        if ticket.author is not None:
            authors.add(ticket.author)
        self._wakeup.set()

    def _announce(self, transitions: list[Transition], skip: Subscriber | None = None) -> None:
        for transition in transitions:
            listeners = self._listeners.get(transition.room)
            if not listeners:
                continue
            frame = transition.frame()
            for listener in listeners:
                if listener is not skip:
                    listener.push(frame)

    def _deliver_typing(self, room: str, author: str) -> None:
        listeners = self._listeners.get(room)
        if not listeners:
            return
        frame = orjson.dumps({"type": "typing", "room": room, "author": author}).decode()
        for listener, listener_author in listeners.items():
            if listener_author != author:  # only others: not the author's own connections
                listener.push(frame)

    def _count_refused(self, before: int) -> None:
        if self.view.refused_members > before:
            self._metrics.presence_dropped.labels(reason="room_full").inc(self.view.refused_members - before)

    def _throttled(self, verdict: Verdict) -> bool:
        if verdict == "ok":
            return False
        self._metrics.presence_dropped.labels(reason=f"typing_{verdict}").inc()
        return True

    # ---- the exchange

    def _enqueue(self, message: PresenceMessage) -> None:
        if len(self._outbox) >= OUTBOX_MAX:
            self._metrics.presence_dropped.labels(reason="outbox_full").inc()
            return
        self._outbox.append(message)
        self._wakeup.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._dirty or self._typing_out:
                await asyncio.sleep(FLUSH_DELAY_S)  # let a burst of connects, disconnects or typing gather
            if self._dirty:
                dirty, self._dirty = self._dirty, {}
                rooms = {room: self.view.local_state(room, authors) for room, authors in dirty.items()}
                self._outbox.append(PresenceMessage("state", self.origin, now_ms(), rooms=rooms))
            if self._typing_out:
                typing, self._typing_out = self._typing_out, []
                for start in range(0, len(typing), self._settings.presence_heartbeat_chunk):
                    part = typing[start:start + self._settings.presence_heartbeat_chunk]
                    self._outbox.append(PresenceMessage("typing", self.origin, now_ms(), typing=part))
            while self._outbox:
                await self._publish(self._outbox.popleft())

    async def _heartbeat_loop(self) -> None:
        while True:
            for part in self.view.heartbeat(self._settings.presence_heartbeat_chunk):
                await self._publish(PresenceMessage("beat", self.origin, now_ms(), rooms=part))
            self._beat_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self._settings.presence_heartbeat_s)
                # Asked by a replica that (re)joined: answer soon, but not at the same instant as every other one.
                await asyncio.sleep(random.uniform(0, HELLO_ANSWER_MAX_S))

    async def _publish(self, message: PresenceMessage) -> None:
        underlay = self._underlay
        if underlay is None:
            self._metrics.presence_dropped.labels(reason="disconnected").inc()
            return
        try:
            await underlay.basic_publish(
                message.encode(), exchange=self._exchange, routing_key="", properties=TRANSIENT
            )
        except Exception as exc:  # the link notices the closed channel and reconnects; presence is best effort
            self._metrics.presence_dropped.labels(reason="disconnected").inc()
            log.warning("presence publish failed", kind=message.kind, error=repr(exc)[:200])
            return
        self._metrics.presence_messages.labels(direction="out", kind=message.kind).inc()

    async def _on_delivery(self, delivery: DeliveredMessage) -> None:
        self._inbox.append(delivery)
        self._has_inbox.set()

    async def _receive_loop(self) -> None:
        while True:
            if not self._inbox:
                self._has_inbox.clear()
                await self._has_inbox.wait()
                continue
            batch, self._inbox = self._inbox, []
            for delivery in batch:
                self.receive(delivery.body)
            await asyncio.sleep(0)  # a long batch yields to the message fan-out between batches

    def receive(self, body: bytes) -> None:
        """Apply one message from the presence exchange (our own come back too, and are skipped)."""
        try:
            message = PresenceMessage.decode(body)
        except InvalidPresence as exc:
            self._metrics.presence_dropped.labels(reason="unreadable").inc()
            log.error("unreadable presence message dropped", error=str(exc), size=len(body))
            return
        if message.origin == self.origin:
            return
        self._metrics.presence_messages.labels(direction="in", kind=message.kind).inc()
        if message.kind == "typing":
            if (now_ms() - message.ts) / 1000 > self._settings.presence_typing_expiry_s:
                self._metrics.presence_dropped.labels(reason="typing_stale").inc(len(message.typing))
                return
            for room, author in message.typing:
                if room in self._listeners and not self._throttled(self._shown_typing.allow(room, author)):
                    self._deliver_typing(room, author)
            return
        if message.kind == "hello":
            self._beat_now.set()
        elif message.kind == "bye":
            self._announce(self.view.drop_origin(message.origin))
        else:
            if message.kind == "beat":
                self._metrics.presence_heartbeat_lag.observe(max(0.0, (now_ms() - message.ts) / 1000))
            refused = self.view.refused_members
            self._announce(self.view.apply(message.origin, message.rooms))
            self._count_refused(refused)

    async def _sweep_loop(self) -> None:
        interval = min(1.0, self._settings.presence_ttl_s / 10)
        while True:
            await asyncio.sleep(interval)
            try:
                self._announce(self.view.expire())
            except Exception:  # a bug here must not stop expiry for good: log it and sweep again next time
                log.exception("presence sweep failed")
