"""Thin HTTP handlers of the history service: streamed pages, replica digests, export and import, health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TypeVar

import orjson
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from services.common.auth import Unauthorized, bearer_token
from services.common.http import error_response
from services.common.schema import ChatMessage, InvalidMessage, json_object
from services.history.query import (
    QueryError,
    parse_digest_query,
    parse_export_query,
    parse_ids,
    parse_page_query,
    single_values,
)
from services.history.service import HistoryService
from services.history.store import ExportPosition, PageQuery

log = structlog.get_logger(__name__)
NDJSON = "application/x-ndjson"
_CHUNK = 500
_EXPORT_CHUNK = 2000
_IMPORT_BATCH = 1000
MAX_IMPORT_LINE_BYTES = 1 << 20
Query = TypeVar("Query")  # what a streamed endpoint's query parses to: a room (digest), a position (export)


def _service(request: Request) -> HistoryService:
    service: HistoryService = request.state.service
    return service


def _unauthorized(request: Request, service: HistoryService) -> Response | None:
    if service.verifier.enabled:
        try:
            token = bearer_token(request.headers.get("authorization"), request.query_params.get("token"))
            service.verifier.subject(token)
        except Unauthorized as exc:
            return _refused(request, 401, "unauthorized", str(exc))
    return None


async def list_messages(request: Request) -> Response:
    service = _service(request)
    if (refusal := _unauthorized(request, service)) is not None:
        return refusal
    if not service.copier.status.serving:
        # Not everything older than our queue is here yet: a chat replica asks another history replica.
        return _refused(request, 503, "not_ready", "this history replica is copying from a peer")
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


async def _ndjson_stream(
    request: Request,
    parse: Callable[[Mapping[str, str]], Query],
    lines: Callable[[HistoryService, Query], AsyncIterator[bytes]],
) -> Response:
    """An authorized NDJSON stream of ``lines`` for the parsed query (whatever the readiness); a bad query: 400."""
    service = _service(request)
    if (refusal := _unauthorized(request, service)) is not None:
        return refusal
    try:
        query = parse(single_values(request.query_params.multi_items()))
    except QueryError as exc:
        return _refused(request, 400, exc.code, exc.detail)
    return StreamingResponse(lines(service, query), media_type=NDJSON)


async def digest(request: Request) -> Response:
    """NDJSON, one line per room in room order: count, first and last id, hash (whatever the readiness)."""
    return await _ndjson_stream(request, parse_digest_query, _digest_lines)


async def _digest_lines(service: HistoryService, room: str | None) -> AsyncIterator[bytes]:
    after: str | None = None
    while True:
        page = await service.store.digests(room=room, after_room=after, limit=_EXPORT_CHUNK)
        if page:
            yield b"".join(orjson.dumps(d.as_json()) + b"\n" for d in page)
        if room is not None or len(page) < _EXPORT_CHUNK:
            return
        after = page[-1].room


async def export(request: Request) -> Response:
    """NDJSON of the stored bodies in (room, id) order, strictly after (from_room, after); ``room``: one room."""
    return await _ndjson_stream(request, parse_export_query, _export_lines)


async def _export_lines(service: HistoryService, position: ExportPosition) -> AsyncIterator[bytes]:
    # Test fault `history.export.delay_s`: a slow peer, so that a test can cut a copy short.
    delay_s = service.faults.delay_s("history.export")
    while True:
        chunk = await service.store.export(position, _EXPORT_CHUNK)
        if not chunk:
            return
        yield b"\n".join(body for _, _, body in chunk) + b"\n"
        if delay_s:
            await asyncio.sleep(delay_s)
        if len(chunk) < _EXPORT_CHUNK:
            return
        room, last_id, _ = chunk[-1]
        position = ExportPosition(from_room=room, after=last_id, room=position.room)


async def import_messages(request: Request) -> Response:
    """NDJSON of message bodies, written idempotently in batches as they arrive (what ``/export`` gives).

    A bad line stops the import with 400 naming its line; the batches before it stay written (importing the
    same body again is harmless).
    """
    service = _service(request)
    if (refusal := _unauthorized(request, service)) is not None:
        return refusal
    batch: list[tuple[ChatMessage, bytes]] = []
    received = stored = 0
    try:
        async for line_number, line in _numbered_lines(request.stream()):
            try:
                batch.append(_stored_form(line))
            except InvalidMessage as exc:
                raise QueryError("bad_message", f"line {line_number}: {exc}"[:300]) from None
            received += 1
            if len(batch) >= _IMPORT_BATCH:
                stored += len((await service.store.write(batch)).stored)
                batch = []
    except QueryError as exc:
        if batch:
            stored += len((await service.store.write(batch)).stored)
        log.info("import stopped at a bad line", received=received, stored=stored)
        return _refused(request, 400, exc.code, exc.detail)
    if batch:
        stored += len((await service.store.write(batch)).stored)
    log.info("messages imported", received=received, stored=stored)
    return JSONResponse({"received": received, "stored": stored})


def _stored_form(line: bytes) -> tuple[ChatMessage, bytes]:
    """The message and its body as stored: compact JSON, every field kept (page reads find `"id":"` in it)."""
    data = json_object(line)
    return ChatMessage.from_dict(data), orjson.dumps(data)


async def _numbered_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """The non-blank lines of a streamed body with their numbers; a line longer than the bound is refused."""
    rest, number = b"", 0
    async for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_IMPORT_LINE_BYTES:
            raise QueryError("too_large", f"line {number + len(lines) + 1} exceeds {MAX_IMPORT_LINE_BYTES} bytes")
        for line in lines:
            number += 1
            if line.strip():
                yield number, line.strip()
    if rest.strip():
        yield number + 1, rest.strip()


async def healthz(_: Request) -> Response:
    return PlainTextResponse("ok")


async def progress(request: Request) -> Response:
    """Delivery counters, for chat replicas to tell when history has stored what was queued before a moment;
    ``queue`` names the queue they count (this replica's own)."""
    service = _service(request)
    consumer = service.consumer
    return JSONResponse({"boot": service.boot, "received": consumer.received, "settled": consumer.settled,
                         "queue": consumer.history_queue.name})


async def readyz(request: Request) -> Response:
    service = _service(request)
    problems = service.readiness_problems()
    copy = {"ordinal": service.ordinal, "copy": service.copier.status.as_json()}
    if problems:
        return JSONResponse({"ready": False, "problems": problems, **copy}, status_code=503)
    return JSONResponse({"ready": True, **copy})
