"""Process entry point shared by both services: settings, logging, uvicorn, optional metrics port."""

from __future__ import annotations

import asyncio
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
    ws_protocol: type[asyncio.Protocol] | str = "websockets-sansio",
) -> None:
    """Build the app from validated settings, then serve it until SIGTERM/SIGINT.

    ``ws_protocol`` is uvicorn's WebSocket protocol: its websockets-sansio one, or a subclass of it.
    """
    try:
        app, log_settings, host, port, metrics_port, grace_s = build()
    except ConfigError as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(log_settings, service)
    if metrics_port:
        start_http_server(metrics_port, addr=host, registry=app.state.service.metrics.registry)
    log.info("starting", host=host, port=port, metrics_port=metrics_port or port)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            loop="uvloop",  # explicit: the benchmarks assume it, and an extras change must not drop it silently
            ws=ws_protocol,
            ws_max_size=65536,
            ws_per_message_deflate=False,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=math.ceil(grace_s),
            proxy_headers=False,
            server_header=False,
        )
    )
    fatal: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        # A part gave up: stop like on SIGTERM (drain, close), then exit non-zero so that the pod restarts.
        fatal.append(exc)
        server.should_exit = True

    app.state.on_fatal = on_fatal
    server.run()
    raise SystemExit(_exit_code(server, fatal))


def _exit_code(server: uvicorn.Server, fatal: list[BaseException]) -> int:
    if not server.started:
        return 3  # uvicorn's own code for a failed startup
    lifespan = server.lifespan
    if fatal or getattr(lifespan, "shutdown_failed", False) or getattr(lifespan, "error_occurred", False):
        log.error("exiting non-zero", fatal=[repr(exc)[:200] for exc in fatal])
        return 1
    return 0
