"""`chat-service`: one stateless chat replica."""

from __future__ import annotations

from starlette.applications import Starlette

from services.chat.app import create_app
from services.chat.settings import load_config
from services.chat.wire import FastSendProtocol
from services.common.runner import serve
from services.common.settings import LogSettings


def _build() -> tuple[Starlette, LogSettings, str, int, int, float]:
    config = load_config()
    settings = config.chat
    app = create_app(config)
    return app, config.log, settings.host, settings.port, settings.metrics_port, settings.shutdown_grace_s


def main() -> None:
    # The fan-out writes pre-encoded frames straight to the transport of this protocol's connections.
    serve("chat-service", _build, ws_protocol=FastSendProtocol)


if __name__ == "__main__":
    main()
