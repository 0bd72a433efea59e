"""Reads the history service over HTTP, streamed page by page (NDJSON), never as one big buffer.

Several history replicas (issue 13): ``CHAT_HISTORY_URL`` lists them; a read goes to one and moves to the next on a
connect error, a timeout or a 5xx (a replica still copying from a peer answers 503 ``not_ready``). The last replica
that answered is tried first next time. A 4xx is the request's fault: every replica would say the same.

A backlog read (``HistoryRead``) also records which replicas answered it and whether each had caught up with its
own queue when the read began (services/chat/catchup.py): a read answered by one that had not may lack messages
published before this chat replica's queue was bound, so the sync must not call it complete. Replicas caught up
are tried first, so a lagging one answers only when no caught-up one does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import httpx
import orjson
import structlog

from services.chat.catchup import HistoryCatchUp, HistoryProgress, HistoryStanding
from services.chat.hub import Entry
from services.common.schema import ChatMessage, InvalidMessage, message_frame_from_wire

log = structlog.get_logger(__name__)
NDJSON = "application/x-ndjson"
# Short: the poll waits for every replica, and a stale answer counts as not caught up (catchup.STALE_AFTER_S).
PROGRESS_TIMEOUT_S = 1.0


class HistoryUnavailable(Exception):
    pass


class _TryNext(Exception):
    """This replica did not answer usefully; another one may."""


class _Replica:
    def __init__(self, index: int, base_url: str, timeout_s: float, queue: str) -> None:
        self.index = index
        self.url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            base_url=self.url,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        self.catch_up = HistoryCatchUp(self.progress, queue)

    async def progress(self) -> HistoryProgress | None:
        """The replica's delivery counters, or None when it does not answer (see services/chat/catchup.py)."""
        try:
            response = await self.http.get("/progress", timeout=PROGRESS_TIMEOUT_S)
            body = response.json() if response.status_code == 200 else None
            if not body:
                return None
            queue = body.get("queue")
            return HistoryProgress(
                str(body["boot"]), int(body["received"]), int(body["settled"]),
                str(queue) if queue is not None else None,
            )
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
            return None


class HistoryClient:
    def __init__(
        self, base_urls: Sequence[str], timeout_s: float, queues: Sequence[str], page_size: int = 1000
    ) -> None:
        if not base_urls:
            raise ValueError("at least one history URL")
        # Until a replica's /progress names its queue, the one of its place in the list (ordinal order) is assumed.
        self._replicas = [
            _Replica(index, url, timeout_s, queues[index] if index < len(queues) else queues[-1])
            for index, url in enumerate(base_urls)
        ]
        self.standing = HistoryStanding([replica.catch_up for replica in self._replicas])
        self.page_size = page_size
        self._last_good = 0

    async def aclose(self) -> None:
        for replica in self._replicas:
            await replica.http.aclose()

    def read(self) -> HistoryRead:
        """Start one backlog read: which replicas have caught up is taken now, before anything is read."""
        return HistoryRead(self, self.standing.caught_up())

    async def proxy(self, room: str, params: list[tuple[str, str]], ndjson: bool, token: str | None) -> httpx.Response:
        """Open a streamed request for the public read API on the first replica that answers; the caller closes it."""
        headers = _headers(NDJSON if ndjson else "application/json", token)
        failures: list[str] = []
        for replica in self._order(frozenset()):
            request = replica.http.build_request(
                "GET", f"/rooms/{room}/messages", params=tuple(params), headers=headers
            )
            try:
                response = await replica.http.send(request, stream=True)
            except httpx.HTTPError as exc:
                failures.append(self._failed(replica, repr(exc)))
                continue
            if response.status_code >= 500:
                await response.aclose()
                failures.append(self._failed(replica, f"answered {response.status_code}"))
                continue
            self._last_good = replica.index
            return response
        raise HistoryUnavailable("; ".join(failures))

    def _order(self, caught_up: frozenset[int]) -> list[_Replica]:
        """Caught-up replicas first, each group starting from the last one that answered."""
        count = len(self._replicas)
        ring = [self._replicas[(self._last_good + step) % count] for step in range(count)]
        return [r for r in ring if r.index in caught_up] + [r for r in ring if r.index not in caught_up]

    def _failed(self, replica: _Replica, reason: str) -> str:
        if replica.index == self._last_good and len(self._replicas) > 1:
            self._last_good = (replica.index + 1) % len(self._replicas)
        log.info("history replica did not answer; trying the next", replica=replica.url, error=reason[:200])
        return f"{replica.url}: {reason[:200]}"

    async def page(
        self, read: HistoryRead, room: str, params: dict[str, str], token: str | None
    ) -> AsyncIterator[Entry]:
        """One page from the first replica that answers. A replica that breaks off midway raises HistoryUnavailable
        (what it sent is out already; the caller decides whether to resume elsewhere)."""
        headers = _headers(NDJSON, token)
        failures: list[str] = []
        for replica in self._order(read.caught_up_at_start):
            started = False
            try:
                async with replica.http.stream(
                    "GET", f"/rooms/{room}/messages", params=params, headers=headers
                ) as response:
                    if response.status_code >= 500:
                        raise _TryNext(f"answered {response.status_code}")
                    if response.status_code != 200:
                        raise HistoryUnavailable(f"history answered {response.status_code}")
                    read.answered.add(replica.index)
                    self._last_good = replica.index
                    async for line in response.aiter_lines():
                        if line:
                            wire = line.encode()
                            entry = ChatMessage.from_wire(wire), message_frame_from_wire(wire)
                            started = True
                            yield entry
                return
            except (httpx.HTTPError, _TryNext) as exc:
                reason = self._failed(replica, repr(exc) if isinstance(exc, httpx.HTTPError) else str(exc))
                if started:
                    raise HistoryUnavailable(f"broke off midway: {reason}") from None
                failures.append(reason)
            except (InvalidMessage, orjson.JSONDecodeError) as exc:
                raise HistoryUnavailable(f"{replica.url}: {repr(exc)[:300]}") from None
        raise HistoryUnavailable("no history replica answered: " + "; ".join(failures))

    @property
    def replicas(self) -> int:
        return len(self._replicas)


