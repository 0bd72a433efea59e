"""A chat replica's app factory; the lifespan owns the broker link and the history client."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from services import __version__
from services.chat import endpoints
from services.chat.service import ChatService
from services.chat.settings import ChatConfig
from services.common.lifecycle import build_app
from services.common.observability import build_info

PACKAGED_STATIC = Path(__file__).parent / "static"


def create_app(config: ChatConfig, serve_metrics: bool | None = None) -> Starlette:
    service = ChatService(config)
    build_info(service.metrics.registry, "chat", __version__)
    static_dir = Path(config.chat.static_dir) if config.chat.static_dir else PACKAGED_STATIC
    return build_app(
        service,
        routes=[
            WebSocketRoute(endpoints.WS_PATH, endpoints.chat_socket),  # served by RawSendMiddleware first
            Route("/api/rooms/{room}/messages", endpoints.history_proxy),
            Route("/api/rooms/{room}/presence", endpoints.presence_api),
            Route("/healthz", endpoints.healthz),
            Route("/readyz", endpoints.readyz),
        ],
        serve_metrics=config.chat.metrics_port == 0 if serve_metrics is None else serve_metrics,
        last_routes=[Mount("/", app=StaticFiles(directory=static_dir, html=True), name="page")],
        middleware=[Middleware(endpoints.RawSendMiddleware)],
    )
