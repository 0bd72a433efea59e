"""LevelDB storage: messages keyed by (room, id), an idempotency index keyed by (room, author, client_id), and a
digest per room.

Writes are idempotent and order-independent, so that replicas fed the same messages in any order hold the same
content: a message whose id is stored is dropped; of two ids with the same (room, author, client_id) the smaller
one is kept (a larger one arriving later is dropped; a smaller one arriving later replaces the stored one). One
writer thread calls ``write``, so check-then-write needs no lock.

The room digest (count, first and last id, and the sum of a 64-bit hash of each id, mod 2**64) changes in the same
batch as the messages, so it always equals what a full scan would compute; a store written before digests existed
(v1) gets them computed once when it is first opened (``_DIGEST_VERSION`` marks that done). Running a v1 image on
the store again makes its digests stale: delete the ``meta:digest`` key (docs) and they are rebuilt at the next open.

``MessageStore`` is blocking and not thread-safe: plyvel frees an iterator when its database closes, and a reopen
while another thread iterates crashes the process (segfault). The service therefore only uses ``ThreadedStore``,
which opens the database in the lifespan and runs every call, reads included, on one thread of its own: a reopen
or close waits for the read before it, and a caller that gives up (a cancelled request) never frees what that
thread is using.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import plyvel
import structlog

from services.common.lifecycle import Faults
from services.common.schema import ChatMessage

_MESSAGE = b"m\x00"
_MESSAGES_END = b"m\x01"
_CLIENT_KEY = b"k\x00"
_DIGEST = b"d\x00"
_DIGESTS_END = b"d\x01"
_DIGEST_VERSION = b"meta:digest"
_PROBE_KEY = b"probe"
_SEP = b"\x00"
_ID_AFTER_ALL = b"\xff"
_REBUILD_BATCH = 10000
T = TypeVar("T")
log = structlog.get_logger(__name__)


def id_hash(msg_id: str) -> int:
    """The 64-bit hash of one id; a room's digest hash is the sum of its ids' hashes mod 2**64."""
    return int.from_bytes(hashlib.blake2b(msg_id.encode(), digest_size=8).digest(), "big")


@dataclass(slots=True)
class RoomDigest:
    """What ``GET /digest`` says of one room; equal digests mean equal id sets (up to a 64-bit hash collision)."""

    room: str
    count: int = 0
    hash: int = 0
    first: str = ""
    last: str = ""

    def add(self, msg_id: str) -> None:
        self.count += 1
        self.hash = (self.hash + id_hash(msg_id)) % 2**64
        self.first = min(self.first, msg_id) if self.first else msg_id
        self.last = max(self.last, msg_id)

    def as_json(self) -> dict[str, object]:
        return {"room": self.room, "count": self.count, "first": self.first, "last": self.last,
                "hash": f"{self.hash:016x}"}

    def encode(self) -> bytes:
        return struct.pack(">QQ", self.count, self.hash) + self.first.encode() + _SEP + self.last.encode()

    @classmethod
    def decode(cls, room: str, value: bytes) -> RoomDigest:
        count, hashed = struct.unpack_from(">QQ", value)
        first, _, last = value[16:].partition(_SEP)
        return cls(room, count, hashed, first.decode(), last.decode())


def _room_prefix(room: str) -> bytes:
    return _MESSAGE + room.encode() + _SEP


def _message_key(room: str, msg_id: str) -> bytes:
    return _room_prefix(room) + msg_id.encode()


def _digest_key(room: str) -> bytes:
    return _DIGEST + room.encode()


def _split_message_key(key: bytes) -> tuple[str, str]:
    room, _, msg_id = key[len(_MESSAGE):].rpartition(_SEP)
    return room.decode(), msg_id.decode()


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
class ExportPosition:
    """Where an export resumes: strictly after (from_room, after); ``room`` set: that room alone."""

    from_room: str | None = None
    after: str | None = None
    room: str | None = None

    @property
    def only_room(self) -> bool:
        return self.room is not None

    def __post_init__(self) -> None:
        if self.room is not None and self.from_room not in (None, self.room):
            raise ValueError("from_room must be the exported room")
        if self.room is not None and self.from_room is None:
            object.__setattr__(self, "from_room", self.room)


@dataclass(frozen=True, slots=True)
class PageQuery:
    """A validated history query; ``after``/``before`` are exclusive, ``latest`` takes the newest."""

    room: str
    limit: int
    after: str | None = None
    before: str | None = None
    latest: bool = False


def _open(path: str) -> plyvel.DB:
    # Every write first looks its keys up, and most are new: a bloom filter answers "absent" without reading a block
    # (tables written before it existed simply have none).
    return plyvel.DB(path, create_if_missing=True, bloom_filter_bits=10)


class MessageStore:
    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self._path = path
        self._db = _open(path)
        if self._db.get(_DIGEST_VERSION) is None:
            self._rebuild_digests()

    def _rebuild_digests(self) -> None:
        """Compute every room's digest from the messages (a v1 store, or one whose digests were dropped)."""
        started = time.perf_counter()
        with self._db.write_batch() as batch:
            for key in self._db.iterator(start=_DIGEST, stop=_DIGESTS_END, include_value=False):
                batch.delete(key)
        current: RoomDigest | None = None
        messages = 0
        batch = self._db.write_batch()
        for key in self._db.iterator(start=_MESSAGE, stop=_MESSAGES_END, include_value=False):
            room, msg_id = _split_message_key(key)
            if current is None or current.room != room:
                if current is not None:
                    batch.put(_digest_key(current.room), current.encode())
                current = RoomDigest(room)
            current.add(msg_id)
            messages += 1
            if messages % _REBUILD_BATCH == 0:
                batch.write()
                batch = self._db.write_batch()
        if current is not None:
            batch.put(_digest_key(current.room), current.encode())
        batch.put(_DIGEST_VERSION, b"1")
        batch.write()
        self._db.put(_PROBE_KEY, b"1", sync=True)  # the marker is on disk before anything relies on it
        log.info("room digests computed from the stored messages", messages=messages,
                 seconds=round(time.perf_counter() - started, 3))

    def reopen(self) -> None:
        """LevelDB keeps refusing writes after one failed (a sticky background error) until reopened.

        Reopening replays the write-ahead log into a new table, so it fails on a full disk, and a closed database
        serves no reads either: reopen only once the log's size fits, and keep reading from the open one until then.
        """
        self._check_room()
        if not self._db.closed:
            self._db.close()
        self._db = _open(self._path)

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
        """Store (message, wire body) pairs in one synced batch, digests included; return what was new."""
        result = WriteResult()
        pending = _PendingBatch(self._db)
        for message, wire in messages:
            key = _message_key(message.room, message.id)
            if pending.get(key) is not None:
                result.duplicate_ids += 1
                continue
            client_key = _client_key(message)
            if client_key is not None:
                kept = pending.get(client_key)
                if kept is not None and kept.decode() <= message.id:
                    result.duplicate_client_ids += 1
                    continue
                if kept is not None:
                    # The smaller id wins whatever the arrival order: drop the larger one stored before.
                    result.duplicate_client_ids += 1
                    pending.remove_message(message.room, kept.decode())
                pending.put(client_key, message.id.encode())
            pending.add_message(message.room, message.id, wire)
            result.stored.append(message)
        with self._db.write_batch(sync=True) as batch:
            pending.write_to(batch)
        result.stored = [m for m in result.stored if m.id not in pending.removed_ids]
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



    def digests(self, room: str | None = None, after_room: str | None = None, limit: int = 1000) -> list[RoomDigest]:
        """Room digests in room order: one room, or up to ``limit`` rooms after ``after_room``."""
        if room is not None:
            value = self._db.get(_digest_key(room))
            return [RoomDigest.decode(room, value)] if value is not None else []
        start = _digest_key(after_room) + _SEP if after_room is not None else _DIGEST
        with self._db.iterator(start=start, stop=_DIGESTS_END) as items:
            return [RoomDigest.decode(key[len(_DIGEST):].decode(), value)
                    for _, (key, value) in zip(range(limit), items, strict=False)]

    def export(self, position: ExportPosition, limit: int) -> list[tuple[str, str, bytes]]:
        """Up to ``limit`` stored (room, id, body) in (room, id) order, strictly after ``position``."""
        prefix = _room_prefix(position.room) if position.room is not None else _MESSAGE
        if position.after is not None:
            start = _message_key(position.from_room or "", position.after) + _SEP
        elif position.from_room is not None:
            start = _room_prefix(position.from_room)
        else:
            start = prefix
        stop = prefix + _ID_AFTER_ALL if position.room is not None else _MESSAGES_END
        with self._db.iterator(start=start, stop=stop) as items:
            return [(*_split_message_key(key), body) for _, (key, body) in zip(range(limit), items, strict=False)]

