"""A supervised AMQP connection: connect, set up, watch, and reconnect with backoff.

We do not use aio-pika's robust connection: its restored consumers and hanging publishes are known pitfalls
(aio-pika #231, #626), and a chat replica must notice every connection loss anyway, because its exclusive
queue and whatever was routed to it meanwhile are gone. Each (re)connect runs the owner's ``setup`` from
scratch, and ``on_lost`` tells the owner the moment the link is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection

from services.common.settings import AmqpSettings

log = structlog.get_logger(__name__)

Setup = Callable[[AbstractConnection], Awaitable[list[AbstractChannel]]]


class BrokerLink:
    """Keeps one AMQP connection alive for a service; ``ready`` is true while setup has completed."""

    def __init__(
        self,
        settings: AmqpSettings,
        name: str,
        setup: Setup,
        on_lost: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._name = name
        self._setup = setup
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._stopping = False

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._connection is not None and not self._connection.is_closed

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"broker-link-{self._name}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None and not self._connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), 5)

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                channels = await self._connect_and_setup()
                attempt = 0
                log.info("broker connected", link=self._name)
                await self._wait_closed(channels)
                log.warning("broker connection lost", link=self._name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure here means: reconnect later
                log.warning("broker connect failed", link=self._name, error=repr(exc)[:300], attempt=attempt)
            await self._lost()
            attempt += 1
            await asyncio.sleep(self._backoff(attempt))

    async def _connect_and_setup(self) -> list[AbstractChannel]:
        connection = await aio_pika.connect(
            self._settings.url,
            heartbeat=self._settings.heartbeat_s,
            timeout=10,
            client_properties={"connection_name": self._name},
        )
        self._connection = connection
        channels = await self._setup(connection)
        self._ready.set()
        return channels

    async def _wait_closed(self, channels: list[AbstractChannel]) -> None:
        assert self._connection is not None
        waiters = [asyncio.ensure_future(self._connection.closed())]
        waiters += [asyncio.ensure_future(channel.closed()) for channel in channels]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _lost(self) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
        if was_ready and self._on_lost is not None:
            try:
                await self._on_lost()
            except Exception:
                log.exception("on_lost handler failed", link=self._name)

    def _backoff(self, attempt: int) -> float:
        base: float = min(self._settings.reconnect_max_s, 0.2 * (2 ** min(attempt, 10)))
        return base * random.uniform(0.5, 1.0)
