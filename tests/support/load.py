"""Steady senders for e2e tests: each message carries a client_id; what was acknowledged is recorded."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence

from tests.support.client import ChatClient

_batches = itertools.count()


class Senders:
    """``count`` clients spread over the replicas, each sending until stopped or ``total`` is reached."""

    def __init__(self, ws_urls: Sequence[str], room: str, count: int, interval_s: float = 0.0) -> None:
        # Names (and so client_ids) are unique per instance: a repeated (room, author, client_id) is a resend.
        batch = next(_batches)
        self.clients = [ChatClient(ws_urls, room, name=f"s{batch}-{i}") for i in range(count)]
        self.interval_s = interval_s
        self.sent = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def start(self, total: int | None = None) -> None:
        for index, client in enumerate(self.clients):
            await client.connect(index)
        self._tasks = [asyncio.create_task(self._run(client, total)) for client in self.clients]

    async def _run(self, client: ChatClient, total: int | None) -> None:
        n = 0
        while not self._stop.is_set() and (total is None or self.sent < total):
            self.sent += 1
            n += 1
            await client.send(f"{client.name} #{n}", client_id=f"{client.name}-{n}")
            # One in flight per client: wait for its ack or error before the next.
            await client.wait_for(lambda n=n: len(client.acks) + len(client.errors) >= n, timeout=30)
            if self.interval_s:
                await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await task
        for client in self.clients:
            await client.close()

    async def wait_acked(self, count: int, timeout: float = 60) -> None:
        await self.clients[0].wait_for(lambda: len(self.acked) >= count, timeout)

    @property
    def acked(self) -> dict[str, str]:
        """client_id -> message id, for every acknowledged message."""
        return {k: v for client in self.clients for k, v in client.acks.items()}
