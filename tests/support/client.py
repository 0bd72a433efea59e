"""A real WebSocket chat client for tests: frames, acks, the per-origin cursor, reconnects."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import secrets
import socket
from collections.abc import Callable, Collection, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import websockets
from websockets.asyncio.client import ClientConnection

Frame = dict[str, Any]
# Unique across processes too: a replica remembers confirmed client_ids (CHAT_IDEMPOTENCY_WINDOW_S), so a second
# run against a long-lived deployment (kind with KEEP_CLUSTER=1, remote endpoints) would get old acks, not sends.
_client_ids = map(f"c{secrets.token_hex(4)}-{{}}".format, itertools.count())


async def socket_receiving_at_most(url: str, receive_buffer: int) -> socket.socket:
    """A TCP connection to ``url``'s host and port, for ``websockets.connect(sock=...)``, whose receive buffer is
    fixed: left to autotuning, the kernel grows it up to net.ipv4.tcp_rmem's maximum (32 MiB on CI machines), and
    a client that stops reading to play a slow consumer would take a whole burst before falling behind."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: it sets the window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (parts.hostname or "127.0.0.1", parts.port or 80))
    return sock


def cursor_of(messages: Sequence[Frame], max_origins: int = 32) -> str:
    """The contract's cursor: the newest id held from each of the most recently seen origins."""
    newest: dict[str, str] = {}
    for message in messages:
        origin = message["origin"]
        if message["id"] > newest.get(origin, ""):
            newest.pop(origin, None)
            newest[origin] = message["id"]
    return ",".join(list(newest.values())[-max_origins:])


