"""RabbitMQ for tests: a fresh vhost on the machine's broker, or a private node that a test may stop.

Never the vhost `/`, never the machine's own node: fault tests get their own node name, ports and Erlang
cookie (HOME), and stop it with `rabbitmqctl -n <node>`.

Private nodes run RabbitMQ 4 by default, from the Debian 13 root that scripts/rabbitmq4-root.sh builds (chroot
plus the unwrapped server script; the node's files live inside the root so the chrooted broker sees them).
``DCT_RABBITMQ=3.10`` makes the default the machine's own Debian 12 install (RabbitMQ 3.10); a test may ask for
an engine explicitly with ``PrivateRabbit(engine=...)`` or, in tests/e2e, the ``rabbitmq("3.10")`` marker.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import free_port, port_open

SHARED_AMQP = os.environ.get("DCT_SHARED_AMQP", "amqp://guest:guest@127.0.0.1:5672")
ENGINES = ("4", "3.10")
REPO = Path(__file__).resolve().parents[2]
RABBIT4_ROOT = Path(
    os.environ.get("DURABLE_CHAT_RABBITMQ4_ROOT", Path.home() / ".cache" / "durable-chat" / "rabbitmq4")
)

_CHROOT_WITH_PROC = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'


def rabbit_bin() -> Path:
    """The machine's own (Debian 12, RabbitMQ 3.10) unwrapped scripts."""
    for candidate in ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin"):
        if Path(candidate, "rabbitmq-server").exists():
            return Path(candidate)
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise RuntimeError("rabbitmq-server is not installed (run `make deps`)")
    return Path(found).resolve().parent


def default_engine() -> str:
    engine = os.environ.get("DCT_RABBITMQ", "4")
    if engine not in ENGINES:
        raise RuntimeError(f"DCT_RABBITMQ must be one of {ENGINES}, got {engine!r}")
    return engine


@functools.cache
def rabbit4_root() -> Path:
    """The RabbitMQ 4 root, built on first use (a finished root is only checked: ~35 ms)."""
    if not (RABBIT4_ROOT / ".durable-chat-ready").exists():
        subprocess.run(["bash", str(REPO / "scripts" / "rabbitmq4-root.sh")], check=True, timeout=900)
    return RABBIT4_ROOT


@dataclass(frozen=True)
class Engine:
    """Where a RabbitMQ install lives and how to run its tools: on the host, or chrooted into a root."""

    version: str
    root: Path | None
    bin: str

    @classmethod
    def named(cls, version: str | None = None) -> Engine:
        version = version or default_engine()
        if version == "4":
            return cls(version, rabbit4_root(), "/usr/lib/rabbitmq/bin")
        if version == "3.10":
            return cls(version, None, str(rabbit_bin()))
        raise ValueError(f"unknown RabbitMQ engine {version!r} (one of {ENGINES})")

    def command(self, tool: str, netns: str | None = None) -> list[str]:
        """argv running ``tool`` (rabbitmq-server, rabbitmqctl...); the environment passes through chroot."""
        prefix = ["ip", "netns", "exec", netns] if netns else []
        if self.root is not None:
            # The broker reads /proc (memory monitor, status); it gets one in a mount namespace of its own,
            # so no mount outlives the process or shows on the host.
            prefix += ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _CHROOT_WITH_PROC,
                       str(self.root)]
        return [*prefix, f"{self.bin}/{tool}"]

    def scratch_dir(self, prefix: str) -> Path:
        """A fresh directory the engine can see (inside the root for a chrooted engine)."""
        parent = self.root / "tmp" if self.root is not None else None
        return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))

    def inner(self, path: Path) -> str:
        """``path`` as the engine's processes see it."""
        return "/" + str(path.relative_to(self.root)) if self.root is not None else str(path)


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
def shared_vhost() -> Iterator[str]:
    """The AMQP URL of a throwaway vhost on the machine's broker, deleted on exit."""
    vhost = SharedVhost()
    vhost.create()
    try:
        yield vhost.url
    finally:
        vhost.delete()


