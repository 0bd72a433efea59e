"""The history service's parts, owned together: store, broker link, consumer.

``open`` enters them into the lifespan's exit stack in that order; they leave in reverse: the consumer stops
taking deliveries and writes and acks what it holds, the link closes the connection, and the store closes its
database on its own thread once every call before it is done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog

from services.common.amqp import BrokerLink
from services.common.auth import TokenVerifier
from services.common.ids import new_origin
from services.common.lifecycle import Faults, OnFatal, StackOwner, Supervisor, cancel_and_wait
from services.history.consumer import HistoryConsumer
from services.history.metrics import HistoryMetrics
from services.history.replication import Copier, DigestVerifier
from services.history.settings import HistoryConfig
from services.history.store import ThreadedStore

log = structlog.get_logger(__name__)


class HistoryService(StackOwner):
    def __init__(self, config: HistoryConfig, metrics: HistoryMetrics | None = None) -> None:
        self.config = config
        self.settings = config.history
        self.metrics = metrics or HistoryMetrics.create()
        self.verifier = TokenVerifier(config.history.auth_secret, config.history.auth_public_key)
        faults = self.faults = Faults.from_env()
        self.store = ThreadedStore(config.history.data_dir, faults)
        self.ordinal = config.history.ordinal
        self.consumer = HistoryConsumer(
            self.store, config.history, config.amqp, self.metrics, faults, on_queue_recreated=self._copy_again
        )
        self.copier = Copier(self.store, config.history, self.metrics, self.consumer.attached)
        self.digest_verifier = DigestVerifier(
            self.store, config.history, self.metrics, lambda: not self.readiness_problems()
        )
        self.supervisor = Supervisor("history")
        self.boot = new_origin()  # tells readers of /progress that the counters started again
        self.link: BrokerLink | None = None

    async def open(self, stack: AsyncExitStack, on_fatal: OnFatal | None = None) -> None:
        """Enter the service's long-lived parts into ``stack``, in the order that lets them leave cleanly."""
        if not self.verifier.enabled:
            log.warning("anonymous mode: set HISTORY_AUTH_SECRET or HISTORY_AUTH_PUBLIC_KEY to require tokens")
        self.metrics.replica.labels(ordinal=str(self.ordinal)).set(1)
        log.info("history replica", ordinal=self.ordinal, replicas=self.config.amqp.history_replicas,
                 queue=self.consumer.history_queue.name, peers=self.settings.peer_urls)
        self.supervisor = await stack.enter_async_context(Supervisor("history", on_fatal))
        await stack.enter_async_context(self.store)
        link = BrokerLink(
            self.config.amqp, "durable-chat-history", self.consumer.setup, self.supervisor, self._on_lost
        )
        self.link = await stack.enter_async_context(link)
        await stack.enter_async_context(self.consumer)
        await stack.enter_async_context(self._replication())

    @asynccontextmanager
    async def _replication(self) -> AsyncIterator[None]:
        """The copy and the verify run beside the consumer, and stop before it drains."""
        tasks = [self.supervisor.spawn(self.copier.run(), "history-copier"),
                 self.supervisor.spawn(self.digest_verifier.run(), "history-verifier")]
        try:
            yield
        finally:
            await cancel_and_wait(tasks)
            await self.copier.aclose()
            await self.digest_verifier.aclose()

    def _copy_again(self) -> None:
        self.copier.request()

    async def _on_lost(self) -> None:
        self.metrics.broker_connected.set(0)
        await self.consumer.on_lost()

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.supervisor.failure is not None:
            problems.append(f"failed: {self.supervisor.failure}")
        if self.store.closed:
            problems.append("database closed")
        if self.consumer.storage_failed:
            problems.append("database not writable")
        if self.link is None or not self.link.ready:
            problems.append("broker not connected")
        elif not self.consumer.consuming:
            problems.append("consumer not attached")
        if not self.copier.status.serving:
            problems.append("copying")
        return problems