class ChatClient:
    """Keeps every frame; ``messages`` holds message frames in arrival order, ``unique`` by id."""

    def __init__(
        self, urls: Sequence[str], room: str, name: str | None = None, coalesce: bool = False, presence: bool = True
    ) -> None:
        self.urls = list(urls)
        self.room = room
        self.name = name
        self.coalesce = coalesce
        self.presence = presence
        self.members: dict[str, Frame] = {}  # presence: the snapshot, kept current by join and leave
        self.presence_events: list[Frame] = []  # presence, join, leave and typing frames, in arrival order
        self.frames: list[Frame] = []
        self.messages: list[Frame] = []
        self.unique: dict[str, Frame] = {}
        self.duplicates: list[str] = []
        self.acks: dict[str, str] = {}
        self.errors: list[Frame] = []
        self.synced = asyncio.Event()
        self.complete = asyncio.Event()  # the last `synced` said complete: no gap behind the live messages
        # The cursor of a connection (opened with one) whose `synced` was incomplete: reconnects use it until one
        # completes (contract section 3), so live messages never move the cursor past a gap.
        self.gap_cursor: str | None = None
        self._connect_cursor: str | None = None
        self.close_codes: list[int | None] = []
        self.connections = 0
        self.index = 0  # the replica of the last connect
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def disconnected(self) -> bool:
        """Whether the last connection has closed (its reader saw the close)."""
        return self._reader is not None and self._reader.done()

    @property
    def ws(self) -> ClientConnection:
        assert self._ws is not None
        return self._ws

    def url(self, index: int = 0, after: str | None = None) -> str:
        params: dict[str, str] = {"room": self.room}
        if self.name:
            params["name"] = self.name
        if after:
            params["after"] = after
        if self.coalesce:
            params["coalesce"] = "1"
        if not self.presence:
            params["presence"] = "0"
        return f"{self.urls[index % len(self.urls)]}?{urlencode(params)}"

    async def connect(self, index: int = 0, resume: bool = False, timeout: float = 30) -> None:
        after = self.resume_cursor() if resume else None
        self._connect_cursor = after
        self.index = index
        self.synced.clear()
        self.complete.clear()
        self._ws = await websockets.connect(self.url(index, after), max_size=2**22, open_timeout=10)
        self.connections += 1
        self._reader = asyncio.create_task(self._read(self._ws))
        await asyncio.wait_for(self.synced.wait(), timeout)

    def resume_cursor(self) -> str | None:
        if self.gap_cursor is not None:
            return self.gap_cursor
        return cursor_of(list(self.unique.values())) if self.unique else None

    async def reconnect(self, index: int, timeout: float = 30, attempts: int = 60) -> None:
        """Resume with the cursor on replica ``index``, retrying while it is not accepting."""
        await self.close()
        for attempt in range(attempts):
            try:
                await self.connect(index, resume=True, timeout=timeout)
                return
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError):
                await self.close()
                await asyncio.sleep(min(1.0, 0.1 * (attempt + 1)))
        raise RuntimeError(f"could not reconnect to replica {index}")

    async def send(self, text: str, client_id: str | None = None) -> str:
        client_id = client_id or next(_client_ids)
        await self.ws.send(orjson.dumps({"type": "send", "text": text, "client_id": client_id}).decode())
        return client_id

    async def send_acked(self, texts: Sequence[str], timeout: float = 60, window: int | None = None) -> list[str]:
        """Send each text, at most ``window`` of them unacknowledged at a time (None: all at once), and return the
        acknowledged ids in order. As the protocol says, a send answered ``publish_failed`` (the broker did not
        confirm in time: a fresh node under load) is resent with the same client_id, and so is every unacknowledged
        send after the connection closed (1012: the replica lost the broker) and the client resumed on the same
        replica. ``timeout`` bounds the wait for each ack, failure or close, not the whole."""
        client_ids = [next(_client_ids) for _ in texts]
        text_of = dict(zip(client_ids, texts, strict=True))
        unsent = collections.deque(client_ids)
        in_flight: set[str] = set()
        limit = window or len(client_ids)
        while unsent or in_flight:
            in_flight -= self.acks.keys()
            to_send = list(self._take_publish_failures(in_flight))
            if self.disconnected:
                await self.reconnect(self.index)
                to_send = list(in_flight)
            while unsent and len(in_flight) < limit:
                in_flight.add(unsent[0])
                to_send.append(unsent.popleft())
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):  # resent after the reconnect
                for client_id in to_send:
                    await self.send(text_of[client_id], client_id)
            await self.wait_for(functools.partial(self._answered_any, frozenset(in_flight)), timeout)
        return [self.acks[client_id] for client_id in client_ids]

    def _answered_any(self, client_ids: frozenset[str]) -> bool:
        """Whether any of these sends was acknowledged or refused ``publish_failed``, or none is waiting, or the
        connection closed."""
        return (
            not client_ids or not client_ids.isdisjoint(self.acks.keys()) or self._publish_failed(client_ids)
            or self.disconnected
        )

    def _publish_failures(self, client_ids: Collection[str]) -> list[Frame]:
        return [e for e in self.errors if e.get("code") == "publish_failed" and e.get("client_id") in client_ids]

    def _publish_failed(self, client_ids: Collection[str]) -> bool:
        return bool(self._publish_failures(client_ids))

    def _take_publish_failures(self, client_ids: set[str]) -> set[str]:
        """Take the ``publish_failed`` errors of these client_ids off ``errors``; return their client_ids."""
        taken = self._publish_failures(client_ids)
        self.errors = [e for e in self.errors if e not in taken]
        return {e["client_id"] for e in taken}

    async def send_typing(self) -> None:
        await self.ws.send('{"type":"typing"}')

    def typing_from(self) -> list[str]:
        return [f["author"] for f in self.presence_events if f["type"] == "typing"]

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met in {timeout:g} s: {self.describe()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    def describe(self) -> str:
        """The client's state in one line, for a test that gave up waiting on it."""
        errors = [error.get("code") for error in self.errors[-5:]]
        return (
            f"{self.name or 'client'} in {self.room!r}: {self.connections} connections, close codes "
            f"{self.close_codes}, {len(self.acks)} acks, {len(self.messages)} messages, last errors {errors}"
        )

    async def wait_closed(self, timeout: float = 30) -> int | None:
        assert self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_codes[-1] if self.close_codes else None

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        self._ws = None
        self._reader = None

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                # Coalesced frames are separated by "\n" only (str.splitlines would also split on U+2028).
                for line in (raw.split("\n") if isinstance(raw, str) else [raw]):
                    self._on_frame(orjson.loads(line))
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            self.close_codes.append(ws.close_code)
            self._changed.set()

    def _on_frame(self, frame: Frame) -> None:
        self.frames.append(frame)
        kind = frame.get("type")
        if kind == "message":
            self.messages.append(frame)
            if frame["id"] in self.unique:
                self.duplicates.append(frame["id"])
            self.unique[frame["id"]] = frame
        elif kind == "ack":
            self.acks[frame["client_id"]] = frame["id"]
        elif kind == "error":
            self.errors.append(frame)
        elif kind in ("presence", "join", "leave", "typing"):
            self.presence_events.append(frame)
            if kind == "presence":
                self.members = {member["author"]: member for member in frame["members"]}
            elif kind == "join":
                self.members[frame["author"]] = {"author": frame["author"]}
            elif kind == "leave":
                self.members.pop(frame["author"], None)
        elif kind == "synced":
            if frame.get("complete", True):
                self.gap_cursor = None
                self.complete.set()
            elif self.gap_cursor is None and self._connect_cursor:
                # Connected without a cursor, it asked for recent context only: what it must never miss is what
                # comes after what it holds, so it keeps its own cursor.
                self.gap_cursor = self._connect_cursor
            self.synced.set()
        self._changed.set()
