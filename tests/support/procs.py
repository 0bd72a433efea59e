"""The services as real processes: started in their own process group, killed with real signals."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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


@contextlib.contextmanager
def running_history_replicas(amqp_url: str, workdir: Path, count: int) -> Iterator[list[ServiceProcess]]:
    """``history_replicas`` started together (each may copy from the others), ready; killed on the way out."""
    processes = history_replicas(amqp_url, workdir, count)
    try:
        for process in processes:
            process.start(wait_ready=False)
        for process in processes:
            process.wait_ready()
        yield processes
    finally:
        for process in processes:
            process.kill()


@dataclass
class LocalTopology:
    """History replicas and two chat replicas on one broker URL, each on a free port.

    One history replica (the default) is started as v1 ran it: without any of the replica settings. With
    ``history_replicas`` > 1 every replica gets its ordinal, the peer list and the count, and every chat replica
    the list of history URLs (issue 13).
    """

    amqp_url: str
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    replicas: int = 2
    history_replicas: int = 1
    histories: list[ServiceProcess] = field(init=False)
    chats: list[ServiceProcess] = field(init=False)
    common: dict[str, str] = field(init=False, default_factory=dict)
    removed: list[ServiceProcess] = field(init=False, default_factory=list)  # scaled down, killed at stop()

    def __post_init__(self) -> None:
        self.common = common_env(self.amqp_url)
        self.histories = []
        for _ in range(self.history_replicas):
            self._new_history()
        self.chats = []
        for index in range(self.replicas):
            port = free_port()
            env = {
                **self.common, "CHAT_HOST": "127.0.0.1", "CHAT_PORT": str(port),
                "CHAT_HISTORY_TIMEOUT_S": "2",
                "CHAT_RATE_LIMIT_PER_S": "0", "CHAT_RATE_LIMIT_BURST": "0", "CHAT_MAX_CONNECTIONS_PER_CLIENT": "0",
                **{k: v for k, v in self.extra_env.items() if not k.startswith("HISTORY_")},
            }
            self.chats.append(ServiceProcess("chat", env, port, self.workdir / f"chat{index}.log"))
        self._configure_replicas(replica_settings=self.history_replicas > 1)

    @property
    def history(self) -> ServiceProcess:
        """History replica 0 (the only one, unless the test asked for more)."""
        return self.histories[0]

    @property
    def history_urls(self) -> list[str]:
        return [history.url for history in self.histories]

    def _new_history(self) -> ServiceProcess:
        ordinal = len(self.histories)
        port = free_port()
        data = "history-db" if ordinal == 0 else f"history-db-{ordinal}"
        log = "history.log" if ordinal == 0 else f"history{ordinal}.log"
        history = ServiceProcess(
            "history",
            {**self.common, "HISTORY_HOST": "127.0.0.1", "HISTORY_PORT": str(port),
             "HISTORY_DATA_DIR": str(self.workdir / data), "HISTORY_RETRY_INTERVAL_S": "0.5",
             **{k: v for k, v in self.extra_env.items() if not k.startswith("CHAT_")}},
            port, self.workdir / log,
        )
        self.histories.append(history)
        return history

    def data_dir(self, ordinal: int) -> Path:
        return Path(self.histories[ordinal].env["HISTORY_DATA_DIR"])

    def _configure_replicas(self, replica_settings: bool) -> None:
        """Point every process at the current set of history replicas (restart them to apply)."""
        count = str(len(self.histories))
        for ordinal, history in enumerate(self.histories):
            if replica_settings:
                history.env.update(HISTORY_REPLICA=str(ordinal), HISTORY_PEERS=",".join(self.history_urls),
                                   AMQP_HISTORY_REPLICAS=count)
        for chat in self.chats:
            chat.env["CHAT_HISTORY_URL"] = ",".join(self.history_urls)
            if replica_settings:
                chat.env["AMQP_HISTORY_REPLICAS"] = count

    def add_history(self) -> ServiceProcess:
        """Scale up by one: the new replica (not started) and every process's settings updated for the new count;
        running processes keep their old settings until restarted, as pods do until rolled."""
        history = self._new_history()
        self._configure_replicas(replica_settings=True)
        return history

    def remove_history(self) -> None:
        """Scale down by one: the last replica is stopped (SIGTERM) and forgotten; the others' settings updated."""
        history = self.histories.pop()
        self.removed.append(history)
        if history.running():
            history.terminate()
        self._configure_replicas(replica_settings=True)

    def start(self) -> None:
        for history in self.histories:
            history.start(wait_ready=False)
        for history in self.histories:
            history.wait_ready()
        for chat in self.chats:
            chat.start(wait_ready=False)
        for chat in self.chats:
            chat.wait_ready()

    def stop(self) -> None:
        for process in [*self.chats, *self.histories, *self.removed]:
            if process.running():
                process.kill()
