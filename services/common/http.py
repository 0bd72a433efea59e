"""Small HTTP helpers both services use: JSON errors and request timing."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def error_response(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "detail": detail}}, status_code=status)


class RequestTimer:
    """Pure ASGI middleware: calls ``observe(status, seconds)`` when an HTTP response has been fully sent."""

    def __init__(self, app: ASGIApp, observe: Callable[[int, float], None], path_prefix: str) -> None:
        self._app = app
        self._observe = observe
        self._prefix = path_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self._prefix):
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, timed_send)
        finally:
            self._observe(status, time.perf_counter() - started)
