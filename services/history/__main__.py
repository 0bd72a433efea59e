"""`history-service`: the durable subscriber and the history API."""

from __future__ import annotations

from starlette.applications import Starlette

from services.common.runner import serve
from services.common.settings import LogSettings
from services.history.app import create_app
from services.history.settings import load_config


def _build() -> tuple[Starlette, LogSettings, str, int, int, float]:
    config = load_config()
    settings = config.history
    return create_app(config), config.log, settings.host, settings.port, settings.metrics_port, 10.0


def main() -> None:
    serve("history-service", _build)


if __name__ == "__main__":
    main()
