"""Thin HTTP handlers of the history service: streamed pages, health."""

from __future__ import annotations

from collections.abc import AsyncIterator

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from services.common.auth import Unauthorized, bearer_token
from services.common.http import error_response
from services.history.query import QueryError, parse_ids, parse_page_query, single_values
from services.history.service import HistoryService
from services.history.store import PageQuery

log = structlog.get_logger(__name__)
NDJSON = "application/x-ndjson"
_CHUNK = 500


def _service(request: Request) -> HistoryService:
    service: HistoryService = request.state.service
    return service


async def list_messages(request: Request) -> Response:
    service = _service(request)
    if service.verifier.enabled:
        try:
            token = bearer_token(request.headers.get("authorization"), request.query_params.get("token"))
            service.verifier.subject(token)
        except Unauthorized as exc:
            return _refused(request, 401, "unauthorized", str(exc))
    room = request.path_params["room"]
    try:
        params = single_values(request.query_params.multi_items())
        query = parse_page_query(room, params, service.settings.max_page)
        ids = parse_ids(params["ids"]) if "ids" in params else None
    except QueryError as exc:
        return _refused(request, 400, exc.code, exc.detail)
    ndjson = NDJSON in request.headers.get("accept", "")
    if ids is not None:
        bodies = stream_ids(service, room, ids)
    else:
        bodies = stream_page(service, query)
    return StreamingResponse(
        _as_ndjson(bodies) if ndjson else _as_json_array(bodies),
        media_type=NDJSON if ndjson else "application/json",
    )


def _refused(request: Request, status: int, code: str, detail: str) -> Response:
    """Every refused read is one log line, with what a person needs to find the caller."""
    log.info(
        "history request refused",
        status=status,
        code=code,
        room=request.path_params.get("room"),
        query=request.url.query[:200],
        client=request.client.host if request.client else None,
        detail=detail[:200],
    )
    return error_response(status, code, detail)


async def stream_ids(service: HistoryService, room: str, ids: list[str]) -> AsyncIterator[list[bytes]]:
    yield await service.store.get_many(room, ids)


async def stream_page(service: HistoryService, query: PageQuery) -> AsyncIterator[list[bytes]]:
    """Read the answer in chunks on the store's thread, so memory stays flat however large the page."""
    if query.latest or (query.before and not query.after):
        newest = await service.store.page(query)
        service.metrics.served.inc(len(newest))
        yield newest
        return
    remaining, after = query.limit, query.after
    while remaining > 0:
        chunk_query = PageQuery(room=query.room, limit=min(_CHUNK, remaining), after=after, before=query.before)
        chunk = await service.store.page(chunk_query)
        if not chunk:
            return
        service.metrics.served.inc(len(chunk))
        yield chunk
        if len(chunk) < chunk_query.limit:
            return
        remaining -= len(chunk)
        after = _id_of(chunk[-1])


def _id_of(body: bytes) -> str:
    # Stored bodies are written by ChatMessage.to_wire: `{"v":1,"id":"<26 chars>",...`.
    start = body.index(b'"id":"') + 6
    return body[start : start + 26].decode()


async def _as_json_array(chunks: AsyncIterator[list[bytes]]) -> AsyncIterator[bytes]:
    first = True
    yield b"["
    async for chunk in chunks:
        if chunk:
            yield (b"" if first else b",") + b",".join(chunk)
            first = False
    yield b"]"


async def _as_ndjson(chunks: AsyncIterator[list[bytes]]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if chunk:
            yield b"\n".join(chunk) + b"\n"


async def healthz(_: Request) -> Response:
    return PlainTextResponse("ok")


async def progress(request: Request) -> Response:
    """Delivery counters, for chat replicas to tell when history has stored what was queued before a moment."""
    service = _service(request)
    consumer = service.consumer
    return JSONResponse({"boot": service.boot, "received": consumer.received, "settled": consumer.settled})


async def readyz(request: Request) -> Response:
    problems = _service(request).readiness_problems()
    if problems:
        return JSONResponse({"ready": False, "problems": problems}, status_code=503)
    return JSONResponse({"ready": True})
