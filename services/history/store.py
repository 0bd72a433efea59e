"""LevelDB storage: messages keyed by (room, id), and an idempotency index keyed by (room, author, client_id).

Writes are idempotent: a message whose id is stored, or whose (room, author, client_id) already names another
stored id, is dropped. One writer (the consumer) calls ``write``, so check-then-write needs no lock.

``MessageStore`` is blocking and not thread-safe: plyvel frees an iterator when its database closes, and a reopen
while another thread iterates crashes the process (segfault). The service therefore only uses ``ThreadedStore``,
which opens the database in the lifespan and runs every call, reads included, on one thread of its own: a reopen
or close waits for the read before it, and a caller that gives up (a cancelled request) never frees what that
thread is using.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import plyvel

from services.common.lifecycle import Faults
from services.common.schema import ChatMessage

_MESSAGE = b"m\x00"
_CLIENT_KEY = b"k\x00"
_PROBE_KEY = b"probe"
_SEP = b"\x00"
_ID_AFTER_ALL = b"\xff"
T = TypeVar("T")


def _room_prefix(room: str) -> bytes:
    return _MESSAGE + room.encode() + _SEP


def _message_key(room: str, msg_id: str) -> bytes:
    return _room_prefix(room) + msg_id.encode()


def _client_key(message: ChatMessage) -> bytes | None:
    if message.client_id is None:
        return None
    author = (message.author or "").encode()
    return _CLIENT_KEY + message.room.encode() + _SEP + author + _SEP + message.client_id.encode()


@dataclass(slots=True)
class WriteResult:
    stored: list[ChatMessage] = field(default_factory=list)
    duplicate_ids: int = 0
    duplicate_client_ids: int = 0


@dataclass(frozen=True, slots=True)
class PageQuery:
    """A validated history query; ``after``/``before`` are exclusive, ``latest`` takes the newest."""

    room: str
    limit: int
    after: str | None = None
    before: str | None = None
    latest: bool = False


class MessageStore:
    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self._path = path
        self._db = plyvel.DB(path, create_if_missing=True)

    def reopen(self) -> None:
        """LevelDB keeps refusing writes after one failed (a sticky background error) until reopened.

        Reopening replays the write-ahead log into a new table, so it fails on a full disk, and a closed database
        serves no reads either: reopen only once the log's size fits, and keep reading from the open one until then.
        """
        self._check_room()
        if not self._db.closed:
            self._db.close()
        self._db = plyvel.DB(self._path, create_if_missing=True)

    def _check_room(self) -> None:
        """Raise OSError (ENOSPC) unless the disk has room for the log's replay plus a margin."""
        logs = sum(entry.stat().st_size for entry in os.scandir(self._path) if entry.name.endswith(".log"))
        probe = os.path.join(self._path, "reopen.probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, logs + (1 << 20))
        finally:
            os.close(fd)
            os.unlink(probe)

    def close(self) -> None:
        self._db.close()

    @property
    def closed(self) -> bool:
        return bool(self._db.closed)

    def write(self, messages: Sequence[tuple[ChatMessage, bytes]]) -> WriteResult:
        """Store (message, wire body) pairs in one synced batch; return what was new."""
        result = WriteResult()
        seen_ids: set[bytes] = set()
        seen_client_keys: set[bytes] = set()
        with self._db.write_batch(sync=True) as batch:
            for message, wire in messages:
                key = _message_key(message.room, message.id)
                if key in seen_ids or self._db.get(key) is not None:
                    result.duplicate_ids += 1
                    continue
                client_key = _client_key(message)
                if client_key is not None:
                    if client_key in seen_client_keys or self._db.get(client_key) is not None:
                        result.duplicate_client_ids += 1
                        continue
                    seen_client_keys.add(client_key)
                    batch.put(client_key, message.id.encode())
                seen_ids.add(key)
                batch.put(key, wire)
                result.stored.append(message)
        return result

    def probe(self) -> None:
        """A synced write: raises when the database cannot take writes (disk full, closed)."""
        self._db.put(_PROBE_KEY, b"1", sync=True)

    def page(self, query: PageQuery) -> list[bytes]:
        """One page of stored bodies in ascending id order."""
        return list(self.iter_bodies(query))

    def iter_bodies(self, query: PageQuery) -> Iterator[bytes]:
        prefix = _room_prefix(query.room)
        start = prefix + query.after.encode() + _SEP if query.after else prefix
        stop = prefix + query.before.encode() if query.before else prefix + _ID_AFTER_ALL
        if query.latest or (query.before and not query.after):
            newest_first = self._db.iterator(start=start, stop=stop, reverse=True, include_key=False)
            page = [body for _, body in zip(range(query.limit), newest_first, strict=False)]
            newest_first.close()
            yield from reversed(page)
            return
        with self._db.iterator(start=start, stop=stop, include_key=False) as oldest_first:
            for _, body in zip(range(query.limit), oldest_first, strict=False):
                yield body

    def get_many(self, room: str, ids: Sequence[str]) -> list[bytes]:
        bodies = (self._db.get(_message_key(room, msg_id)) for msg_id in sorted(set(ids)))
        return [body for body in bodies if body is not None]


class StoreClosed(RuntimeError):
    """The store is not open (before the lifespan opened it, or after it closed)."""


class ThreadedStore:
    """The service's store: an async context manager that owns the LevelDB handle and the one thread using it.

    Test faults (``DURABLE_CHAT_TEST_FAULTS``): ``history.write.delay_s`` makes each batch write sleep first on
    that thread, 0.5x to 1.5x that long, like a slow disk whose writes take uneven time; ``history.write.crash=N``
    makes the next N batch writes raise, like a full disk.
    """

    def __init__(self, path: str, faults: Faults | None = None) -> None:
        self._path = path
        self._faults = faults or Faults()
        self._write_delay_s = self._faults.delay_s("history.write")
        self._store: MessageStore | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def closed(self) -> bool:
        return self._store is None or self._store.closed

    async def __aenter__(self) -> ThreadedStore:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leveldb")
        try:
            self._store = await self._on_thread(MessageStore, self._path)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        executor, store = self._executor, self._store
        if executor is None or store is None:
            return
        self._store = None
        # Queued behind every call already submitted, so nothing is using the handle when it closes.
        await asyncio.get_running_loop().run_in_executor(executor, store.close)
        self._executor = None
        await asyncio.to_thread(executor.shutdown, wait=True)

    async def write(self, messages: Sequence[tuple[ChatMessage, bytes]]) -> WriteResult:
        return await self._on_thread(self._slow_write, messages)

    async def probe(self) -> None:
        await self._on_thread(self._open().probe)

    async def reopen(self) -> None:
        await self._on_thread(self._open().reopen)

    async def page(self, query: PageQuery) -> list[bytes]:
        return await self._on_thread(self._open().page, query)

    async def get_many(self, room: str, ids: Sequence[str]) -> list[bytes]:
        return await self._on_thread(self._open().get_many, room, ids)

    def _slow_write(self, messages: Sequence[tuple[ChatMessage, bytes]]) -> WriteResult:
        if self._write_delay_s:
            time.sleep(self._write_delay_s * random.uniform(0.5, 1.5))
        self._faults.crash("history.write")
        return self._open().write(messages)

    def _open(self) -> MessageStore:
        if self._store is None:
            raise StoreClosed("the store is closed")
        return self._store

    async def _on_thread(self, call: Callable[..., T], *args: object) -> T:
        if self._executor is None:
            raise StoreClosed("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)
