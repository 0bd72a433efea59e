"""RabbitMQ for tests: a fresh vhost on the machine's broker, or a private node that a test may stop.

Never the vhost `/`, never the machine's own node: fault tests get their own node name, ports and Erlang
cookie (HOME), and stop it with `rabbitmqctl -n <node>`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.support.ports import free_port, port_open

SHARED_AMQP = os.environ.get("DCT_SHARED_AMQP", "amqp://guest:guest@127.0.0.1:5672")


def rabbit_bin() -> Path:
    for candidate in ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin"):
        if Path(candidate, "rabbitmq-server").exists():
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise RuntimeError("rabbitmq-server is not installed (run `make deps`)")
    return Path(found).resolve().parent


class SharedVhost:
    """A throwaway vhost on the machine's broker, deleted at the end."""

    def __init__(self) -> None:
        self.name = f"dct-{uuid.uuid4().hex[:10]}"

    @property
    def url(self) -> str:
        return f"{SHARED_AMQP}/{self.name}"

    def create(self) -> None:
        subprocess.run(["rabbitmqctl", "add_vhost", self.name], check=True, capture_output=True, timeout=60)
        subprocess.run(
            ["rabbitmqctl", "set_permissions", "-p", self.name, "guest", ".*", ".*", ".*"],
            check=True, capture_output=True, timeout=60,
        )

    def delete(self) -> None:
        subprocess.run(["rabbitmqctl", "delete_vhost", self.name], capture_output=True, timeout=60)

    def ctl(self, *args: str) -> str:
        result = subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60)
        return result.stdout


@contextlib.contextmanager
def running_private_rabbit(plugins: tuple[str, ...] = ()) -> Iterator[PrivateRabbit]:
    """A started private node, destroyed (stopped, files removed) on exit."""
    node = PrivateRabbit(plugins)
    try:
        node.start()
        yield node
    finally:
        node.destroy()


class PrivateRabbit:
    """A RabbitMQ node of our own on free ports, which tests may stop and start."""

    def __init__(self, plugins: tuple[str, ...] = ()) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dct-rabbit-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.prometheus_port = free_port() if "rabbitmq_prometheus" in plugins else 0
        self.node = f"dct{uuid.uuid4().hex[:8]}@localhost"
        self._plugins = plugins
        self._process: subprocess.Popen[bytes] | None = None
        for sub in ("home", "mnesia", "log"):
            (self.dir / sub).mkdir()
        (self.dir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        conf = [f"listeners.tcp.default = {self.port}", "loopback_users = none"]
        if self.prometheus_port:
            conf.append(f"prometheus.tcp.port = {self.prometheus_port}")
        if "rabbitmq_management" in plugins:
            conf.append(f"management.tcp.port = {free_port()}")
        (self.dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.dir / "home"),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.dir / "log"),
            RABBITMQ_PID_FILE=str(self.dir / "node.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq"),
            RABBITMQ_CONF_ENV_FILE=str(self.dir / "none"),
        )
        return env

    def start(self, timeout: float = 90) -> None:
        self._process = subprocess.Popen(
            [str(rabbit_bin() / "rabbitmq-server")], env=self.env(), process_group=0,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"private RabbitMQ exited with {self._process.returncode}; logs in {self.dir}/log")
            if port_open(self.port) and self._ctl_ok("await_startup"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"private RabbitMQ did not start in {timeout} s; logs in {self.dir}/log")

    def stop(self) -> None:
        """A clean broker stop (`rabbitmqctl stop`), as an operator would do it."""
        self.ctl("stop")
        if self._process is not None:
            try:
                self._process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._process = None

    def kill(self) -> None:
        if self._process is not None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._process.wait(timeout=30)
            self._process = None

    def destroy(self) -> None:
        try:
            if self._process is not None and self._process.poll() is None:
                self._ctl_ok("stop")
                try:
                    self._process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [str(rabbit_bin() / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env(), check=True, capture_output=True, text=True, timeout=120,
        )
        return result.stdout

    def queue_depth(self, queue: str) -> int:
        for line in self.ctl("list_queues", "-q", "name", "messages").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        raise KeyError(queue)

    def _ctl_ok(self, *args: str) -> bool:
        result = subprocess.run(
            [str(rabbit_bin() / "rabbitmqctl"), "-n", self.node, *args, "--timeout", "5"],
            env=self.env(), capture_output=True, timeout=30,
        )
        return result.returncode == 0
