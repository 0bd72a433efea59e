"""The history service's parts, owned together: store, consumer, broker link."""

from __future__ import annotations

import asyncio

import structlog

from services.common.amqp import BrokerLink
from services.common.auth import TokenVerifier
from services.history.consumer import HistoryConsumer
from services.history.metrics import HistoryMetrics
from services.history.settings import HistoryConfig
from services.history.store import MessageStore

log = structlog.get_logger(__name__)


class HistoryService:
    def __init__(self, config: HistoryConfig, metrics: HistoryMetrics | None = None) -> None:
        self.settings = config.history
        self.metrics = metrics or HistoryMetrics.create()
        self.verifier = TokenVerifier(config.history.auth_secret, config.history.auth_public_key)
        self.store = MessageStore(config.history.data_dir)
        self.consumer = HistoryConsumer(self.store, config.history, config.amqp, self.metrics)
        self.link = BrokerLink(config.amqp, "durable-chat-history", self.consumer.setup, self._on_lost)

    async def start(self) -> None:
        if not self.verifier.enabled:
            log.warning("anonymous mode: set HISTORY_AUTH_SECRET or HISTORY_AUTH_PUBLIC_KEY to require tokens")
        self.link.start()

    async def stop(self) -> None:
        await self.consumer.shutdown()
        await self.link.stop()
        await asyncio.to_thread(self.store.close)

    async def _on_lost(self) -> None:
        self.metrics.broker_connected.set(0)
        await self.consumer.on_lost()

    def readiness_problems(self) -> list[str]:
        problems = []
        if self.store.closed:
            problems.append("database closed")
        if self.consumer.storage_failed:
            problems.append("database not writable")
        if not self.link.ready:
            problems.append("broker not connected")
        elif not self.consumer.consuming:
            problems.append("consumer not attached")
        return problems
