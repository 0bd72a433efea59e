"""Local fan-out: rooms of subscribers, each with a bounded send buffer.

A message is encoded once per replica (``ChatMessage.to_frame``) and the same string is queued to every
subscriber of its room. On the replica's own server (``services/chat/wire.py``) a subscriber writes straight to
its connection's transport, with no task of its own: the frames of one consumed batch for one room are encoded to
WebSocket bytes once, and every member in the steady state gets them in one ``transport.write``; the transport's
write buffer is the send buffer, bounded like the queue below. Elsewhere (another ASGI server, ``coalesce=1``)
a subscriber queues frames and one writer task sends them through the ASGI ``send``.

A subscriber's buffer is bounded in frames and in bytes; one that overflows either is a slow consumer: it is
closed with 1013 instead of growing the replica's memory. A coalesced frame (``coalesce=1``) never exceeds the
frame bound, so no client with a sane frame limit closes 1009. Until its backlog is delivered, a subscriber holds
live messages aside (``pending``, under the same bounds) so that history and live can be joined without a gap or
a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

import structlog

from services.chat.bounds import HighWater
from services.chat.wire import FastSend, encode_text
from services.common.schema import ChatMessage

log = structlog.get_logger(__name__)

CLOSE_SLOW_CONSUMER = 1013
SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]
OnOverflow = Callable[[str], None]  # called with the bound that overflowed: "frames" or "bytes"
Entry = tuple[ChatMessage, str]  # a message and its client frame, encoded once per replica


@dataclass(frozen=True, slots=True)
class SendBounds:
    """Byte bounds of one client's outbound side (CHAT_SEND_BUFFER_BYTES, CHAT_MAX_FRAME_BYTES)."""

    buffer_bytes: int = 1024 * 1024
    frame_bytes: int = 256 * 1024


def utf8_size(frame: str) -> int:
    """Bytes of a frame on the wire; ASCII frames (most) cost nothing to measure."""
    return len(frame) if frame.isascii() else _encoded_size(frame)


@functools.lru_cache(maxsize=64)
def _encoded_size(frame: str) -> int:
    # A fan-out pushes the same frame object to every member of a room in a row: a small cache measures it once.
    return len(frame.encode("utf-8", "surrogatepass"))


class RoomBatch:
    """The messages of one consumed batch for one room, with what every member in the steady state gets."""

    __slots__ = ("entries", "__dict__")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    @cached_property
    def ids(self) -> frozenset[str]:
        return frozenset(message.id for message, _ in self.entries)

    @cached_property
    def wire(self) -> bytes:
        """Every frame of the batch as WebSocket bytes, encoded once for all the members."""
        return b"".join([encode_text(frame) for _, frame in self.entries])


class _Outbox:
    """The queued mode's state: frames waiting for the writer task, which sends them through the ASGI send."""

    __slots__ = ("frames", "bytes", "wakeup", "space", "writer")

    def __init__(self) -> None:
        self.frames: deque[tuple[str, int]] = deque()  # (frame, its UTF-8 size)
        self.bytes = 0
        self.wakeup = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.writer: asyncio.Task[None] | None = None


