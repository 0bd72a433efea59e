"""Local fan-out: rooms of subscribers, each with a bounded send buffer drained by one writer task.

A message is encoded once per replica (``ChatMessage.to_frame``) and the same string is queued to every
subscriber of its room. A subscriber whose buffer overflows is a slow consumer: it is closed with 1013
instead of growing the replica's memory. Until its backlog is delivered, a subscriber holds live messages
aside (``pending``) so that history and live can be joined without a gap or a duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

import structlog

from services.common.schema import ChatMessage

log = structlog.get_logger(__name__)

CLOSE_SLOW_CONSUMER = 1013
SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]
Entry = tuple[ChatMessage, str]  # a message and its client frame, encoded once per replica


class Subscriber:
    """One WebSocket connection's outbound side."""

    def __init__(self, room: str, send_text: SendText, close: Close, max_frames: int, coalesce: bool) -> None:
        self.room = room
        self._send_text = send_text
        self._close = close
        self._max_frames = max_frames
        self._coalesce = coalesce
        self._frames: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.pending: list[Entry] | None = []  # None once synced
        # Ids the backlog already sent that may still arrive live: history can store a message before this
        # replica's queue delivers it. Dropped when they show up, forgotten after the recovery window.
        self._already_sent: set[str] | None = None
        self._already_sent_until = 0.0
        self._live_ids: set[str] | None = None
        self.closed = False
        self.close_code: int | None = None
        self._close_reason = ""
        self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")

    @property
    def buffered(self) -> int:
        return len(self._frames)

    def deliver_live(self, message: ChatMessage, frame: str) -> None:
        if self._already_sent is not None:
            if time.monotonic() > self._already_sent_until:
                self._already_sent = None
            elif message.id in self._already_sent:
                self._already_sent.discard(message.id)
                return
        if self.pending is not None:
            if len(self.pending) >= self._max_frames:
                self.overflow("live messages piled up while the backlog was sent")
                return
            self.pending.append((message, frame))
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
        if len(self._frames) >= self._max_frames:
            self.overflow(f"send buffer of {self._max_frames} frames overflowed")
            return
        self._frames.append(frame)
        self._wakeup.set()
        if len(self._frames) >= self._max_frames // 2:
            self._space.clear()

    async def push_paced(self, frame: str) -> None:
        """Queue a backlog frame, waiting while the buffer is half full: history is sent at the client's pace."""
        if not self._space.is_set():
            await self._space.wait()
        self.push(frame)

    def finish_sync(self, already_sent: set[str] | None = None, window_s: float = 0.0) -> list[Entry]:
        """Leave buffering mode; return the held-back live messages. Later repeats of ``already_sent`` are dropped."""
        pending, self.pending = self.pending or [], None
        if already_sent:
            self._already_sent = already_sent
            self._already_sent_until = time.monotonic() + window_s
        return pending

    def overflow(self, reason: str) -> None:
        if self.closed:
            return
        log.warning("closing slow consumer", room=self.room, reason=reason, buffered=len(self._frames))
        self.close_soon(CLOSE_SLOW_CONSUMER, "slow consumer")

    def close_soon(self, code: int, reason: str) -> None:
        """Drop what is queued and close; the writer task sends the close frame."""
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        self._frames.clear()
        self._space.set()
        self._wakeup.set()
        self._close_reason = reason

    async def aclose(self) -> None:
        self.closed = True
        self._space.set()
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                if self.closed:
                    break
                while self._frames and not self.closed:
                    if self._coalesce and len(self._frames) > 1:
                        batch = "\n".join(self._frames)
                        self._frames.clear()
                    else:
                        batch = self._frames.popleft()
                    await self._send_text(batch)
                    if len(self._frames) < self._max_frames // 2:
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
    """Rooms of subscribers on this replica."""

    def __init__(self) -> None:
        self._rooms: dict[str, set[Subscriber]] = {}

    def __len__(self) -> int:
        return sum(len(members) for members in self._rooms.values())

    def subscribe(self, subscriber: Subscriber) -> None:
        self._rooms.setdefault(subscriber.room, set()).add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        members = self._rooms.get(subscriber.room)
        if members is not None:
            members.discard(subscriber)
            if not members:
                del self._rooms[subscriber.room]

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

    def subscribers(self) -> list[Subscriber]:
        return [member for members in self._rooms.values() for member in members]