class _PendingBatch:
    """One write batch being built: key changes over the database, and the digests of the rooms it touches."""

    def __init__(self, db: plyvel.DB) -> None:
        self._db = db
        self._changes: dict[bytes, bytes | None] = {}
        self._digests: dict[str, RoomDigest] = {}
        self._bounds_stale: set[str] = set()
        self.removed_ids: set[str] = set()

    def get(self, key: bytes) -> bytes | None:
        if key in self._changes:
            return self._changes[key]
        value: bytes | None = self._db.get(key)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self._changes[key] = value

    def add_message(self, room: str, msg_id: str, wire: bytes) -> None:
        self._changes[_message_key(room, msg_id)] = wire
        self._digest(room).add(msg_id)

    def remove_message(self, room: str, msg_id: str) -> None:
        self._changes[_message_key(room, msg_id)] = None
        self.removed_ids.add(msg_id)
        digest = self._digest(room)
        digest.count -= 1
        digest.hash = (digest.hash - id_hash(msg_id)) % 2**64
        if msg_id in (digest.first, digest.last):
            self._bounds_stale.add(room)

    def write_to(self, batch: plyvel.WriteBatch) -> None:
        for room in self._bounds_stale:
            self._digests[room].first, self._digests[room].last = self._bounds(room)
        for key, value in self._changes.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for room, digest in self._digests.items():
            batch.put(_digest_key(room), digest.encode())

    def _digest(self, room: str) -> RoomDigest:
        if room not in self._digests:
            stored = self._db.get(_digest_key(room))
            self._digests[room] = RoomDigest.decode(room, stored) if stored is not None else RoomDigest(room)
        return self._digests[room]

    def _bounds(self, room: str) -> tuple[str, str]:
        """The room's smallest and largest id after this batch (rare: only when a replaced id was one of them)."""
        prefix = _room_prefix(room)
        ids = {_split_message_key(k)[1] for k, v in self._changes.items() if k.startswith(prefix) and v is not None}
        for reverse in (False, True):
            with self._db.iterator(prefix=prefix, reverse=reverse, include_value=False) as keys:
                for key in keys:
                    if key not in self._changes:
                        ids.add(_split_message_key(key)[1])
                        break
        return (min(ids), max(ids)) if ids else ("", "")


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

    async def digests(self, room: str | None = None, after_room: str | None = None,
                      limit: int = 1000) -> list[RoomDigest]:
        return await self._on_thread(self._open().digests, room, after_room, limit)

    async def export(self, position: ExportPosition, limit: int) -> list[tuple[str, str, bytes]]:
        return await self._on_thread(self._open().export, position, limit)

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
