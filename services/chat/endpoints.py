"""Thin handlers of a chat replica: the WebSocket, the public history read API, health."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

import orjson
import structlog
from starlette.background import BackgroundTask
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.chat.history_client import HistoryUnavailable
from services.chat.hub import Subscriber
from services.chat.limits import TokenBucket
from services.chat.presence import Ticket
from services.chat.relay import PublishFailed
from services.chat.service import CLOSE_SERVICE_RESTART, ChatService
from services.chat.sync import Gap, error_frame
from services.chat.wire import fast_send
from services.common.auth import Unauthorized, bearer_token
from services.common.http import error_response
from services.common.schema import (
    DEFAULT_ROOM,
    Cursor,
    FrameError,
    SendRequest,
    TypingRequest,
    parse_client_frame,
    valid_room,
)

log = structlog.get_logger(__name__)
CLOSE_POLICY = 1008
CLOSE_INTERNAL_ERROR = 1011


def _service(connection: HTTPConnection) -> ChatService:
    service: ChatService = connection.app.state.service
    return service


class Refused(Exception):
    def __init__(self, code: str, detail: str, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.close_code = close_code


@dataclass(frozen=True, slots=True)
class Session:
    room: str
    author: str | None
    token: str | None
    cursor: Cursor | None
    cursor_error: FrameError | None
    coalesce: bool
    presence: bool  # `presence=0`: no presence frames, and listed as occupancy only


def _open_session(websocket: WebSocket, service: ChatService) -> Session:
    """Check room, origin, token and name; raise Refused with the contract's code."""
    params = websocket.query_params
    room = params.get("room") or DEFAULT_ROOM
    if not valid_room(room):
        raise Refused("bad_room", "room must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    origin = websocket.headers.get("origin")
    allowed = service.settings.allowed_origins
    if allowed and origin is not None and origin not in allowed:
        raise Refused("unauthorized", "origin not allowed")
    token = bearer_token(websocket.headers.get("authorization"), params.get("token"))
    if service.verifier.enabled:
        try:
            author: str | None = service.verifier.subject(token)
        except Unauthorized as exc:
            raise Refused("unauthorized", str(exc)) from None
    else:
        author = _display_name(params.get("name"))
    cursor, cursor_error = None, None
    if params.get("after"):
        try:
            cursor = Cursor.parse(params["after"])
        except FrameError as exc:
            cursor_error = exc
    return Session(
        room, author, token, cursor, cursor_error, params.get("coalesce") == "1", params.get("presence") != "0"
    )


def _display_name(raw: str | None) -> str | None:
    if raw is None:
        return None
    name = raw.strip()
    if not 1 <= len(name) <= 32 or not name.isprintable():
        raise Refused("bad_frame", "name must be 1 to 32 printable characters")
    return name


async def chat_socket(websocket: WebSocket) -> None:
    service = _service(websocket)
    address = service.client_address.resolve(
        websocket.client.host if websocket.client else None, websocket.headers.get("x-forwarded-for")
    )
    # Every log line of this connection (its own task) carries which connection and which client it was.
    structlog.contextvars.bind_contextvars(conn=secrets.token_hex(4), client=address)
    await websocket.accept()
    if not service.connections.acquire(address):
        await _refuse(websocket, service, Refused("rate_limited", "too many connections from this address"))
        return
    try:
        await _serve(websocket, service)
    finally:
        service.connections.release(address)


async def _serve(websocket: WebSocket, service: ChatService) -> None:
    try:
        session = _open_session(websocket, service)
        if not service.ready:
            raise Refused("publish_failed", "replica not connected to the broker", CLOSE_SERVICE_RESTART)
    except Refused as refused:
        await _refuse(websocket, service, refused)
        return
    settings = service.settings
    subscriber = Subscriber(
        session.room, _text_sender(websocket), websocket.close, settings.send_buffer_frames, session.coalesce,
        fast_send(websocket.scope),
    )
    service.hub.subscribe(subscriber)
    service.metrics.clients.inc()
    service.metrics.connections.inc()
    started = time.perf_counter()
    backfill: asyncio.Task[None] | None = None
    presence: Ticket | None = None
    try:
        if session.cursor_error is not None:
            _reply_error(service, subscriber, session.cursor_error)
        gap = await service.sync.deliver_backlog(subscriber, session.cursor, session.token)
        service.metrics.history_fetches.labels(result="ok" if gap is None else gap.reason).inc()
        service.metrics.sync_seconds.observe(time.perf_counter() - started)
        if gap is not None:
            if gap.reason == "unavailable":
                service.metrics.errors.labels(code="history_unavailable").inc()
            backfill = asyncio.create_task(_backfill(service, subscriber, gap, session.token), name="ws-backfill")
        if service.presence is not None:
            presence = service.presence.enter(subscriber, session.author, session.presence)
        await _receive_loop(websocket, service, session, subscriber)
    except WebSocketDisconnect:
        pass
    finally:
        if backfill is not None:
            backfill.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await backfill
        if presence is not None and service.presence is not None:
            service.presence.leave(subscriber, presence)
        service.hub.unsubscribe(subscriber)
        service.metrics.clients.dec()
        if subscriber.close_code is not None:
            service.metrics.disconnects.labels(code=str(subscriber.close_code)).inc()
        await subscriber.aclose()


async def _backfill(service: ChatService, subscriber: Subscriber, gap: Gap, token: str | None) -> None:
    """Owned by the connection: a failure here closes it (the client resumes with its cursor), never silently."""
    try:
        if await service.sync.backfill(subscriber, gap, token):
            service.metrics.history_fetches.labels(result="backfilled").inc()
    except Exception:
        log.exception("backfill failed", room=subscriber.room)
        subscriber.close_soon(CLOSE_SERVICE_RESTART, "backfill failed; reconnect with your cursor")


async def _receive_loop(websocket: WebSocket, service: ChatService, session: Session, subscriber: Subscriber) -> None:
    try:
        await _receive_frames(websocket, service, session, subscriber)
    finally:
        _log_suppressed_refusals(session.room)


# Sends of one connection published at once, their confirms awaited together (acks still go out in order).
PIPELINED_SENDS = 16


class _Replies:
    """One connection's replies (acks, errors) in the order of its frames, while its publishes are confirmed
    concurrently: a sender is not held to one message per broker round trip."""

    __slots__ = ("_subscriber", "_queue", "in_flight")

    def __init__(self, subscriber: Subscriber) -> None:
        self._subscriber = subscriber
        self._queue: deque[asyncio.Task[str] | str] | None = None  # made by the first send: idle ones need none
        self.in_flight = 0

    def reply(self, frame: str) -> None:
        if self._queue:
            self._queue.append(frame)
        else:
            self._subscriber.push(frame)

    def publish(self, task: asyncio.Task[str]) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(task)
        self.in_flight += 1
        task.add_done_callback(self._flush)

    async def wait_oldest(self) -> None:
        await asyncio.wait(self._tasks()[:1])

    async def settle(self) -> None:
        """Wait for every publish still in flight (each ends within the publish timeout): none is cancelled
        halfway, which would leave its client_id marked in flight."""
        tasks = self._tasks()
        if tasks:
            await asyncio.wait(tasks)

    def _tasks(self) -> list[asyncio.Task[str]]:
        return [item for item in self._queue or () if isinstance(item, asyncio.Task)]

    def _flush(self, _: asyncio.Task[str]) -> None:
        queue = self._queue
        while queue:
            item = queue[0]
            if isinstance(item, str):
                queue.popleft()
                self._subscriber.push(item)
                continue
            if not item.done():
                return
            queue.popleft()
            self.in_flight -= 1
            if item.cancelled():
                continue
            error = item.exception()
            if error is not None:
                log.error("send failed", room=self._subscriber.room, error=repr(error)[:200])
                self._subscriber.close_soon(CLOSE_INTERNAL_ERROR, "internal error")
                continue
            self._subscriber.push(item.result())


async def _receive_frames(websocket: WebSocket, service: ChatService, session: Session, subscriber: Subscriber) -> None:
    settings = service.settings
    bucket = TokenBucket(settings.rate_limit_per_s, settings.rate_limit_burst)
    replies = _Replies(subscriber)
    try:
        while not subscriber.closed:
            if replies.in_flight >= PIPELINED_SENDS:
                await replies.wait_oldest()
                continue
            event = await websocket.receive()
            if event["type"] == "websocket.disconnect":
                return
            text = event.get("text")
            try:
                if text is None:
                    raise FrameError("binary_unsupported", "send JSON in text frames")
                frame = parse_client_frame(text, settings.max_message_bytes)
                if isinstance(frame, TypingRequest):
                    if not bucket.take():  # typing costs a send's token: it cannot be used to flood the room
                        raise FrameError("rate_limited", f"over {settings.rate_limit_per_s:g} frames/s")
                    if service.presence is not None:
                        service.presence.typing(subscriber, session.author)
                    continue  # never stored, never acked
                request = frame
                if not bucket.take():
                    raise FrameError(
                        "rate_limited", f"over {settings.rate_limit_per_s:g} messages/s", request.client_id
                    )
            except FrameError as exc:
                replies.reply(_error_reply(service, subscriber.room, exc))
                continue
            _refusals_of_this_connection()  # the publish task shares it (a task copies its context)
            # The task's first step mints the id and enters basic_publish with no await in between, and tasks
            # start in the order they were made: this connection's messages keep their order (relay.py).
            replies.publish(asyncio.create_task(_publish(service, session, subscriber.room, request)))
    finally:
        await replies.settle()


async def _publish(service: ChatService, session: Session, room: str, request: SendRequest) -> str:
    """Publish one client message; return its reply frame (the ack, or the error)."""
    try:
        message_id = await service.accept(session.room, session.author, request)
    except PublishFailed as exc:
        detail = f"not confirmed by the broker ({exc.reason}); resend with the same client_id"
        return _error_reply(service, room, FrameError("publish_failed", detail, request.client_id))
    return orjson.dumps({"type": "ack", "client_id": request.client_id, "id": message_id}).decode()


# Refusals logged per connection; past this a flood is only counted, then summed up in one line when it closes.
REFUSAL_LOG_CAP = 10


@dataclass
class _Refusals:
    logged: int = 0
    suppressed: Counter[str] = field(default_factory=Counter)


# Per connection: the WebSocket handler runs in a task of its own, so a value set there is that connection's.
_refusals: ContextVar[_Refusals | None] = ContextVar("refusals", default=None)


def _reply_error(service: ChatService, subscriber: Subscriber, error: FrameError) -> None:
    subscriber.push(_error_reply(service, subscriber.room, error))


def _error_reply(service: ChatService, room: str, error: FrameError) -> str:
    """Count and log a refused frame; return the error frame that answers it."""
    service.metrics.errors.labels(code=error.code).inc()
    _log_refusal(room, error)
    return error_frame(error.code, error.detail, error.client_id)


def _refusals_of_this_connection() -> _Refusals:
    refusals = _refusals.get()
    if refusals is None:
        refusals = _Refusals()
        _refusals.set(refusals)
    return refusals


def _log_refusal(room: str, error: FrameError) -> None:
    refusals = _refusals_of_this_connection()
    if refusals.logged >= REFUSAL_LOG_CAP:
        refusals.suppressed[error.code] += 1
        return
    refusals.logged += 1
    capped = {"further": "counted, logged in one line at close"} if refusals.logged == REFUSAL_LOG_CAP else {}
    log.info(
        "frame refused", code=error.code, room=room, client_id=error.client_id, detail=error.detail[:200], **capped
    )


def _log_suppressed_refusals(room: str) -> None:
    refusals = _refusals.get()
    if refusals is not None and refusals.suppressed:
        counts = dict(refusals.suppressed)
        log.info("frame refusals not logged", room=room, count=sum(counts.values()), codes=counts)


async def _refuse(websocket: WebSocket, service: ChatService, refused: Refused) -> None:
    service.metrics.errors.labels(code=refused.code).inc()
    service.metrics.disconnects.labels(code=str(refused.close_code)).inc()
    log.info("connection refused", code=refused.code, detail=refused.detail)
    try:
        await websocket.send_text(error_frame(refused.code, refused.detail))
        await websocket.close(refused.close_code, refused.detail[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


RAW_SEND = "durable_chat.raw_send"


WS_PATH = "/ws"


class RawSendMiddleware:
    """Keeps the server's own ASGI ``send`` in the WebSocket scope for the fan-out hot path, and serves the chat
    WebSocket itself.

    Starlette wraps ``send`` per message (state checks, exception tracking); in fan-out those wrappers cost about
    11% of a replica's CPU (bench/README.md). Frames queued to a closed socket make the server raise, which the
    subscriber's writer treats as the peer having gone. Its exception middleware, router and WebSocket session
    wrappers would also stay on the stack of every connection for its whole life (eight coroutine frames and a
    second WebSocket object per idle connection) around a handler that handles its own errors: ``WS_PATH`` goes
    to ``chat_socket`` directly, any other path through the router as before.
    """

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND] = send
            path: str = scope["path"]
            root_path: str = scope.get("root_path") or ""
            if path.removeprefix(root_path) == WS_PATH:
                await chat_socket(WebSocket(scope, receive, send))
                return
        await self._app(scope, receive, send)


def _text_sender(websocket: WebSocket) -> Callable[[str], Awaitable[None]]:
    raw_send = websocket.scope.get(RAW_SEND)
    if raw_send is None:
        return websocket.send_text

    async def send_text(text: str) -> None:
        await raw_send({"type": "websocket.send", "text": text})

    return send_text


async def history_proxy(request: Request) -> Response:
    """The history read API for browsers and the CLI, streamed through from the history service."""
    service = _service(request)
    token = bearer_token(request.headers.get("authorization"), request.query_params.get("token"))
    if service.verifier.enabled:
        try:
            service.verifier.subject(token)
        except Unauthorized as exc:
            return error_response(401, "unauthorized", str(exc))
    room = request.path_params["room"]
    if not valid_room(room):
        return error_response(400, "bad_room", "room must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    params = [(key, value) for key, value in request.query_params.multi_items() if key != "token"]
    ndjson = "application/x-ndjson" in request.headers.get("accept", "")
    try:
        upstream = await service.history.proxy(room, params, ndjson, token)
    except HistoryUnavailable:
        return error_response(503, "history_unavailable", "the history service is unavailable")
    return StreamingResponse(
        upstream.aiter_raw(),
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type"),
        background=BackgroundTask(upstream.aclose),
    )


async def presence_api(request: Request) -> Response:
    """Who is in a room, for the whole cluster: every replica holds the same view (heartbeats and deltas)."""
    service = _service(request)
    room = request.path_params["room"]
    if service.verifier.enabled:
        try:
            token = bearer_token(request.headers.get("authorization"), request.query_params.get("token"))
            service.verifier.subject(token)
        except Unauthorized as exc:
            return _presence_refused(request, room, 401, "unauthorized", str(exc))
    if not valid_room(room):
        return _presence_refused(request, room, 400, "bad_room", "room must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
    if service.presence is None:
        return _presence_refused(
            request, room, 404, "presence_disabled", "presence is turned off (CHAT_PRESENCE_ENABLED=false)"
        )
    snapshot = service.presence.snapshot(room)
    return JSONResponse({**snapshot.body(), "total": snapshot.total})


def _presence_refused(request: Request, room: str, status: int, code: str, detail: str) -> Response:
    client = request.client.host if request.client else None
    log.info("presence request refused", code=code, room=room[:100], client=client, detail=detail[:200])
    return error_response(status, code, detail)


async def healthz(_: Request) -> Response:
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    service = _service(request)
    if service.ready:
        return JSONResponse({"ready": True, "origin": service.origin})
    return JSONResponse({"ready": False, "problems": ["broker channel or consumer down"]}, status_code=503)
