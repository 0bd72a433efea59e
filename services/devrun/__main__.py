"""`make run`: the history service and two chat replicas on this machine, supervised, until Ctrl-C.

Environment (all optional): AMQP_URL, HISTORY_DATA_DIR, HISTORY_PORT (8001), CHAT_PORT (first replica, 8000),
CHAT_PORT_2 (second replica, 8010), CHAT_HISTORY_URL (defaults to the local history service).
Exit status: 0 after Ctrl-C/SIGTERM, 2 when a port is taken, 1 when RabbitMQ does not answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping

import aiormq
from yarl import URL

from services.devrun.supervisor import PortClaim, Program, Supervisor, busy_ports, install_stop_signals

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
RABBIT_TIMEOUT_S = 5.0


def ports(env: Mapping[str, str]) -> dict[str, int]:
    return {
        "HISTORY_PORT": int(env.get("HISTORY_PORT", "8001")),
        "CHAT_PORT": int(env.get("CHAT_PORT", "8000")),
        "CHAT_PORT_2": int(env.get("CHAT_PORT_2", "8010")),
    }


def programs(env: Mapping[str, str]) -> list[Program]:
    port = ports(env)
    common = {
        "AMQP_URL": env.get("AMQP_URL", DEFAULT_AMQP_URL),
        "HISTORY_DATA_DIR": env.get("HISTORY_DATA_DIR", "./data/history"),
        "CHAT_HISTORY_URL": env.get("CHAT_HISTORY_URL", f"http://127.0.0.1:{port['HISTORY_PORT']}"),
    }

    def service(name: str, module: str, variable: str, env_port: str) -> Program:
        return Program(
            name=name,
            argv=[sys.executable, "-m", module],
            env={**common, env_port: str(port[variable])},
            ready_url=f"http://127.0.0.1:{port[variable]}/readyz",
            ports=(PortClaim(port[variable], variable),),
        )

    return [
        service("history", "services.history", "HISTORY_PORT", "HISTORY_PORT"),
        service("chat-1", "services.chat", "CHAT_PORT", "CHAT_PORT"),
        service("chat-2", "services.chat", "CHAT_PORT_2", "CHAT_PORT"),
    ]


async def rabbitmq_version(amqp_url: str) -> tuple[str, str]:
    """(address, "RabbitMQ 3.10.8") of the first of AMQP_URL's comma-separated addresses that answers."""
    errors = []
    for url in (u.strip() for u in amqp_url.split(",") if u.strip()):
        address = URL(url).with_user(None).with_password(None)
        try:
            connection = await asyncio.wait_for(aiormq.connect(url), RABBIT_TIMEOUT_S)
        except Exception as exc:  # any failure to connect is reported the same way, with its text
            errors.append(f"{address}: {exc!r}"[:300])
            continue
        properties = connection.server_properties
        await connection.close()
        return str(address), f"{text(properties.get('product', 'AMQP broker'))} {text(properties.get('version', '?'))}"
    raise ConnectionError("; ".join(errors))


def text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def banner(env: Mapping[str, str]) -> str:
    port = ports(env)
    chat, chat2, history = port["CHAT_PORT"], port["CHAT_PORT_2"], port["HISTORY_PORT"]
    return f"""
  durable-chat is running.
    chat page      http://127.0.0.1:{chat}/   (second replica: http://127.0.0.1:{chat2}/)
    WebSocket      ws://127.0.0.1:{chat}/ws?room=general&name=you
    history API    http://127.0.0.1:{history}/rooms/general/messages
    metrics        http://127.0.0.1:{chat}/metrics  http://127.0.0.1:{history}/metrics
  A process that exits is reported and restarted; Ctrl-C stops all three.
"""


async def run(env: Mapping[str, str]) -> int:
    programs_ = programs(env)
    problems = busy_ports(programs_)
    for problem in problems:
        print(f"devrun: {problem}", file=sys.stderr)
    if problems:
        return 2
    amqp_url = env.get("AMQP_URL", DEFAULT_AMQP_URL)
    try:
        address, version = await rabbitmq_version(amqp_url)
    except ConnectionError as exc:
        print(f"devrun: RabbitMQ does not answer ({exc}); `make deps` starts the machine's node", file=sys.stderr)
        return 1
    print(f"devrun: {version} answers at {address}", flush=True)
    supervisor = Supervisor(programs_)
    install_stop_signals(supervisor)
    return await supervisor.run(on_ready=lambda: print(banner(env), flush=True))


def main() -> None:
    # aiormq logs a failed connect itself; the one line run() prints says it better.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    raise SystemExit(asyncio.run(run(os.environ)))


if __name__ == "__main__":
    main()
