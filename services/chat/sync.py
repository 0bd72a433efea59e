"""History, then live, with no gap and no duplicate at the seam (contract section 3).

The subscriber is already receiving live messages into its ``pending`` list when ``deliver_backlog`` runs.
The backlog (history merged with this replica's ring of recent deliveries) goes out in id order, paced by the
client; then the pending live messages not already sent; then ``synced``; from then on, live frames go
straight to the client. All steps after the backlog are synchronous, so no live message can slip in between.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import structlog

from services.chat.history_client import HistoryClient, HistoryUnavailable
from services.chat.hub import Entry, Subscriber
from services.chat.ring import RecentRing
from services.common.schema import ChatMessage, Cursor, CursorFilter

log = structlog.get_logger(__name__)


def error_frame(code: str, detail: str, client_id: str | None = None) -> str:
    body: dict[str, object] = {"type": "error", "code": code, "detail": detail}
    if client_id is not None:
        body["client_id"] = client_id
    return orjson.dumps(body).decode()


@dataclass(slots=True)
class _Progress:
    """What has been sent: the newest id, and the recent ids that a pending live message could repeat."""

    recent_floor_ms: int
    last: str | None = None
    recent_ids: set[str] = field(default_factory=set)

    def sent(self, message: ChatMessage) -> None:
        if self.last is None or message.id > self.last:
            self.last = message.id
        if message.ts >= self.recent_floor_ms:
            self.recent_ids.add(message.id)


class BacklogSync:
    def __init__(self, history: HistoryClient, ring: RecentRing, window_ms: int, on_connect_limit: int) -> None:
        self._history = history
        self._ring = ring
        self._window_ms = window_ms
        self._on_connect_limit = on_connect_limit

    async def deliver_backlog(
        self, subscriber: Subscriber, cursor: Cursor | None, token: str | None
    ) -> bool:
        """Deliver the backlog, the held live messages, then `synced`; return whether history answered."""
        room = subscriber.room
        # Live messages that repeat backlog ones are recent: only those ids need remembering.
        progress = _Progress(recent_floor_ms=int(time.time() * 1000) - 2 * self._window_ms)
        ring = self._ring.snapshot(room)
        unsent_ring: list[Entry] = []
        history_ok = True
        try:
            if cursor is None:
                unsent_ring = ring[-self._on_connect_limit :] if self._on_connect_limit else []
                entries = self._newest(await self._history.latest(room, self._on_connect_limit, token), ring)
                unsent_ring = []
                for message, frame in entries:
                    await self._send(subscriber, progress, message, frame)
            else:
                # Should history fail, the ring alone decides; origins it does not know fall back to time.
                unsent_ring = self._wanted_from_ring(ring, self._filter(cursor, ring, []))
                wanted = self._filter(cursor, ring, await self._lookup(room, cursor, ring, token))
                unsent_ring = self._wanted_from_ring(ring, wanted)
                history = self._history.stream_after(room, wanted.lower_bound, token)
                async for message, frame in _merge(_selected(history, wanted), unsent_ring):
                    await self._send(subscriber, progress, message, frame)
        except HistoryUnavailable as exc:
            history_ok = False
            log.warning("history unavailable for backlog", room=room, error=str(exc))
            subscriber.push(error_frame("history_unavailable", "history is unavailable; showing recent messages"))
            for message, frame in unsent_ring:
                if progress.last is None or message.id > progress.last:
                    await self._send(subscriber, progress, message, frame)
        for message, frame in subscriber.finish_sync(progress.recent_ids, self._window_ms / 1000):
            if message.id in progress.recent_ids:
                progress.recent_ids.discard(message.id)
            else:
                subscriber.push(frame)
                progress.sent(message)
        subscriber.push(orjson.dumps({"type": "synced", "last": progress.last}).decode())
        return history_ok

    async def _send(self, subscriber: Subscriber, progress: _Progress, message: ChatMessage, frame: str) -> None:
        await subscriber.push_paced(frame)
        progress.sent(message)

    def _newest(self, history: list[Entry], ring: list[Entry]) -> list[Entry]:
        by_id = {entry[0].id: entry for entry in history}
        by_id.update((entry[0].id, entry) for entry in ring)
        newest = sorted(by_id.values(), key=lambda entry: entry[0].id)
        return newest[-self._on_connect_limit :] if self._on_connect_limit else []

    @staticmethod
    def _wanted_from_ring(ring: list[Entry], wanted: CursorFilter) -> list[Entry]:
        return [entry for entry in ring if wanted.wants(entry[0])]

    async def _lookup(self, room: str, cursor: Cursor, ring: list[Entry], token: str | None) -> list[ChatMessage]:
        """The cursor's messages that the ring does not hold, read from history."""
        in_ring = {entry[0].id for entry in ring}
        missing = [i for i in cursor.ids if i not in in_ring]
        return await self._history.lookup(room, missing, token) if missing else []

    def _filter(self, cursor: Cursor, ring: list[Entry], looked_up: list[ChatMessage]) -> CursorFilter:
        """Map each cursor id to its origin (from the ring, then from history) and build the selection."""
        ids = set(cursor.ids)
        found = [entry[0] for entry in ring if entry[0].id in ids] + looked_up
        by_origin: dict[str, str] = {}
        for message in found:
            if message.id > by_origin.get(message.origin, ""):
                by_origin[message.origin] = message.id
        return CursorFilter(by_origin, cursor.newest_ts, self._window_ms)


async def _selected(entries: AsyncIterator[Entry], wanted: CursorFilter) -> AsyncIterator[Entry]:
    async for entry in entries:
        if wanted.wants(entry[0]):
            yield entry


async def _merge(history: AsyncIterator[Entry], ring: list[Entry]) -> AsyncIterator[Entry]:
    """Merge two id-sorted sequences, dropping ids present in both; consumes ``ring`` as it goes."""
    async for entry in history:
        while ring and ring[0][0].id < entry[0].id:
            yield ring.pop(0)
        if ring and ring[0][0].id == entry[0].id:
            ring.pop(0)
        yield entry
    while ring:
        yield ring.pop(0)
