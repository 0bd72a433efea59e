"""Process entry point shared by both services: settings, logging, uvicorn, optional metrics port."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import structlog
import uvicorn
from prometheus_client import start_http_server
from starlette.applications import Starlette

from services.common.observability import configure_logging
from services.common.settings import ConfigError, LogSettings

log = structlog.get_logger(__name__)


def serve(
    service: str,
    build: Callable[[], tuple[Starlette, LogSettings, str, int, int, float]],
) -> None:
    """Build the app from validated settings, then serve it until SIGTERM/SIGINT."""
    try:
        app, log_settings, host, port, metrics_port, grace_s = build()
    except ConfigError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(log_settings, service)
    if metrics_port:
        start_http_server(metrics_port, addr=host, registry=app.state.service.metrics.registry)
    log.info("starting", host=host, port=port, metrics_port=metrics_port or port)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",  # explicit: the benchmarks assume it, and an extras change must not drop it silently
        ws="websockets-sansio",
        ws_max_size=65536,
        ws_per_message_deflate=False,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(grace_s),
        proxy_headers=False,
        server_header=False,
    )
