"""A private network of namespaces for a local RabbitMQ cluster: one namespace per node, joined by a bridge.

Each node gets a namespace of its own with one veth whose peer sits on a bridge in the root namespace. The bridge
holds the subnet's first address, a private 10.x.y.0/24 that nothing else on the machine routes: the root
namespace (the test process, the chat and history services) then reaches the nodes over the bridge, never through
the default gateway. A node can be cut off for real from inside its own namespace (iptables DROP against its
peers' addresses), while the services keep reaching it.
"""

from __future__ import annotations

import random
import subprocess
import uuid

import structlog

log = structlog.get_logger(__name__)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, timeout=30)


def _free_subnet() -> str:
    """A 10.x.y prefix that no route on this machine covers yet."""
    routes = run("ip", "-4", "route", "show", "table", "all").stdout
    for _ in range(100):
        prefix = f"10.{random.randint(200, 250)}.{random.randint(1, 254)}"
        if f"{prefix}." not in routes:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 subnet for the cluster network")


class Network:
    """``size`` namespaces on one bridge; addresses ``<prefix>.2`` onwards, the bridge ``<prefix>.1``."""

    def __init__(self, size: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.prefix = _free_subnet()
        self.bridge = f"dcb{tag}"
        self.namespaces = [f"dcn{tag}-{i}" for i in range(size)]
        self._veths = [f"dcv{tag}{i}" for i in range(size)]
        self._cut: set[int] = set()

    def address(self, index: int) -> str:
        return f"{self.prefix}.{index + 2}"

    def create(self) -> None:
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.prefix}.1/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            for index, (namespace, veth) in enumerate(zip(self.namespaces, self._veths, strict=True)):
                run("ip", "netns", "add", namespace)
                run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
                run("ip", "link", "set", veth, "master", self.bridge, "up")
                inside = ("ip", "netns", "exec", namespace)
                run(*inside, "ip", "addr", "add", f"{self.address(index)}/24", "dev", "eth0")
                run(*inside, "ip", "link", "set", "eth0", "up")
                run(*inside, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise

    def cut(self, index: int) -> None:
        """Drop every packet between node ``index`` and the other nodes, both ways, silently (no RST)."""
        inside = ("ip", "netns", "exec", self.namespaces[index])
        for peer in range(len(self.namespaces)):
            if peer != index:
                run(*inside, "iptables", "-A", "INPUT", "-s", self.address(peer), "-j", "DROP")
                run(*inside, "iptables", "-A", "OUTPUT", "-d", self.address(peer), "-j", "DROP")
        self._cut.add(index)

    def heal(self, index: int) -> None:
        run("ip", "netns", "exec", self.namespaces[index], "iptables", "-F")
        self._cut.discard(index)

    def heal_all(self) -> None:
        for index in list(self._cut):
            self.heal(index)

    def kill_leftovers(self) -> None:
        """SIGKILL what still runs in our namespaces (epmd outlives the nodes it served)."""
        for namespace in self.namespaces:
            pids = run("ip", "netns", "pids", namespace, check=False).stdout.split()
            if pids:
                run("kill", "-9", *pids, check=False)

    def destroy(self) -> None:
        self.kill_leftovers()
        for namespace in self.namespaces:
            run("ip", "netns", "del", namespace, check=False)
        run("ip", "link", "del", self.bridge, check=False)
