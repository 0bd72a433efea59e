"""The history service's app factory; the lifespan owns the store and the broker link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypedDict

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from services import __version__
from services.common.http import RequestTimer
from services.common.observability import build_info, metrics_endpoint
from services.history import endpoints
from services.history.service import HistoryService
from services.history.settings import HistoryConfig


class State(TypedDict):
    service: HistoryService


def create_app(config: HistoryConfig, serve_metrics: bool | None = None) -> Starlette:
    service = HistoryService(config)
    build_info(service.metrics.registry, "history", __version__)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[State]:
        await service.start()
        try:
            yield {"service": service}
        finally:
            await service.stop()

    routes = [
        Route("/rooms/{room}/messages", endpoints.list_messages),
        Route("/healthz", endpoints.healthz),
        Route("/readyz", endpoints.readyz),
    ]
    if serve_metrics if serve_metrics is not None else config.history.metrics_port == 0:
        routes.append(Route("/metrics", metrics_endpoint(service.metrics.registry)))

    def observe(status: int, seconds: float) -> None:
        service.metrics.request_seconds.labels(status=str(status)).observe(seconds)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(RequestTimer, observe=observe, path_prefix="/rooms/")],
    )
    app.state.service = service
    return app
