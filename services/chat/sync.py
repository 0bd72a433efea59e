"""History, then live, with no gap and no duplicate at the seam (contract section 3).

The subscriber is already receiving live messages into its ``pending`` list when ``deliver_backlog`` runs.
The backlog (history merged with this replica's ring of recent deliveries) goes out in id order, paced by the
client; then the pending live messages not already sent; then ``synced``; from then on, live frames go
straight to the client. All steps after the backlog are synchronous, so no live message can slip in between.

When history cannot be read in full, ``synced`` says ``complete: false`` and the connection keeps a ``Gap``:
how far history was read and which other ids went out since. ``backfill`` retries until history answers, sends
what the client still lacks for the cursor it connected with (each id at most once), then ``synced`` again with
``complete: true``.

History answering is not enough when it is behind its queue (just restarted, or after a broker restart that took
this replica's queue and what was routed to it): a message it has not stored yet and that this replica's ring
does not hold would be missed for good. So a sync answered by a history replica that had not caught up with its
own queue when the read began is incomplete too (services/chat/history_client.py: caught-up replicas are asked
first); its gap holds every id sent, and the backfill waits until a replica has caught up, then reads the backlog
again. Every id sent is tracked from the start whenever some replica is behind, since which one answers is only
known once it has.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import structlog

from services.chat.history_client import HistoryClient, HistoryRead, HistoryUnavailable
from services.chat.hub import Entry, Subscriber
from services.chat.ring import RecentRing
from services.common.ids import ulid_floor
from services.common.schema import ChatMessage, Cursor, CursorFilter

log = structlog.get_logger(__name__)

CLOSE_SERVICE_RESTART = 1012
# Backfill retries back off to this, with full jitter, so that clients held by one outage do not all ask
# history again at the same instant when it returns.
BACKFILL_RETRY_MAX_S = 10.0
BACKFILL_RETRY_FIRST_S = 0.5
# A gap open this long in messages sent live means a long outage on a busy room: the ids to skip would grow
# without bound, so the client is sent away to reconnect with its cursor instead (it keeps the gap's cursor).
BACKFILL_MAX_TRACKED_IDS = 100_000


def error_frame(code: str, detail: str, client_id: str | None = None) -> str:
    body: dict[str, object] = {"type": "error", "code": code, "detail": detail}
    if client_id is not None:
        body["client_id"] = client_id
    return orjson.dumps(body).decode()


def synced_frame(last: str | None, complete: bool) -> str:
    return orjson.dumps({"type": "synced", "last": last, "complete": complete}).decode()


@dataclass(slots=True)
class Gap:
    """What an incomplete sync still owes a connection.

    History was read in full up to ``history_through`` (every wanted stored id up to it went out); ``sent``
    holds every other id that went out on this connection since (ring, held-back live, live since ``synced``).
    """

    cursor: Cursor | None
    history_through: str | None
    sent: set[str]
    last: str | None
    reason: str  # "unavailable" (the client got history_unavailable) or "lagging" (history behind its queue)
    # The smallest id minted after the connect: without a cursor, the client wanted the newest ones below it.
    connected_before: str


@dataclass(slots=True)
class _Progress:
    """What has been sent: the newest id, and the recent ids that a pending live message could repeat."""

    recent_floor_ms: int
    last: str | None = None
    recent_ids: set[str] = field(default_factory=set)
    history_through: str | None = None  # the last id read from history, wanted or not
    every_id: set[str] | None = None  # kept (up to the bound) when the sync cannot be complete anyway

    def sent(self, message: ChatMessage) -> None:
        if self.last is None or message.id > self.last:
            self.last = message.id
        if message.ts >= self.recent_floor_ms:
            self.recent_ids.add(message.id)
        if self.every_id is not None and len(self.every_id) <= BACKFILL_MAX_TRACKED_IDS:
            self.every_id.add(message.id)


class BacklogSync:
    def __init__(
        self,
        history: HistoryClient,
        ring: RecentRing,
        window_ms: int,
        on_connect_limit: int,
    ) -> None:
        self._history = history
        self._ring = ring
        self._window_ms = window_ms
        self._on_connect_limit = on_connect_limit

    async def deliver_backlog(
        self, subscriber: Subscriber, cursor: Cursor | None, token: str | None
    ) -> Gap | None:
        """Deliver the backlog, the held live messages, then `synced`; return the gap if history failed."""
        room = subscriber.room
        now_ms = int(time.time() * 1000)
        connected_before = ulid_floor(now_ms)
        read = self._history.read()
        # Live messages that repeat backlog ones are recent: only those ids need remembering, unless a replica
        # behind its queue may answer (then the sync may be incomplete, and the backfill must skip every id sent).
        progress = _Progress(
            recent_floor_ms=now_ms - 2 * self._window_ms, every_id=None if read.all_caught_up else set()
        )
        ring = self._ring.snapshot(room)
        unsent_ring: list[Entry] = []
        gap: Gap | None = None
        try:
            if cursor is None:
                unsent_ring = ring[-self._on_connect_limit :] if self._on_connect_limit else []
                entries = self._newest(await read.latest(room, self._on_connect_limit, token), ring)
                unsent_ring = []
                for message, frame in entries:
                    await self._send(subscriber, progress, message, frame)
            else:
                # Should history fail, the ring alone decides; origins it does not know fall back to time.
                unsent_ring = self._wanted_from_ring(ring, self._filter(cursor, ring, []))
                wanted = self._filter(cursor, ring, await self._lookup(read, room, cursor, ring, token))
                unsent_ring = self._wanted_from_ring(ring, wanted)
                history = _recording(read.stream_after(room, wanted.lower_bound, token), progress)
                async for message, frame in _merge(_selected(history, wanted), unsent_ring):
                    await self._send(subscriber, progress, message, frame)
        except HistoryUnavailable as exc:
            log.warning("history unavailable for backlog", room=room, error=str(exc))
            if progress.every_id is None:
                progress.every_id = set()  # from here on every id sent is one the backfill must skip
            # Behind its queue, history may still store ids below the point it was read to: read it all again.
            gap = Gap(
                cursor, None if read.lagging else progress.history_through, progress.every_id, None,
                "unavailable", connected_before,
            )
            subscriber.push(error_frame("history_unavailable", "history is unavailable; showing recent messages"))
            for message, frame in unsent_ring:
                if progress.last is None or message.id > progress.last:
                    await self._send(subscriber, progress, message, frame)
        else:
            if read.lagging and progress.every_id is not None:
                log.info("history is behind its queue: sync incomplete until it catches up", room=room,
                         replicas=sorted(read.answered))
                gap = Gap(cursor, None, progress.every_id, None, "lagging", connected_before)
        if gap is not None:
            # From here on every live id this connection gets is remembered, so the backfill never repeats one.
            subscriber.track_live(gap.sent)
        for message, frame in subscriber.finish_sync(progress.recent_ids, self._window_ms / 1000):
            if message.id in progress.recent_ids:
                progress.recent_ids.discard(message.id)
            else:
                subscriber.push(frame)
                progress.sent(message)
        subscriber.push(synced_frame(progress.last, complete=gap is None))
        if gap is not None:
            gap.last = progress.last
        return gap

    async def backfill(self, subscriber: Subscriber, gap: Gap, token: str | None) -> bool:
        """Retry the backlog until history answers; send what the gap owes, then `synced` complete.

        Returns whether the gap was closed (False when the connection closed first).
        """
        attempt = 0  # failed reads so far: only those back off; waiting for history to catch up is a local check
        while not subscriber.closed:
            await asyncio.sleep(random.uniform(0, min(BACKFILL_RETRY_MAX_S, BACKFILL_RETRY_FIRST_S * 2**attempt)))
            if len(gap.sent) > BACKFILL_MAX_TRACKED_IDS:
                log.warning("history gap open too long; client sent to reconnect", room=subscriber.room)
                subscriber.close_soon(CLOSE_SERVICE_RESTART, "history unavailable; reconnect with your cursor")
                return False
            read = self._history.read()
            if not read.any_caught_up:  # what it would read now may still grow below where it reads from
                continue
            try:
                sent = await self._send_gap(read, subscriber, gap, token)
            except HistoryUnavailable as exc:
                attempt += 1
                if read.lagging:
                    gap.history_through = None  # read from a replica behind its queue: read it all again
                log.info("history still unavailable for backfill", room=subscriber.room, attempt=attempt,
                         error=str(exc))
                continue
            if read.lagging:  # every caught-up replica failed and one behind its queue answered: not the end
                attempt += 1
                gap.history_through = None
                log.info("backfill answered by a history replica behind its queue; reading again",
                         room=subscriber.room, messages=sent)
                continue
            subscriber.track_live(None)
            last = max((i for i in (gap.last, max(gap.sent, default=None)) if i is not None), default=None)
            subscriber.push(synced_frame(last, complete=True))
            log.info("history gap backfilled", room=subscriber.room, messages=sent, attempts=attempt)
            return True
        return False

    async def _send_gap(self, read: HistoryRead, subscriber: Subscriber, gap: Gap, token: str | None) -> int:
        """Send the stored messages the gap owes that this connection has not had; resumable on failure."""
        room = subscriber.room
        if gap.cursor is None:
            # The client wanted the room's newest messages as of its connect: it gets those it does not have.
            entries = await read.latest(room, self._on_connect_limit, token, before=gap.connected_before)
            return await self._send_owed(subscriber, gap, _listed(entries))
        ring = self._ring.snapshot(room)
        wanted = self._filter(gap.cursor, ring, await self._lookup(read, room, gap.cursor, ring, token))
        start = max(wanted.lower_bound, gap.history_through or "")
        history = _recording(read.stream_after(room, start, token), gap)
        return await self._send_owed(subscriber, gap, _selected(history, wanted))

    @staticmethod
    async def _send_owed(subscriber: Subscriber, gap: Gap, entries: AsyncIterator[Entry]) -> int:
        count = 0
        async for message, frame in entries:
            if message.id in gap.sent:
                continue
            await subscriber.push_paced(frame)
            gap.sent.add(message.id)  # a later pass (after a failure, or a lagging answer) must not repeat it
            if gap.last is None or message.id > gap.last:
                gap.last = message.id
            count += 1
        return count

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

    @staticmethod
    async def _lookup(
        read: HistoryRead, room: str, cursor: Cursor, ring: list[Entry], token: str | None
    ) -> list[ChatMessage]:
        """The cursor's messages that the ring does not hold, read from history."""
        in_ring = {entry[0].id for entry in ring}
        missing = [i for i in cursor.ids if i not in in_ring]
        return await read.lookup(room, missing, token) if missing else []

    def _filter(self, cursor: Cursor, ring: list[Entry], looked_up: list[ChatMessage]) -> CursorFilter:
        """Map each cursor id to its origin (from the ring, then from history) and build the selection."""
        ids = set(cursor.ids)
        found = [entry[0] for entry in ring if entry[0].id in ids] + looked_up
        by_origin: dict[str, str] = {}
        for message in found:
            if message.id > by_origin.get(message.origin, ""):
                by_origin[message.origin] = message.id
        return CursorFilter(by_origin, cursor.newest_ts, self._window_ms)


async def _recording(entries: AsyncIterator[Entry], progress: _Progress | Gap) -> AsyncIterator[Entry]:
    """Note how far history has been read: a failure later means everything up to there went out."""
    async for entry in entries:
        progress.history_through = entry[0].id
        yield entry


async def _listed(entries: list[Entry]) -> AsyncIterator[Entry]:
    for entry in entries:
        yield entry


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
