"""Reads the history service over HTTP, streamed page by page (NDJSON), never as one big buffer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson

from services.chat.catchup import HistoryProgress
from services.chat.hub import Entry
from services.common.schema import ChatMessage, InvalidMessage, message_frame_from_wire

NDJSON = "application/x-ndjson"
PROGRESS_TIMEOUT_S = 2.0


class HistoryUnavailable(Exception):
    pass


class HistoryClient:
    def __init__(self, base_url: str, timeout_s: float, page_size: int = 1000) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        self._page_size = page_size

    async def aclose(self) -> None:
        await self._http.aclose()

    async def latest(self, room: str, limit: int, token: str | None, before: str | None = None) -> list[Entry]:
        """The room's newest ``limit`` messages (before ``before`` if given), in id order."""
        if limit == 0:
            return []
        params = {"latest": "1", "limit": str(limit)}
        if before is not None:
            params["before"] = before
        return [entry async for entry in self._page(room, params, token)]

    async def progress(self) -> HistoryProgress | None:
        """History's delivery counters, or None when it does not answer (see services/chat/catchup.py)."""
        try:
            response = await self._http.get("/progress", timeout=PROGRESS_TIMEOUT_S)
            body = response.json() if response.status_code == 200 else None
            return HistoryProgress(str(body["boot"]), int(body["received"]), int(body["settled"])) if body else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def lookup(self, room: str, ids: list[str], token: str | None) -> list[ChatMessage]:
        return [message async for message, _ in self._page(room, {"ids": ",".join(ids)}, token)]

    async def stream_after(self, room: str, after: str, token: str | None) -> AsyncIterator[Entry]:
        """Every stored message of the room after ``after``, in id order, one page in flight at a time."""
        while True:
            count = 0
            async for entry in self._page(room, {"after": after, "limit": str(self._page_size)}, token):
                count += 1
                after = entry[0].id
                yield entry
            if count < self._page_size:
                return

    async def proxy(self, room: str, params: list[tuple[str, str]], ndjson: bool, token: str | None) -> httpx.Response:
        """Open a streamed request for the public read API; the caller closes the response."""
        headers = _headers(NDJSON if ndjson else "application/json", token)
        request = self._http.build_request("GET", f"/rooms/{room}/messages", params=tuple(params), headers=headers)
        try:
            return await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise HistoryUnavailable(repr(exc)) from None

    async def _page(self, room: str, params: dict[str, str], token: str | None) -> AsyncIterator[Entry]:
        headers = _headers(NDJSON, token)
        try:
            async with self._http.stream("GET", f"/rooms/{room}/messages", params=params, headers=headers) as resp:
                if resp.status_code != 200:
                    raise HistoryUnavailable(f"history answered {resp.status_code}")
                async for line in resp.aiter_lines():
                    if line:
                        wire = line.encode()
                        yield ChatMessage.from_wire(wire), message_frame_from_wire(wire)
        except (httpx.HTTPError, InvalidMessage, orjson.JSONDecodeError) as exc:
            raise HistoryUnavailable(repr(exc)[:300]) from None


def _headers(accept: str, token: str | None) -> dict[str, str]:
    # `token` comes from bearer_token(), which only returns strings that can be bearer tokens.
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers
