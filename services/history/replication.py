"""History replicas: copy what this replica lacks from a ready peer, and verify that replicas agree.

Every replica consumes its own queue from the moment it starts, so it receives everything published from then on;
what was published before (or routed to a queue deleted since) only its peers hold. The ``Copier`` therefore runs
at every start and whenever the broker recreated this replica's queue: it takes the first ready peer (``/readyz``
200, in ordinal order), waits briefly until that peer has stored what it had received (``/progress``), compares
the room digests and copies, over ``GET /export``, every room where the peer's digest differs (every room when
this store is empty). Writes are the store's idempotent ones, so a copy never duplicates and may be repeated.

A dropped stream resumes after the last (room, id) written, from the same peer or, once it has failed
``_ATTEMPTS_PER_PEER`` times, from the next ready one; when every ready peer failed yet still answers (a refused
token, say), the copy starts over every ``_NO_PEER_POLL_S``. The replica is not ready while it copies (readiness
problem ``copying``, reads answer 503 ``not_ready``). With no ready peer it serves what it holds, says so
(``/readyz`` ``copy.state`` is ``no_peer``, one warning line), and copies as soon as a ready peer holds settled
rooms that differ from its own (if they match, it is complete: ``done``).

The ``DigestVerifier`` compares this replica's digests with each ready peer's every ``HISTORY_VERIFY_INTERVAL_S`` and
exports the rooms that differ as ``durable_chat_history_digest_mismatched_rooms{peer}``; a room whose newest id is
younger than ``SETTLE_WINDOW_S`` on either side is skipped (its last messages may still be in flight).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import orjson
import structlog

from services.common.ids import ulid_timestamp
from services.common.schema import ChatMessage, InvalidMessage
from services.history.metrics import HistoryMetrics
from services.history.settings import HistorySettings
from services.history.store import ExportPosition, RoomDigest, ThreadedStore

log = structlog.get_logger(__name__)

SETTLE_WINDOW_S = 30.0
COPY_BATCH = 2000
_ATTEMPTS_PER_PEER = 3
_PROGRESS_LOG_EVERY_S = 5.0
_PEER_BARRIER_S = 10.0
_NO_PEER_POLL_S = 5.0
_TIMEOUT = httpx.Timeout(10.0, read=60.0)


class PeerError(Exception):
    """A peer did not answer, answered an error, or cut a stream short."""


class CopyFailed(Exception):
    """Every ready peer failed the copy while still answering /readyz: try again later, unready meanwhile."""


@dataclass(slots=True)
class CopyStatus:
    """What ``/readyz`` says of the copy; ``state``: pending, copying, done, no_peer or solo (no peers configured)."""

    state: str = "pending"
    peer: int | None = None
    messages: int = 0
    stored: int = 0
    rooms_remaining: int = 0
    seconds: float = 0.0

    @property
    def serving(self) -> bool:
        return self.state in ("done", "no_peer", "solo")

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "peer": self.peer, "messages": self.messages, "stored": self.stored,
                "rooms_remaining": self.rooms_remaining, "seconds": round(self.seconds, 3)}


class PeerClient:
    """HTTP calls to other history replicas, with a token minted from the shared secret when auth is on."""

    def __init__(self, settings: HistorySettings) -> None:
        self._settings = settings
        self._http = httpx.AsyncClient(timeout=_TIMEOUT)

    async def aclose(self) -> None:
        await self._http.aclose()

    def _headers(self) -> dict[str, str]:
        if not self._settings.auth_secret:
            return {}
        claims = {"sub": f"history-{self._settings.ordinal}", "exp": int(time.time()) + 300}
        return {"Authorization": "Bearer " + jwt.encode(claims, self._settings.auth_secret, algorithm="HS256")}

    async def ready(self, url: str) -> bool:
        try:
            response = await self._http.get(f"{url}/readyz", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def progress(self, url: str) -> dict[str, Any]:
        try:
            response = await self._http.get(f"{url}/progress", timeout=2.0)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body
        except (httpx.HTTPError, ValueError) as exc:
            raise PeerError(f"progress: {exc!r}"[:300]) from None

    async def digests(self, url: str) -> dict[str, RoomDigest]:
        found: dict[str, RoomDigest] = {}
        async for line in self._lines(f"{url}/digest", {}):
            entry = orjson.loads(line)
            found[entry["room"]] = RoomDigest(
                entry["room"], entry["count"], int(entry["hash"], 16), entry["first"], entry["last"]
            )
        return found

    async def export(self, url: str, position: ExportPosition) -> AsyncIterator[bytes]:
        params = {name: value for name, value in (
            ("room", position.room), ("from_room", position.from_room), ("after", position.after)
        ) if value is not None}
        async for line in self._lines(f"{url}/export", params):
            yield line

    async def _lines(self, url: str, params: dict[str, str]) -> AsyncIterator[bytes]:
        """Complete NDJSON lines; a stream cut short raises PeerError after the last complete line."""
        try:
            async with self._http.stream("GET", url, params=params, headers=self._headers()) as response:
                if response.status_code != 200:
                    raise PeerError(f"{url} answered {response.status_code}")
                rest = b""
                async for chunk in response.aiter_bytes():
                    lines = (rest + chunk).split(b"\n")
                    rest = lines.pop()
                    for line in lines:
                        if line:
                            yield line
                if rest:
                    raise PeerError(f"{url}: the stream ended inside a line")
        except httpx.HTTPError as exc:
            raise PeerError(f"{url}: {exc!r}"[:300]) from None


async def local_digests(store: ThreadedStore) -> dict[str, RoomDigest]:
    found: dict[str, RoomDigest] = {}
    after: str | None = None
    while True:
        page = await store.digests(after_room=after, limit=5000)
        found.update((digest.room, digest) for digest in page)
        if len(page) < 5000:
            return found
        after = page[-1].room


def differing_rooms(mine: dict[str, RoomDigest], theirs: dict[str, RoomDigest]) -> list[str]:
    """Rooms the peer holds whose digest differs from ours, in room order."""
    return sorted(room for room, digest in theirs.items() if digest.count and mine.get(room) != digest)


def settled_mismatches(mine: dict[str, RoomDigest], theirs: dict[str, RoomDigest], now_ms: int) -> list[str]:
    """Rooms that differ, leaving out those with a message younger than the settle window on either side."""
    settle_from = now_ms - SETTLE_WINDOW_S * 1000
    rooms = []
    for room in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(room), theirs.get(room)
        if a == b:
            continue
        newest = max((d.last for d in (a, b) if d is not None and d.last), default="")
        if newest and ulid_timestamp(newest) >= settle_from:
            continue
        rooms.append(room)
    return rooms


class Copier:
    """Runs the copy at start and on request (the queue was recreated); see the module docstring."""

    def __init__(
        self, store: ThreadedStore, settings: HistorySettings, metrics: HistoryMetrics,
        consuming: asyncio.Event,
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._consuming = consuming
        self._peers = settings.peer_urls
        self._client = PeerClient(settings)
        self._requested = asyncio.Event()
        self.status = CopyStatus(state="pending" if self._peers else "solo")

    def request(self) -> None:
        """Copy again (the broker recreated this replica's queue: what was routed to the old one is lost)."""
        if not self._peers:
            log.warning("this replica's queue was recreated and it has no peers to copy what it lost from")
            return
        self.status.state = "pending"
        self._requested.set()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run(self) -> None:
        if not self._peers:
            log.info("no peers configured (HISTORY_PEERS): a single replica, nothing to copy")
            return
        while True:
            self._requested.clear()
            await self._consuming.wait()  # consume first: everything from now on arrives on our queue
            try:
                copied = await self._copy_round()
            except CopyFailed:
                self.status.state = "copying"
                await asyncio.sleep(_NO_PEER_POLL_S)
                continue
            except Exception as exc:  # a store write failed (disk full): stay unready, try again
                log.error("copy failed writing to this replica's store; retrying", error=repr(exc)[:300])
                self.status.state = "copying"
                await asyncio.sleep(_NO_PEER_POLL_S)
                continue
            if copied:
                await self._requested.wait()
            else:
                await self._until_a_peer_has_more()

    async def _until_a_peer_has_more(self) -> None:
        """No peer was ready: serve what we hold until a ready peer holds settled messages we lack (or a request).

        Compared while still serving: two replicas that started together (neither ready for the other) must not
        both go unready to copy from each other when there is nothing to copy. A ready peer that holds what we
        hold makes what we serve complete after all (state ``done``).
        """
        while not self._requested.is_set():
            try:
                await asyncio.wait_for(self._requested.wait(), _NO_PEER_POLL_S)
                return
            except TimeoutError:
                pass
            peers = await self._ready_peers()
            if not peers:
                continue
            ordinal, url = peers[0]
            try:
                theirs = await self._client.digests(url)
            except PeerError as exc:
                log.warning("could not read a ready peer's digests", peer=ordinal, error=str(exc)[:300])
                continue
            rooms = settled_mismatches(await local_digests(self._store), theirs, int(time.time() * 1000))
            if rooms:
                log.info("a peer is ready now and holds rooms that differ: copying", peer=ordinal, rooms=len(rooms))
                return
            log.info("a peer is ready now and holds what this replica holds: nothing to copy", peer=ordinal)
            self.status = CopyStatus(state="done", peer=ordinal)
            await self._requested.wait()

    async def _ready_peers(self) -> list[tuple[int, str]]:
        answers = await asyncio.gather(*(self._client.ready(url) for url in self._peers.values()))
        return [(ordinal, url) for (ordinal, url), ready in zip(self._peers.items(), answers, strict=True) if ready]

    async def _copy_round(self) -> bool:
        """One copy from the ready peers; False when none is ready (or every one failed)."""
        peers = await self._ready_peers()
        if not peers:
            self.status = CopyStatus(state="no_peer")
            log.warning("no ready peer: serving what this replica holds, without a copy",
                        peers=list(self._peers))
            return False
        self.status = CopyStatus(state="copying")
        self._metrics.copy_in_progress.set(1)
        started = time.perf_counter()
        plan: _CopyPlan | None = None
        try:
            for ordinal, url in peers:
                self.status.peer = ordinal
                for attempt in range(1, _ATTEMPTS_PER_PEER + 1):
                    try:
                        made_by_another = plan is not None and plan.peer != ordinal
                        plan = await self._copy_from(ordinal, url, plan)
                        if made_by_another:  # the plan came from a peer that failed: what does this one add?
                            plan = await self._copy_from(ordinal, url, None)
                        self._finish(started)
                        return True
                    except PeerError as exc:
                        log.warning("copy from peer failed; resuming", peer=ordinal, attempt=attempt,
                                    error=str(exc)[:300], messages=self.status.messages)
                        if not await self._client.ready(url):
                            break
                        await asyncio.sleep(0.5 * attempt)
            still_ready = [ordinal for ordinal, _ in await self._ready_peers()]
            if still_ready:  # they answer, yet the copy fails (a refused token?): never serve a partial copy
                log.error("copy failed from every ready peer; not ready, retrying", peers=still_ready,
                          messages=self.status.messages, retry_in_s=_NO_PEER_POLL_S)
                raise CopyFailed("every ready peer failed")
            log.error("copy failed and no peer is ready any more; serving what this replica holds",
                      peers=[ordinal for ordinal, _ in peers], messages=self.status.messages)
            self.status.state = "no_peer"
            return False
        finally:
            self._metrics.copy_in_progress.set(0)
            self._metrics.copy_rooms_remaining.set(0)

    def _finish(self, started: float) -> None:
        seconds = time.perf_counter() - started
        self.status.state, self.status.seconds, self.status.rooms_remaining = "done", seconds, 0
        log.info(
            "copy from peer done; ready", peer=self.status.peer, messages=self.status.messages,
            stored=self.status.stored, seconds=round(seconds, 3),
            rate_per_s=round(self.status.messages / seconds) if seconds > 0 else None,
        )

    async def _copy_from(self, ordinal: int, url: str, plan: _CopyPlan | None) -> _CopyPlan:
        """Copy per ``plan`` (made from this peer's digests when None); raise PeerError where it stopped."""
        if plan is None:
            await self._wait_peer_settled(url)
            mine, theirs = await local_digests(self._store), await self._client.digests(url)
            rooms = differing_rooms(mine, theirs)
            plan = _CopyPlan(peer=ordinal, whole_store=not mine, rooms=rooms,
                             expected=sum(theirs[room].count for room in rooms))
            log.info("copying from peer", peer=ordinal, rooms=len(rooms), whole_store=plan.whole_store,
                     peer_messages=plan.expected)
        self._rooms_remaining(plan)
        if plan.whole_store:
            await self._copy_stream(url, plan, ExportPosition(from_room=plan.from_room, after=plan.after))
            plan.rooms = []
        while plan.rooms:
            room = plan.rooms[0]
            await self._copy_stream(url, plan, ExportPosition(room=room, after=plan.after if room == plan.from_room
                                                              else None))
            plan.rooms.pop(0)
            self._rooms_remaining(plan)
        return plan

    def _rooms_remaining(self, plan: _CopyPlan) -> None:
        self.status.rooms_remaining = len(plan.rooms)
        self._metrics.copy_rooms_remaining.set(len(plan.rooms))

    async def _wait_peer_settled(self, url: str) -> None:
        """Let the peer store what it had received when we started (what was queued before our queue existed)."""
        deadline = time.monotonic() + _PEER_BARRIER_S
        target = await self._client.progress(url)
        while time.monotonic() < deadline:
            now = await self._client.progress(url)
            if now.get("boot") != target.get("boot") or now.get("settled", 0) >= target.get("received", 0):
                return
            await asyncio.sleep(0.1)

    async def _copy_stream(self, url: str, plan: _CopyPlan, position: ExportPosition) -> None:
        """Parse the next batch while the previous one is written (one write in flight, so resuming stays exact)."""
        batch: list[tuple[ChatMessage, bytes]] = []
        writing: asyncio.Task[None] | None = None
        try:
            async for line in self._client.export(url, position):
                try:
                    batch.append((ChatMessage.from_wire(line), line))
                except InvalidMessage as exc:
                    raise PeerError(f"the peer exported an unreadable message: {exc}") from None
                if len(batch) >= COPY_BATCH:
                    if writing is not None:
                        await writing
                    writing = asyncio.create_task(self._write(plan, batch))
                    batch = []
        finally:
            if writing is not None:
                await writing  # before a resume reads the position it sets
        if batch:
            await self._write(plan, batch)

    async def _write(self, plan: _CopyPlan, batch: list[tuple[ChatMessage, bytes]]) -> None:
        result = await self._store.write(batch)
        last = batch[-1][0]
        plan.from_room, plan.after = last.room, last.id
        self.status.messages += len(batch)
        self.status.stored += len(result.stored)
        self._metrics.copy_messages.inc(len(result.stored))
        if plan.whole_store:  # one stream across every room: the rooms before this one are done
            while plan.rooms and plan.rooms[0] < last.room:
                plan.rooms.pop(0)
            self._rooms_remaining(plan)
        if time.monotonic() - plan.logged >= _PROGRESS_LOG_EVERY_S:
            plan.logged = time.monotonic()
            log.info("copying from peer", peer=self.status.peer, messages=self.status.messages,
                     of_about=plan.expected, stored=self.status.stored, room=last.room,
                     rooms_remaining=self.status.rooms_remaining)


@dataclass(slots=True)
class _CopyPlan:
    """What is left to copy, and where a resumed stream starts: strictly after (from_room, after)."""

    peer: int
    whole_store: bool
    rooms: list[str]
    expected: int = 0
    from_room: str | None = None
    after: str | None = None
    logged: float = 0.0


class DigestVerifier:
    """Every ``interval_s``, compare digests with each ready peer and export the mismatched rooms."""

    def __init__(self, store: ThreadedStore, settings: HistorySettings, metrics: HistoryMetrics,
                 serving: Callable[[], bool]) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._serving = serving
        self._client = PeerClient(settings)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def run(self) -> None:
        interval = self._settings.verify_interval_s
        peers = self._settings.peer_urls
        if not interval or not peers:
            return
        while True:
            await asyncio.sleep(interval)
            if self._serving():
                for ordinal, url in peers.items():
                    await self.verify(ordinal, url)

    async def verify(self, ordinal: int, url: str) -> int | None:
        """The number of settled rooms that differ from the peer's, or None if the peer is not ready."""
        if not await self._client.ready(url):
            log.info("verify skipped: peer not ready", peer=ordinal)
            return None
        try:
            theirs = await self._client.digests(url)
        except PeerError as exc:
            log.warning("verify: could not read the peer's digests", peer=ordinal, error=str(exc)[:300])
            return None
        rooms = settled_mismatches(await local_digests(self._store), theirs, int(time.time() * 1000))
        self._metrics.digest_mismatched_rooms.labels(peer=str(ordinal)).set(len(rooms))
        if rooms:
            log.warning("replicas differ (durable-chat repair copies what each lacks)", peer=ordinal,
                        rooms=len(rooms), first_rooms=rooms[:5])
        return len(rooms)
