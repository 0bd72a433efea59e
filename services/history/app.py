"""The history service's app factory; the lifespan owns the store and the broker link."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from services import __version__
from services.common.http import RequestTimer
from services.common.lifecycle import build_app
from services.common.observability import build_info
from services.history import endpoints
from services.history.service import HistoryService
from services.history.settings import HistoryConfig


def create_app(config: HistoryConfig, serve_metrics: bool | None = None) -> Starlette:
    service = HistoryService(config)
    build_info(service.metrics.registry, "history", __version__)

    def observe(status: int, seconds: float) -> None:
        service.metrics.request_seconds.labels(status=str(status)).observe(seconds)

    return build_app(
        service,
        routes=[
            Route("/rooms/{room}/messages", endpoints.list_messages),
            Route("/healthz", endpoints.healthz),
            Route("/readyz", endpoints.readyz),
            Route("/progress", endpoints.progress),
            Route("/digest", endpoints.digest),
            Route("/export", endpoints.export),
            Route("/import", endpoints.import_messages, methods=["POST"]),
        ],
        serve_metrics=config.history.metrics_port == 0 if serve_metrics is None else serve_metrics,
        middleware=[Middleware(RequestTimer, observe=observe, path_prefix="/rooms/")],
    )