class Subscriber:
    """One WebSocket connection's outbound side."""

    __slots__ = (
        "room", "_send_text", "_close", "_max_frames", "_coalesce", "_bounds", "_on_overflow", "_direct",
        "_written", "_unsent", "_unsent_frames", "_closer", "_outbox", "pending", "_pending_bytes",
        "_already_sent", "_already_sent_until", "_live_ids", "closed", "close_code", "_close_reason",
    )

    def __init__(
        self, room: str, send_text: SendText, close: Close, max_frames: int, coalesce: bool,
        fast_send: FastSend | None = None,
    ) -> None:
        self.room = room
        self._send_text = send_text
        self._close = close
        self._max_frames = max_frames
        self._coalesce = coalesce
        self._bounds = SendBounds()
        self._on_overflow: OnOverflow | None = None
        # Direct: no queue and no task; frames go to the transport, whose buffer is bounded here instead.
        self._direct = fast_send if not coalesce else None
        self._written = 0  # bytes written to the transport so far (direct)
        self._unsent: deque[tuple[int, int]] | None = None  # (end offset, frames) still in its buffer (direct)
        self._unsent_frames = 0
        self._closer: asyncio.Task[None] | None = None
        self.pending: list[Entry] | None = []  # None once synced
        self._pending_bytes = 0
        # Ids the backlog already sent that may still arrive live: history can store a message before this
        # replica's queue delivers it. Dropped when they show up, forgotten after the recovery window.
        self._already_sent: set[str] | None = None
        self._already_sent_until = 0.0
        self._live_ids: set[str] | None = None
        self.closed = False
        self.close_code: int | None = None
        self._close_reason = ""
        self._outbox: _Outbox | None = None
        if self._direct is None:
            self._outbox = _Outbox()
            self._outbox.writer = asyncio.create_task(self._write_loop(self._outbox), name="ws-writer")

    def bound(self, bounds: SendBounds, on_overflow: OnOverflow | None = None) -> None:
        """Set the byte bounds (the hub does it for every subscriber it takes in) and the overflow counter."""
        self._bounds = bounds
        self._on_overflow = on_overflow

    @property
    def direct(self) -> bool:
        """Whether frames go straight to the transport (the fast path) rather than through a writer task."""
        return self._direct is not None

    @property
    def buffered(self) -> int:
        if self._direct is not None:
            return self._frames_unsent(self._direct.buffered)
        assert self._outbox is not None
        return len(self._outbox.frames)

    @property
    def buffered_bytes(self) -> int:
        if self._direct is not None:
            return self._direct.buffered
        assert self._outbox is not None
        return self._outbox.bytes

    def deliver_batch(self, batch: RoomBatch) -> None:
        """Deliver a room's share of a consumed batch: one write in the steady state, else message by message."""
        if self.closed:
            return
        if self._direct is None or self.pending is not None:
            self._deliver_each(batch.entries)
            return
        if self._already_sent is not None:
            if time.monotonic() > self._already_sent_until:
                self._already_sent = None
            elif not self._already_sent.isdisjoint(batch.ids):
                self._deliver_each(batch.entries)
                return
        if self._live_ids is not None:
            self._live_ids.update(batch.ids)
        self._write(batch.wire, len(batch.entries))

    def _deliver_each(self, entries: list[Entry]) -> None:
        for message, frame in entries:
            self.deliver_live(message, frame)

    def deliver_live(self, message: ChatMessage, frame: str) -> None:
        if self._already_sent is not None:
            if time.monotonic() > self._already_sent_until:
                self._already_sent = None
            elif message.id in self._already_sent:
                self._already_sent.discard(message.id)
                return
        if self.pending is not None:
            size = utf8_size(frame)
            if len(self.pending) >= self._max_frames:
                self.overflow("frames", "live messages piled up while the backlog was sent")
            elif self._pending_bytes + size > self._bounds.buffer_bytes:
                self.overflow("bytes", "live messages piled up while the backlog was sent")
            else:
                self.pending.append((message, frame))
                self._pending_bytes += size
        else:
            if self._live_ids is not None:
                self._live_ids.add(message.id)
            self.push(frame)

    def track_live(self, ids: set[str] | None) -> None:
        """Add the id of every live message sent from now on to ``ids`` (None stops): a backfill skips them."""
        self._live_ids = ids

    def push(self, frame: str) -> None:
        """Queue a frame without waiting; a full buffer closes the connection (slow consumer)."""
        if self.closed:
            return
        if self._direct is not None:
            self._write(encode_text(frame), 1)
            return
        outbox = self._outbox
        assert outbox is not None
        size = utf8_size(frame)
        if len(outbox.frames) >= self._max_frames:
            self.overflow("frames", f"send buffer of {self._max_frames} frames overflowed")
            return
        if outbox.bytes + size > self._bounds.buffer_bytes:
            self.overflow("bytes", f"send buffer of {self._bounds.buffer_bytes} bytes overflowed")
            return
        outbox.frames.append((frame, size))
        outbox.bytes += size
        outbox.wakeup.set()
        if self._half_full(outbox):
            outbox.space.clear()

    async def push_paced(self, frame: str) -> None:
        """Queue a backlog frame, waiting while the buffer is half full: history is sent at the client's pace."""
        direct = self._direct
        if direct is not None:
            while not self.closed and self._half_full_direct(direct):
                await direct.room_to_write()
        else:
            assert self._outbox is not None
            if not self._outbox.space.is_set():
                await self._outbox.space.wait()
        self.push(frame)

    def _write(self, data: bytes, frames: int) -> None:
        """Direct mode: write complete frames, or close 1013 when the transport's buffer would pass a bound."""
        direct = self._direct
        assert direct is not None
        if not direct.open:
            self.closed = True  # the peer went, or the server is closing it: the receive loop sees the disconnect
            return
        buffered = direct.buffered
        if self._frames_unsent(buffered) + frames > self._max_frames:
            self.overflow("frames", f"send buffer of {self._max_frames} frames overflowed")
            return
        if buffered + len(data) > self._bounds.buffer_bytes:
            self.overflow("bytes", f"send buffer of {self._bounds.buffer_bytes} bytes overflowed")
            return
        direct.write(data)
        self._written += len(data)
        if direct.buffered:  # the socket did not take it all: remember where these frames end
            if self._unsent is None:
                self._unsent = deque()
            self._unsent.append((self._written, frames))
            self._unsent_frames += frames

    def _frames_unsent(self, buffered: int) -> int:
        """Frames (some perhaps in part) still in the transport's buffer, given its size in bytes."""
        unsent = self._unsent
        if not unsent:
            return 0
        if not buffered:
            unsent.clear()
            self._unsent_frames = 0
            return 0
        sent_through = self._written - buffered
        while unsent and unsent[0][0] <= sent_through:
            self._unsent_frames -= unsent.popleft()[1]
        return self._unsent_frames

    def _half_full_direct(self, direct: FastSend) -> bool:
        buffered = direct.buffered
        return buffered >= self._bounds.buffer_bytes // 2 or self._frames_unsent(buffered) >= self._max_frames // 2

    def finish_sync(self, already_sent: set[str] | None = None, window_s: float = 0.0) -> list[Entry]:
        """Leave buffering mode; return the held-back live messages. Later repeats of ``already_sent`` are dropped."""
        pending, self.pending = self.pending or [], None
        self._pending_bytes = 0
        if already_sent:
            self._already_sent = already_sent
            self._already_sent_until = time.monotonic() + window_s
        return pending

    def overflow(self, limit: str, reason: str) -> None:
        """Close a slow consumer 1013; ``limit`` names the bound it overflowed ("frames" or "bytes")."""
        if self.closed:
            return
        log.warning(
            "closing slow consumer", room=self.room, limit=limit, reason=reason,
            buffered=self.buffered, buffered_bytes=self.buffered_bytes,
        )
        if self._on_overflow is not None:
            self._on_overflow(limit)
        self.close_soon(CLOSE_SLOW_CONSUMER, "slow consumer")

    def close_soon(self, code: int, reason: str) -> None:
        """Drop what is queued and close; the writer task (direct: a task of its own) sends the close frame."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._close_reason = reason
        outbox = self._outbox
        if outbox is None:
            # Written frames stay in the transport's buffer ahead of the close frame, as in the queued mode once
            # a frame is handed to the server. The ASGI close waits while the transport is paused.
            self._closer = asyncio.create_task(self._send_close(), name="ws-close")
            return
        outbox.frames.clear()
        outbox.bytes = 0
        outbox.space.set()
        outbox.wakeup.set()

    async def aclose(self) -> None:
        self.closed = True
        tasks = [self._closer]
        if self._outbox is not None:
            self._outbox.space.set()
            tasks.append(self._outbox.writer)
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _send_close(self) -> None:
        assert self.close_code is not None
        try:
            await self._close(self.close_code, self._close_reason)
        except Exception as exc:  # the peer went first; the receive loop sees the disconnect
            log.debug("close failed", error=repr(exc)[:200])

    def _half_full(self, outbox: _Outbox) -> bool:
        return len(outbox.frames) >= self._max_frames // 2 or outbox.bytes >= self._bounds.buffer_bytes // 2

    def _next_batch(self, outbox: _Outbox) -> str:
        """The next text frame: one queued frame, or (coalescing) as many as fit in the frame bound."""
        frames = outbox.frames
        frame, size = frames.popleft()
        outbox.bytes -= size
        if not self._coalesce or not frames:
            return frame
        batch, total = [frame], size
        while frames and total + 1 + frames[0][1] <= self._bounds.frame_bytes:
            frame, size = frames.popleft()
            outbox.bytes -= size
            batch.append(frame)
            total += 1 + size
        return "\n".join(batch) if len(batch) > 1 else batch[0]

    async def _write_loop(self, outbox: _Outbox) -> None:
        try:
            while True:
                await outbox.wakeup.wait()
                if self.closed:
                    break
                while outbox.frames and not self.closed:
                    await self._send_text(self._next_batch(outbox))
                    if not self._half_full(outbox):
                        outbox.space.set()
                if self.closed:
                    # close_soon() ran while a send was blocked (a slow consumer, a broker loss under load):
                    # its wakeup is spent, so send the close frame now rather than wait for one that never comes.
                    break
                if not outbox.frames:
                    outbox.wakeup.clear()
                    outbox.space.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away; the receive loop sees the disconnect
            log.debug("send failed", error=repr(exc)[:200])
            self.closed = True
            outbox.space.set()
            return
        if self.close_code is not None:
            with contextlib.suppress(Exception):
                await self._close(self.close_code, self._close_reason)


class Hub:
    """Rooms of subscribers on this replica. A room is dropped with its last subscriber, and the room map is
    compacted once most of the rooms it held are gone, so room names chosen by clients cost nothing afterwards."""

    def __init__(self, bounds: SendBounds | None = None, on_overflow: OnOverflow | None = None) -> None:
        self._rooms: dict[str, set[Subscriber]] = {}
        self._rooms_high = HighWater()
        self._bounds = bounds or SendBounds()
        self._on_overflow = on_overflow

    def __len__(self) -> int:
        return sum(len(members) for members in self._rooms.values())

    @property
    def rooms(self) -> int:
        return len(self._rooms)

    def subscribe(self, subscriber: Subscriber) -> None:
        subscriber.bound(self._bounds, self._on_overflow)
        self._rooms.setdefault(subscriber.room, set()).add(subscriber)
        self._rooms_high.note(len(self._rooms))

    def unsubscribe(self, subscriber: Subscriber) -> None:
        members = self._rooms.get(subscriber.room)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self._rooms[subscriber.room]
                self._rooms = self._rooms_high.shrink(self._rooms)

    def dispatch(self, items: Iterable[Entry]) -> int:
        """Deliver each (message, encoded frame) to its room's subscribers; return the number of deliveries.

        Grouped by room, in order: a room's members get its messages of this batch as one ``RoomBatch``.
        """
        by_room: dict[str, list[Entry]] = {}
        for entry in items:
            entries = by_room.get(entry[0].room)
            if entries is None:
                by_room[entry[0].room] = [entry]
            else:
                entries.append(entry)
        deliveries = 0
        for room, entries in by_room.items():
            members = self._rooms.get(room)
            if not members:
                continue
            batch = RoomBatch(entries)
            for subscriber in tuple(members):
                subscriber.deliver_batch(batch)
            deliveries += len(members) * len(entries)
        return deliveries

    def broadcast(self, room: str, frame: str, exclude: Subscriber | None = None) -> int:
        """Push one already-encoded frame to every subscriber of ``room`` except ``exclude``; return how many.

        For frames outside the message stream (presence, typing): they go out at once, also to a subscriber
        still receiving its backlog, under the same slow-consumer bounds as every other frame.
        """
        members = self._rooms.get(room)
        if not members:
            return 0
        count = 0
        for subscriber in tuple(members):
            if subscriber is not exclude and not subscriber.closed:
                subscriber.push(frame)
                count += 1
        return count

    def subscribers(self) -> list[Subscriber]:
        return [member for members in self._rooms.values() for member in members]