class HistoryRead:
    """One backlog read (a sync, or one backfill attempt), possibly answered by several replicas in turn."""

    def __init__(self, client: HistoryClient, caught_up: frozenset[int]) -> None:
        self._client = client
        self.caught_up_at_start = caught_up
        self.answered: set[int] = set()

    @property
    def all_caught_up(self) -> bool:
        """Every replica had caught up: whichever answers, the read is complete (nothing more to track)."""
        return len(self.caught_up_at_start) == self._client.replicas

    @property
    def any_caught_up(self) -> bool:
        return bool(self.caught_up_at_start)

    @property
    def lagging(self) -> bool:
        """A replica that answered had not caught up with its queue when the read began."""
        return not self.answered <= self.caught_up_at_start

    async def latest(self, room: str, limit: int, token: str | None, before: str | None = None) -> list[Entry]:
        """The room's newest ``limit`` messages (before ``before`` if given), in id order."""
        if limit == 0:
            return []
        params = {"latest": "1", "limit": str(limit)}
        if before is not None:
            params["before"] = before
        return [entry async for entry in self._client.page(self, room, params, token)]

    async def lookup(self, room: str, ids: list[str], token: str | None) -> list[ChatMessage]:
        return [message async for message, _ in self._client.page(self, room, {"ids": ",".join(ids)}, token)]

    async def stream_after(self, room: str, after: str, token: str | None) -> AsyncIterator[Entry]:
        """Every stored message of the room after ``after``, in id order, one page in flight at a time.

        A page cut off midway is resumed after its last entry on the next replica (each at most once)."""
        page_size = self._client.page_size
        resumed = 0
        while True:
            count = 0
            try:
                async for entry in self._client.page(self, room, {"after": after, "limit": str(page_size)}, token):
                    count += 1
                    after = entry[0].id
                    yield entry
            except HistoryUnavailable:
                if count == 0 or resumed >= self._client.replicas - 1:
                    raise
                resumed += 1
                continue
            if count < page_size:
                return


def _headers(accept: str, token: str | None) -> dict[str, str]:
    # `token` comes from bearer_token(), which only returns strings that can be bearer tokens.
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers
