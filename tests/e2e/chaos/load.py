"""Steady load that survives faults: senders resend until acknowledged, every client reconnects with its cursor.

Each sender keeps one message in flight with a ``client_id``. An ``ack`` settles it; a ``publish_failed``, a
closed connection or no answer in time makes it resend the same ``client_id`` (contract section 4: a resend of a
confirmed key gets the first id back, or is dropped by the history service). Every client, sender or reader,
reconnects when its connection closes (1012, 1013, a killed replica), first to its own replica, then to the
others, resuming with its per-origin cursor (``after=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import Sequence

import orjson
import websockets

from tests.support.client import ChatClient, cursor_of

_batches = itertools.count()


class ResilientClient(ChatClient):
    """A ChatClient that keeps itself connected and counts why it had to reconnect."""

    def __init__(self, urls: Sequence[str], room: str, name: str, home: int) -> None:
        super().__init__(urls, room, name=name)
        self.home = home
        self.replica: int | None = None  # index (into urls) of the replica of the current connection
        self.online = asyncio.Event()
        self.reconnects = 0
        self.failed_attempts = 0
        self._closing = False
        self._keeper: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def open(self, index: int, timeout: float = 20) -> None:
        """Connect to replica ``index``, resuming with the cursor; wait for ``synced`` or a close."""
        await self.close()
        after = cursor_of(list(self.unique.values())) if self.unique else None
        self.synced.clear()
        self._ws = await websockets.connect(self.url(index, after), max_size=2**22, open_timeout=5)
        self.connections += 1
        reader = asyncio.create_task(self._read(self._ws))
        self._reader = reader
        synced = asyncio.create_task(self.synced.wait())
        try:
            await asyncio.wait({synced, reader}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            synced.cancel()
        if not self.synced.is_set() or reader.done():
            raise ConnectionError(f"replica {index} did not sync (close codes {self.close_codes[-1:]})")
        self.replica = index % len(self.urls)

    async def start(self) -> None:
        await self.open(self.home)
        self.online.set()
        self._keeper = asyncio.create_task(self._keep(), name=f"keeper-{self.name}")

    async def _keep(self) -> None:
        while not self._closing:
            reader = self._reader
            if reader is not None and not reader.done():
                await asyncio.wait({reader})
            if self._closing:
                return
            self.online.clear()
            await self._resume()
            self.online.set()

    async def _resume(self) -> None:
        for attempt in itertools.count():
            if self._closing:
                return
            index = self.home + attempt
            try:
                await self.open(index)
                self.reconnects += 1
                return
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError, ConnectionError):
                self.failed_attempts += 1
                await self.close()
                await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))

    async def rehome(self, timeout: float = 30) -> None:
        """Close the connection so that the keeper resumes on the home replica (the first it tries)."""
        if self.replica == self.home % len(self.urls):
            return
        connections = self.connections
        with contextlib.suppress(Exception):
            await self.ws.close()
        await self.wait_for(lambda: self.connections > connections and self.online.is_set(), timeout)

    async def shutdown(self) -> None:
        self._closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(BaseException):
                await self._keeper
        await self.close()

    def errors_for(self, client_id: str, code: str | None = None) -> int:
        return sum(1 for e in self.errors if e.get("client_id") == client_id and (code is None or e["code"] == code))


class ChaosLoad:
    """``senders`` sending clients and ``readers`` listening ones, spread over the replicas, in one room."""

    def __init__(
        self,
        ws_urls: Sequence[str],
        room: str,
        senders: int = 4,
        readers: int = 2,
        interval_s: float = 0.02,
        text_bytes: int = 0,
        answer_timeout_s: float = 12.0,
    ) -> None:
        batch = next(_batches)
        self.room = room
        self.senders = [ResilientClient(ws_urls, room, f"s{batch}-{i}", home=i) for i in range(senders)]
        self.readers = [ResilientClient(ws_urls, room, f"r{batch}-{i}", home=i) for i in range(readers)]
        self.interval_s = interval_s
        self.padding = "x" * text_bytes
        self.answer_timeout_s = answer_timeout_s
        self.sent = 0  # distinct messages (client_ids) sent at least once
        self.attempts = 0  # frames sent, resends included
        self.outcomes: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def clients(self) -> list[ResilientClient]:
        return [*self.senders, *self.readers]

    async def start(self) -> None:
        for client in self.clients:
            await client.start()
        self._tasks = [asyncio.create_task(self._send_loop(c), name=f"send-{c.name}") for c in self.senders]

    async def _send_loop(self, client: ResilientClient) -> None:
        for n in itertools.count(1):
            if self._stop.is_set():
                return
            client_id = f"{client.name}-{n}"
            self.sent += 1
            await self._deliver(client, client_id, f"{client.name} #{n} {self.padding}")
            if self.interval_s:
                await asyncio.sleep(self.interval_s)

    async def _deliver(self, client: ResilientClient, client_id: str, text: str) -> None:
        """Send until acknowledged: resend the same client_id after publish_failed, a close or a timeout."""
        frame = orjson.dumps({"type": "send", "text": text, "client_id": client_id}).decode()
        while True:
            await client.online.wait()
            failures = client.errors_for(client_id)
            reader = client._reader
            try:
                await client.ws.send(frame)
            except (websockets.exceptions.ConnectionClosed, AssertionError):
                self.outcomes["send_on_closed"] += 1
                await asyncio.sleep(0.05)
                continue
            self.attempts += 1

            def answered(r: asyncio.Task[None] | None = reader, failed: int = failures) -> bool:
                return client_id in client.acks or client.errors_for(client_id) > failed or r is None or r.done()

            try:
                await client.wait_for(answered, timeout=self.answer_timeout_s)
            except TimeoutError:
                self.outcomes["timeout"] += 1
                continue
            if client_id in client.acks:
                self.outcomes["ack"] += 1
                return
            if client.errors_for(client_id) > failures:
                code = next(e["code"] for e in reversed(client.errors) if e.get("client_id") == client_id)
                self.outcomes[code] += 1
                await asyncio.sleep(0.1)
            else:
                self.outcomes["closed_before_answer"] += 1

    async def run_for(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_acked(self, count: int, timeout: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.acked) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"only {len(self.acked)} of {count} acked; outcomes {dict(self.outcomes)}")
            await asyncio.sleep(0.05)

    async def stop_sending(self, timeout: float = 60) -> None:
        """Stop after each sender's message in flight is acknowledged."""
        self._stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
        assert not pending, f"{len(pending)} senders still had an unacknowledged message after {timeout} s"

    async def shutdown(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for client in self.clients:
            await client.shutdown()

    @property
    def acked(self) -> dict[tuple[str, str], str]:
        """(author, client_id) -> the id its sender was acknowledged with."""
        return {(c.name or "", cid): mid for c in self.senders for cid, mid in c.acks.items()}

    @property
    def reconnects(self) -> int:
        return sum(c.reconnects for c in self.clients)
