"""A chat replica's parts, owned together: hub, ring, relay, broker link, history client, limits.

``open`` enters the long-lived parts into the lifespan's exit stack; they leave in reverse: clients are closed
with 1012 (they resume elsewhere), the relay stops consuming and fans out what it holds, the link closes the
connection, the history client closes its pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog

from services.chat.history_client import HistoryClient
from services.chat.hub import Hub, SendBounds
from services.chat.idempotency import IdempotencyCache
from services.chat.limits import ClientAddress, ConnectionCounter
from services.chat.metrics import ChatMetrics
from services.chat.presence_relay import PresenceRelay
from services.chat.relay import ChatRelay, PublishFailed
from services.chat.ring import RecentRing
from services.chat.settings import ChatConfig
from services.chat.sync import BacklogSync
from services.common.amqp import BrokerLink
from services.common.auth import TokenVerifier
from services.common.ids import new_origin
from services.common.lifecycle import Faults, OnFatal, StackOwner, Supervisor
from services.common.schema import SendRequest
from services.common.topology import replica_queues

log = structlog.get_logger(__name__)
CLOSE_SERVICE_RESTART = 1012
CLIENTS_CLOSE_TIMEOUT_S = 5.0


class ChatService(StackOwner):
    def __init__(self, config: ChatConfig, metrics: ChatMetrics | None = None) -> None:
        self.config = config
        self.settings = config.chat
        self.metrics = metrics or ChatMetrics.create()
        self.verifier = TokenVerifier(config.chat.auth_secret, config.chat.auth_public_key)
        chat = config.chat
        self.hub = Hub(
            SendBounds(chat.send_buffer_bytes, chat.max_frame_bytes),
            lambda limit: self.metrics.slow_consumers.labels(limit=limit).inc(),
        )
        self.ring = RecentRing(
            chat.recovery_window_ms, max_entries=chat.ring_max_entries, max_bytes=chat.ring_max_bytes,
            on_evict=self.metrics.ring_evictions.inc,
        )
        self.idempotency = IdempotencyCache(
            chat.idempotency_window_s, max_keys=chat.idempotency_max_keys,
            on_evict=self.metrics.idempotency_evictions.inc,
        )
        self.connections = ConnectionCounter(config.chat.max_connections_per_client)
        self.client_address = ClientAddress(config.chat.trusted_proxies)
        self.history = HistoryClient(
            config.chat.history_urls, config.chat.history_timeout_s,
            [queue.name for queue in replica_queues(config.amqp)],
        )
        self.sync = BacklogSync(
            self.history, self.ring, config.chat.recovery_window_ms, config.chat.history_on_connect
        )
        # Presence has a broker connection of its own, never part of readiness: it is best effort.
        self.presence = PresenceRelay(chat, config.amqp, self.metrics) if chat.presence_enabled else None
        self.origin = ""
        self.supervisor: Supervisor | None = None
        self.relay: ChatRelay | None = None
        self.link: BrokerLink | None = None

    async def open(self, stack: AsyncExitStack, on_fatal: OnFatal | None = None) -> None:
        """Enter the replica's long-lived parts into ``stack``, in the order that lets them leave cleanly."""
        # The origin is made when the process starts serving (after any fork), new at every start.
        self.origin = new_origin()
        structlog.contextvars.bind_contextvars(origin=self.origin)
        if not self.verifier.enabled:
            log.warning("anonymous mode: set CHAT_AUTH_SECRET or CHAT_AUTH_PUBLIC_KEY to require tokens")
        stack.push_async_callback(self.history.aclose)
        # Their prune timers live on the loop: cancelled here, not left to die with it.
        stack.callback(self.ring.close)
        stack.callback(self.idempotency.close)
        self.supervisor = await stack.enter_async_context(Supervisor("chat", on_fatal))
        relay = ChatRelay(
            self.config.amqp, self.hub, self.ring, self.metrics, self.origin, faults=Faults.from_env(),
            standing=self.history.standing,
        )
        self.relay = relay
        link = BrokerLink(self.config.amqp, f"durable-chat-{self.origin}", relay.setup, self.supervisor, self._on_lost)
        self.link = await stack.enter_async_context(link)
        await stack.enter_async_context(relay)
        if self.presence is not None:
            self.presence.origin = self.origin
            await stack.enter_async_context(
                BrokerLink(self.config.amqp, f"durable-chat-presence-{self.origin}", self.presence.setup,
                           self.supervisor, self.presence.on_lost)
            )
            await stack.enter_async_context(self.presence)
        await stack.enter_async_context(self._clients())

    @property
    def ready(self) -> bool:
        return (
            self.supervisor is not None and self.supervisor.failure is None
            and self.link is not None and self.link.ready and self.relay is not None and self.relay.ready
        )

    async def accept(self, room: str, author: str | None, request: SendRequest) -> str:
        """Publish a client message, or answer a resend of a confirmed client_id with its first id."""
        assert self.relay is not None
        if request.client_id is None:
            return (await self.relay.publish(room, author, request.text, None)).id
        key = (room, author, request.client_id)
        known = self.idempotency.lookup(key)
        if known is not None:
            self.metrics.publish_duplicates.inc()
            return known
        inflight = self.idempotency.inflight(key)
        if inflight is not None:
            self.metrics.publish_duplicates.inc()
            return await asyncio.shield(inflight)
        self.idempotency.begin(key)
        try:
            message = await self.relay.publish(room, author, request.text, request.client_id)
        except PublishFailed as exc:
            self.idempotency.fail(key, exc)
            raise
        self.idempotency.confirm(key, message.id)
        return message.id

    async def _on_lost(self) -> None:
        # Our exclusive queue and whatever was routed to it meanwhile are gone: clients must resume elsewhere.
        if self.relay is not None:
            await self.relay.on_lost()
        self._close_all(CLOSE_SERVICE_RESTART, "broker connection lost")

    @asynccontextmanager
    async def _clients(self) -> AsyncIterator[None]:
        """At exit, close every client with 1012 and give their sockets a moment to finish."""
        try:
            yield
        finally:
            self._close_all(CLOSE_SERVICE_RESTART, "server shutting down")
            deadline = asyncio.get_running_loop().time() + CLIENTS_CLOSE_TIMEOUT_S
            # The hub signals no "empty" event; a bounded poll at shutdown costs nothing.
            while len(self.hub) and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)

    def _close_all(self, code: int, reason: str) -> None:
        subscribers = self.hub.subscribers()
        for subscriber in subscribers:
            subscriber.close_soon(code, reason)
        if subscribers:
            log.warning("closing clients", count=len(subscribers), code=code, reason=reason)
