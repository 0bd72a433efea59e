"""The services as real processes: started in their own process group, killed with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support.ports import free_port


class ServiceProcess:
    """One `chat-service` or `history-service` process, restartable on the same port and data."""

    def __init__(self, kind: str, env: dict[str, str], port: int, log_path: Path) -> None:
        self.kind = kind
        self.env = env
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self, wait_ready: bool = True, timeout: float = 30) -> None:
        env = {**os.environ, **self.env}
        log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.kind}"], env=env, process_group=0,
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self._process.returncode}: {self.tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} not ready in {timeout} s: {self.tail()}")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.signal(signal.SIGKILL)
        if self._process is not None:
            self._process.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        assert self._process is not None
        try:
            return self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def wait_exit(self, timeout: float = 30) -> int:
        """Wait for the process to end by itself; its exit code (negative: the signal that ended it)."""
        assert self._process is not None
        return self._process.wait(timeout=timeout)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def common_env(amqp_url: str) -> dict[str, str]:
    """What every service process of a test gets: the broker, fast heartbeats and reconnects, JSON logs."""
    return {
        "AMQP_URL": amqp_url,
        "AMQP_HEARTBEAT_S": "2",
        "AMQP_RECONNECT_MAX_S": "1",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }


def history_replicas(
    amqp_url: str, workdir: Path, count: int, extra_env: dict[str, str] | None = None
) -> list[ServiceProcess]:
    """``count`` history replicas (not started): replica n on a free port with ``history-db-<n>`` and
    ``history-<n>.log`` under ``workdir``, ``HISTORY_REPLICA=n``, and every replica's URL in ``HISTORY_PEERS``.
    ``extra_env`` (``HISTORY_*``/``AMQP_*``...) goes to all of them; set ``replicas[n].env`` for one alone."""
    ports = [free_port() for _ in range(count)]
    peers = ",".join(f"http://127.0.0.1:{port}" for port in ports)
    return [
        ServiceProcess(
            "history",
            {**common_env(amqp_url), "HISTORY_HOST": "127.0.0.1", "HISTORY_PORT": str(port),
             "HISTORY_DATA_DIR": str(workdir / f"history-db-{ordinal}"), "HISTORY_RETRY_INTERVAL_S": "0.5",
             "HISTORY_REPLICA": str(ordinal), "HISTORY_PEERS": peers, "AMQP_HISTORY_REPLICAS": str(count),
             **(extra_env or {})},
            port, workdir / f"history-{ordinal}.log",
        )
        for ordinal, port in enumerate(ports)
    ]


@dataclass
class LocalTopology:
    """A history service and two chat replicas on one broker URL, each on a free port."""

    amqp_url: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    replicas: int = 2
    history: ServiceProcess = field(init=False)
    chats: list[ServiceProcess] = field(init=False)

    def __post_init__(self) -> None:
        common = common_env(self.amqp_url)
        history_port = free_port()
        self.history = ServiceProcess(
            "history",
            {**common, "HISTORY_HOST": "127.0.0.1", "HISTORY_PORT": str(history_port),
             "HISTORY_DATA_DIR": str(self.workdir / "history-db"), "HISTORY_RETRY_INTERVAL_S": "0.5",
             **{k: v for k, v in self.extra_env.items() if not k.startswith("CHAT_")}},
            history_port, self.workdir / "history.log",
        )
        self.chats = []
        for index in range(self.replicas):
            port = free_port()
            env = {
                **common, "CHAT_HOST": "127.0.0.1", "CHAT_PORT": str(port),
                "CHAT_HISTORY_URL": self.history.url, "CHAT_HISTORY_TIMEOUT_S": "2",
                "CHAT_RATE_LIMIT_PER_S": "0", "CHAT_RATE_LIMIT_BURST": "0", "CHAT_MAX_CONNECTIONS_PER_CLIENT": "0",
                **{k: v for k, v in self.extra_env.items() if not k.startswith("HISTORY_")},
            }
            self.chats.append(ServiceProcess("chat", env, port, self.workdir / f"chat{index}.log"))

    def start(self) -> None:
        self.history.start()
        for chat in self.chats:
            chat.start(wait_ready=False)
        for chat in self.chats:
            chat.wait_ready()

    def stop(self) -> None:
        for process in [*self.chats, self.history]:
            if process.running():
                process.kill()