@contextlib.contextmanager
def running_private_rabbit(plugins: tuple[str, ...] = (), engine: str | None = None) -> Iterator[PrivateRabbit]:
    """A started private node, destroyed (stopped, files removed) on exit."""
    node = PrivateRabbit(plugins, engine)
    try:
        node.start()
        yield node
    finally:
        node.destroy()


class PrivateRabbit:
    """A RabbitMQ node of our own on free ports, which tests may stop and start.

    ``engine`` is "4" or "3.10" (default: ``DCT_RABBITMQ``, else "4"). Cluster nodes (tests/e2e/cluster) also
    pass a network namespace, the address and port to listen on, a long node name, the cluster's Erlang cookie
    and extra rabbitmq.conf lines.
    """

    def __init__(
        self,
        plugins: tuple[str, ...] = (),
        engine: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        netns: str | None = None,
        node: str | None = None,
        cookie: str | None = None,
        conf: tuple[str, ...] = (),
    ) -> None:
        self.engine = Engine.named(engine)
        self.dir = self.engine.scratch_dir("dct-rabbit-")
        self.host = host
        self.netns = netns
        self.port = port or free_port()
        self.dist_port = free_port()
        self.prometheus_port = free_port() if "rabbitmq_prometheus" in plugins else 0
        self.node = node or f"dct{uuid.uuid4().hex[:8]}@localhost"
        self._plugins = plugins
        self._process: subprocess.Popen[bytes] | None = None
        for sub in ("home", "mnesia", "log"):
            (self.dir / sub).mkdir()
        if cookie is not None:
            cookie_file = self.dir / "home" / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)
        (self.dir / "enabled_plugins").write_text(f"[{','.join(plugins)}].\n")
        lines = [f"listeners.tcp.default = {self.port}", "loopback_users = none", *conf]
        if self.prometheus_port:
            lines.append(f"prometheus.tcp.port = {self.prometheus_port}")
        if "rabbitmq_management" in plugins:
            lines.append(f"management.tcp.port = {free_port()}")
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/"

    @property
    def version(self) -> str:
        """The broker's own version string (e.g. 4.0.5), from the running node."""
        return self.ctl("eval", "rabbit_misc:version().").strip().strip('"')

    def env(self) -> dict[str, str]:
        inner = self.engine.inner
        env = dict(os.environ)
        env.update(
            HOME=inner(self.dir / "home"),
            LC_ALL="C.UTF-8",
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=inner(self.dir / "mnesia"),
            RABBITMQ_LOG_BASE=inner(self.dir / "log"),
            RABBITMQ_PID_FILE=inner(self.dir / "node.pid"),
            RABBITMQ_ENABLED_PLUGINS_FILE=inner(self.dir / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=inner(self.dir / "rabbitmq"),
            RABBITMQ_CONF_ENV_FILE=inner(self.dir / "none"),
        )
        if "." in self.node.split("@", 1)[1]:
            env["RABBITMQ_USE_LONGNAME"] = "true"
        return env

    def start(self, timeout: float = 90) -> None:
        self.launch()
        self.wait_started(timeout)

    def launch(self) -> None:
        """Start the broker process without waiting (cluster nodes boot together: each waits for its peers)."""
        self._process = subprocess.Popen(
            self.engine.command("rabbitmq-server", self.netns), env=self.env(), process_group=0,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def wait_started(self, timeout: float = 90) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"private RabbitMQ exited with {self._process.returncode}; logs in {self.dir}/log")
            # A namespaced node is only reachable from inside its namespace, where rabbitmqctl runs.
            if (self.netns is not None or port_open(self.port)) and self._ctl_ok("await_startup"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"private RabbitMQ did not start in {timeout} s; logs in {self.dir}/log")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

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

    def ctl(self, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [*self.engine.command("rabbitmqctl", self.netns), "-n", self.node, *args],
            env=self.env(), check=True, capture_output=True, text=True, timeout=timeout,
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
            [*self.engine.command("rabbitmqctl", self.netns), "-n", self.node, *args, "--timeout", "5"],
            env=self.env(), capture_output=True, timeout=30,
        )
        return result.returncode == 0
