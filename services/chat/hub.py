"""Local fan-out: rooms of subscribers, each with a bounded send buffer drained by one writer task.

A message is encoded once per replica (``ChatMessage.to_frame``) and the same string is queued to every
subscriber of its room. A subscriber's buffer is bounded in frames and in bytes; one that overflows either is a
slow consumer: it is closed with 1013 instead of growing the replica's memory. A coalesced frame (``coalesce=1``)
never exceeds the frame bound, so no client with a sane frame limit closes 1009. Until its backlog is delivered,
a subscriber holds live messages aside (``pending``, under the same bounds) so that history and live can be
joined without a gap or a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from services.chat.bounds import HighWater
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


class Subscriber:
    """One WebSocket connection's outbound side."""

    def __init__(self, room: str, send_text: SendText, close: Close, max_frames: int, coalesce: bool) -> None:
        self.room = room
        self._send_text = send_text
        self._close = close
        self._max_frames = max_frames
        self._coalesce = coalesce
        self._bounds = SendBounds()
        self._on_overflow: OnOverflow | None = None
        self._frames: deque[tuple[str, int]] = deque()  # (frame, its UTF-8 size)
        self._bytes = 0
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
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
        self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")

    def bound(self, bounds: SendBounds, on_overflow: OnOverflow | None = None) -> None:
        """Set the byte bounds (the hub does it for every subscriber it takes in) and the overflow counter."""
        self._bounds = bounds
        self._on_overflow = on_overflow

    @property
    def buffered(self) -> int:
        return len(self._frames)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

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
        size = utf8_size(frame)
        if len(self._frames) >= self._max_frames:
            self.overflow("frames", f"send buffer of {self._max_frames} frames overflowed")
            return
        if self._bytes + size > self._bounds.buffer_bytes:
            self.overflow("bytes", f"send buffer of {self._bounds.buffer_bytes} bytes overflowed")
            return
        self._frames.append((frame, size))
        self._bytes += size
        self._wakeup.set()
        if self._half_full():
            self._space.clear()

    async def push_paced(self, frame: str) -> None:
        """Queue a backlog frame, waiting while the buffer is half full: history is sent at the client's pace."""
        if not self._space.is_set():
            await self._space.wait()
        self.push(frame)

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
            buffered=len(self._frames), buffered_bytes=self._bytes,
        )
        if self._on_overflow is not None:
            self._on_overflow(limit)
        self.close_soon(CLOSE_SLOW_CONSUMER, "slow consumer")

    def close_soon(self, code: int, reason: str) -> None:
        """Drop what is queued and close; the writer task sends the close frame."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._frames.clear()
        self._bytes = 0
        self._space.set()
        self._wakeup.set()
        self._close_reason = reason

    async def aclose(self) -> None:
        self.closed = True
        self._space.set()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    def _half_full(self) -> bool:
        return len(self._frames) >= self._max_frames // 2 or self._bytes >= self._bounds.buffer_bytes // 2

    def _next_batch(self) -> str:
        """The next text frame: one queued frame, or (coalescing) as many as fit in the frame bound."""
        frame, size = self._frames.popleft()
        self._bytes -= size
        if not self._coalesce or not self._frames:
            return frame
        batch, total = [frame], size
        while self._frames and total + 1 + self._frames[0][1] <= self._bounds.frame_bytes:
            frame, size = self._frames.popleft()
            self._bytes -= size
            batch.append(frame)
            total += 1 + size
        return "\n".join(batch) if len(batch) > 1 else batch[0]

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                if self.closed:
                    break
                while self._frames and not self.closed:
                    await self._send_text(self._next_batch())
                    if not self._half_full():
                        self._space.set()
                if self.closed:
                    # close_soon() ran while a send was blocked (a slow consumer, a broker loss under load):
                    # its wakeup is spent, so send the close frame now rather than wait for one that never comes.
                    break
                if not self._frames:
                    self._wakeup.clear()
                    self._space.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away; the receive loop sees the disconnect
            log.debug("send failed", error=repr(exc)[:200])
            self.closed = True
            self._space.set()
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
        """Queue each (message, encoded frame) to its room's subscribers; return the number of deliveries."""
        deliveries = 0
        for message, frame in items:
            members = self._rooms.get(message.room)
            if not members:
                continue
            for subscriber in tuple(members):
                subscriber.deliver_live(message, frame)
            deliveries += len(members)
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
