"""A supervised AMQP connection: connect, set up, watch, and reconnect with backoff.

We do not use aio-pika's robust connection: its restored consumers and hanging publishes are known pitfalls
(aio-pika #231, #626), and a chat replica must notice every connection loss anyway, because its exclusive
queue and whatever was routed to it meanwhile are gone. Each (re)connect runs the owner's ``setup`` from
scratch, and ``on_lost`` tells the owner the moment the link is down, and again when the link stops.

The owner's background tasks of one connection (fan-out, drain) run in a ``TaskGroup`` that lives as long as
that connection. A task that crashes takes the connection down with it: the crash is logged with its traceback,
the service is unready until the link has reconnected and rebuilt the tasks, and more than ``CRASH_LIMIT``
crashes within ``CRASH_WINDOW_S`` make the link give up (``Unrecoverable``), which ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from types import TracebackType

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection

from services.common.brokers import BrokerRotation, describe, split_urls
from services.common.lifecycle import Supervisor, Unrecoverable, stop_within
from services.common.settings import AmqpSettings

log = structlog.get_logger(__name__)

Setup = Callable[[AbstractConnection, asyncio.TaskGroup], Awaitable[list[AbstractChannel]]]
CRASH_LIMIT = 3
CRASH_WINDOW_S = 60.0
STOP_TIMEOUT_S = 10.0
# What an operation on a channel raises when its channel or connection goes: aiormq's errors, a closed socket, a
# write after the close.
_CHANNEL_ERRORS = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError)


def channel_gone(exc: BaseException) -> bool:
    """Whether ``exc`` means the channel or connection went away, not a bug. aiormq also rejects what was still
    pending on a channel closed without a reason (a publish's confirm, an ack) with a bare ``Exception``: seen when
    a crashed task took a replica's connection down while a publish waited for its confirm."""
    return isinstance(exc, _CHANNEL_ERRORS) or type(exc) is Exception


@contextlib.contextmanager
def unless_channel_gone() -> Iterator[None]:
    """Suppress what ``channel_gone`` recognises (the link reconnects); anything else still raises."""
    try:
        yield
    except Exception as exc:
        if not channel_gone(exc):
            raise


class BrokerLink:
    """Keeps one AMQP connection alive for a service; ``ready`` is true while setup has completed.

    An async context manager: entering starts connecting in the background, leaving closes the connection and
    runs ``on_lost``, so the owner's per-connection tasks end with it.
    """

    def __init__(
        self,
        settings: AmqpSettings,
        name: str,
        setup: Setup,
        supervisor: Supervisor,
        on_lost: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._brokers = BrokerRotation(split_urls(settings.url))  # AMQP_URL may list a cluster's nodes
        self._name = name
        self._setup = setup
        self._supervisor = supervisor
        self._on_lost = on_lost
        self._task: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._set_up = False
        self._crashes: deque[float] = deque()

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._connection is not None and not self._connection.is_closed

    async def __aenter__(self) -> BrokerLink:
        self._stopping.clear()
        self._task = self._supervisor.spawn(self._run(), f"broker-link-{self._name}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the connection and run ``on_lost``; the run loop ends by itself, cancelled only if stuck."""
        self._stopping.set()
        task, self._task = self._task, None
        if task is not None:
            await stop_within(task, STOP_TIMEOUT_S, f"broker link {self._name}")
        await self._lost()  # in case the loop was cancelled before its own cleanup ran

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                connected = await self._session()
            except BaseExceptionGroup as crashed:  # one of this connection's tasks died
                self._count_crash(crashed)
                connected = False
            attempt = 0 if connected else attempt + 1
            if not self._stopping.is_set():
                await self._sleep(self._backoff(attempt))

    async def _session(self) -> bool:
        """One connection, from connect to loss: False if it never came up."""
        async with asyncio.TaskGroup() as tasks:
            try:
                try:
                    channels = await self._connect_and_setup(tasks)
                except Exception as exc:  # every failure here means: reconnect later
                    if not self._stopping.is_set():
                        log.warning("broker connect failed", link=self._name, error=repr(exc)[:300])
                    return False
                log.info("broker connected", link=self._name)
                await self._wait_closed(channels)
                if not self._stopping.is_set():
                    log.warning("broker connection lost", link=self._name)
                return True
            finally:
                await self._lost()  # ends the owner's tasks, so that the TaskGroup can close

    async def _connect(self, url: str) -> AbstractConnection:
        return await aio_pika.connect(
            url,
            heartbeat=self._settings.heartbeat_s,
            timeout=10,
            client_properties={"connection_name": self._name},
        )

    async def _connect_and_setup(self, tasks: asyncio.TaskGroup) -> list[AbstractChannel]:
        url = self._brokers.next()
        self._connection = await self._until_stopped(self._connect(url))
        log.info("broker node", link=self._name, node=describe(url), nodes=len(self._brokers))
        self._set_up = True
        channels = await self._setup(self._connection, tasks)
        self._ready.set()
        return channels

    async def _until_stopped(self, step: Awaitable[AbstractConnection]) -> AbstractConnection:
        """A connect attempt that a stop abandons at once: there is nothing yet to drain."""
        attempt = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([attempt, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not attempt.done():
            attempt.cancel()
            raise ConnectionAbortedError("link stopping")
        return attempt.result()

    async def _wait_closed(self, channels: list[AbstractChannel]) -> None:
        assert self._connection is not None
        waiters = [asyncio.ensure_future(self._connection.closed()), asyncio.ensure_future(self._stopping.wait())]
        waiters += [asyncio.ensure_future(channel.closed()) for channel in channels]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _lost(self) -> None:
        self._ready.clear()
        set_up, self._set_up = self._set_up, False
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 5)
        if set_up and self._on_lost is not None:
            try:
                await self._on_lost()
            except Exception:
                log.exception("on_lost handler failed", link=self._name)

    def _count_crash(self, crashed: BaseExceptionGroup[BaseException]) -> None:
        now = time.monotonic()
        self._crashes.append(now)
        while now - self._crashes[0] > CRASH_WINDOW_S:
            self._crashes.popleft()
        log.error(
            "background task crashed; reconnecting to rebuild it",
            link=self._name, crashes=len(self._crashes), window_s=CRASH_WINDOW_S, exc_info=crashed,
        )
        if len(self._crashes) > CRASH_LIMIT:
            raise Unrecoverable(f"{len(self._crashes)} task crashes within {CRASH_WINDOW_S:g} s") from crashed

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _backoff(self, attempt: int) -> float:
        base: float = min(self._settings.reconnect_max_s, 0.2 * (2 ** min(attempt, 10)))
        return base * random.uniform(0.5, 1.0)
