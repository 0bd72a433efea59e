"""The app shape both services share: a lifespan that owns the service object, health and metrics routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from services.common.observability import metrics_endpoint


class _Metrics(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


class ServiceLike(Protocol):
    @property
    def metrics(self) -> _Metrics: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_app(
    service: ServiceLike,
    routes: Sequence[BaseRoute],
    serve_metrics: bool,
    last_routes: Sequence[BaseRoute] = (),
    middleware: Sequence[Middleware] = (),
) -> Starlette:
    """An app whose lifespan starts and stops ``service``; ``/metrics`` here unless it has its own port."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[dict[str, Any]]:
        await service.start()
        try:
            yield {"service": service}
        finally:
            await service.stop()

    all_routes = list(routes)
    if serve_metrics:
        all_routes.append(Route("/metrics", metrics_endpoint(service.metrics.registry)))
    app = Starlette(routes=[*all_routes, *last_routes], lifespan=lifespan, middleware=list(middleware))
    app.state.service = service
    return app
