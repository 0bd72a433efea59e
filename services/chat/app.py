"""A chat replica's app factory; the lifespan owns the broker link and the history client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypedDict

from starlette.applications import Starlette
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from services import __version__
from services.chat import endpoints
from services.chat.service import ChatService
from services.chat.settings import ChatConfig
from services.common.observability import build_info, metrics_endpoint

PACKAGED_STATIC = Path(__file__).parent / "static"


class State(TypedDict):
    service: ChatService


def create_app(config: ChatConfig, serve_metrics: bool | None = None) -> Starlette:
    service = ChatService(config)
    build_info(service.metrics.registry, "chat", __version__)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        await service.start()
        try:
            yield {"service": service}
        finally:
            await service.stop()

    routes: list[Route | WebSocketRoute | Mount] = [
        WebSocketRoute("/ws", endpoints.chat_socket),
        Route("/api/rooms/{room}/messages", endpoints.history_proxy),
        Route("/healthz", endpoints.healthz),
        Route("/readyz", endpoints.readyz),
    ]
    if serve_metrics if serve_metrics is not None else config.chat.metrics_port == 0:
        routes.append(Route("/metrics", metrics_endpoint(service.metrics.registry)))
    static_dir = Path(config.chat.static_dir) if config.chat.static_dir else PACKAGED_STATIC
    routes.append(Mount("/", app=StaticFiles(directory=static_dir, html=True), name="page"))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.service = service
    return app
