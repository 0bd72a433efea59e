"""A three-node RabbitMQ 4 cluster of private nodes, each in its own network namespace (see network.py).

The nodes run as the Cluster Operator runs them: ``pause_minority`` partition handling, and quorum queues
whose members span every node (the history queue is declared after the cluster formed, so its initial group is
the whole cluster). ``net_ticktime`` is 5 s (default 60) so that a node cut off is noticed and paused within a
short test. A cut must last well past detection: one that healed while the minority was still pausing (seen with
10 s ticks and a 15 s cut) left the metadata store split, each side running on its own, until a node restart.
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid

from tests.e2e.cluster.network import Network
from tests.support.rabbit import PrivateRabbit

NET_TICKTIME_S = 5
AMQP_PORT = 5672  # each node has a network stack of its own, so every node listens on the usual port
CONF = (f"net_ticktime = {NET_TICKTIME_S}", "cluster_partition_handling = pause_minority")


class RabbitCluster:
    def __init__(self, size: int = 3) -> None:
        self.network = Network(size)
        cookie = uuid.uuid4().hex
        self.nodes: list[PrivateRabbit] = []
        for index in range(size):
            address = self.network.address(index)
            node = PrivateRabbit(
                engine="4", host=address, port=AMQP_PORT, netns=self.network.namespaces[index],
                node=f"rabbit@{address}", cookie=cookie, conf=CONF,
            )
            self.nodes.append(node)

    def start(self) -> None:
        """Network up, first node up, then the others join it one by one."""
        self.network.create()
        first, *others = self.nodes
        first.start()
        for node in others:
            node.start()
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        self.wait_members(len(self.nodes))

    def destroy(self) -> None:
        try:
            for node in self.nodes:
                node.kill()
            for node in self.nodes:
                node.destroy()
        finally:
            self.network.destroy()

    def url(self, vhost: str, nodes: list[int] | None = None) -> str:
        """AMQP_URL for the services: every node (or those given), comma-separated."""
        chosen = range(len(self.nodes)) if nodes is None else nodes
        return ",".join(f"amqp://guest:guest@{self.nodes[i].host}:{AMQP_PORT}/{vhost}" for i in chosen)

    def running(self) -> list[PrivateRabbit]:
        return [node for node in self.nodes if node.running]

    def any_ctl(self, *args: str) -> str:
        """``rabbitmqctl`` through the first node that answers (a node may be down or cut off)."""
        errors = []
        for node in self.running():
            try:
                return node.ctl(*args, timeout=30)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                errors.append(f"{node.node}: {exc}")
        raise RuntimeError(f"no node answered {args}: {errors}")

    def add_vhost(self) -> str:
        name = f"cl-{uuid.uuid4().hex[:8]}"
        self.any_ctl("add_vhost", name)
        self.any_ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return name

    def index_of(self, node_name: str) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.node == node_name)

    def index_at(self, address: str) -> int:
        """The node listening on ``address`` (an IP), as a service's log names it."""
        return next(i for i, node in enumerate(self.nodes) if node.host == address)

    def running_members(self) -> set[str]:
        out = self.any_ctl("cluster_status", "--formatter", "json")
        match = re.search(r'"running_nodes":\[([^\]]*)\]', out)
        return set(re.findall(r'"([^"]+)"', match.group(1))) if match else set()

    def wait_members(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if len(self.running_members()) >= count:
                    return
            except RuntimeError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"cluster did not reach {count} running nodes in {timeout} s: {self.views()}")

    def paused(self, index: int) -> bool:
        """True once the node stopped its broker app (pause_minority) while its Erlang VM runs on."""
        try:
            return self.nodes[index].ctl("eval", "rabbit:is_running().", timeout=20).strip() == "false"
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return False

    def partition_log(self, index: int) -> str:
        """The node's log lines about peers, partitions and pauses: what a failed partition test shows."""
        node = self.nodes[index]
        path = node.dir / "log" / f"{node.node}.log"
        keys = ("partition", "pause", "Pausing", "down", " up", "inconsistent")
        lines = [line for line in path.read_text(errors="replace").splitlines() if any(k in line for k in keys)]
        return "\n".join(lines[-25:])

    def repair(self) -> None:
        """Restart every node that does not see the whole cluster (after a fault that left it split)."""
        names = {node.node for node in self.nodes}
        for index, node in enumerate(self.nodes):
            if not node.running or set(re.findall(r'"([^"]+)"', self.views()[node.node])) != names:
                node.kill()
                self.nodes[index].start()
        self.wait_members(len(self.nodes))

    def views(self) -> dict[str, str]:
        """Each node's own view of the running nodes, or its error: what a failed wait reports."""
        views = {}
        for node in self.nodes:
            try:
                out = node.ctl("cluster_status", "--formatter", "json", timeout=20)
                match = re.search(r'"running_nodes":\[([^\]]*)\]', out)
                views[node.node] = match.group(1) if match else out[:300]
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                views[node.node] = f"error: {getattr(exc, 'stderr', '') or exc}"[:300]
        return views

    def queue_info(self, vhost: str, queue: str = "chat.history") -> tuple[str, list[str]]:
        """(leader, members) of a quorum queue; ("", []) while the listing leaves it out (its leader just died)."""
        out = self.any_ctl("list_queues", "-p", vhost, "-q", "name", "leader", "members", "--formatter", "json")
        match = re.search(rf'\{{"name":"{re.escape(queue)}","leader":"([^"]*)","members":\[([^\]]*)\]', out)
        if match is None:
            return "", []
        return match.group(1), re.findall(r'"([^"]+)"', match.group(2))

    def restart(self, index: int, timeout: float = 120) -> None:
        """Start a stopped or killed node again on its own data; it rejoins the cluster."""
        self.nodes[index].start(timeout)
        self.wait_members(len(self.nodes), timeout)

    def online_members(self, vhost: str, queue: str = "chat.history") -> int:
        out = self.any_ctl("list_queues", "-p", vhost, "-q", "name", "online", "--formatter", "json")
        match = re.search(rf'\{{"name":"{re.escape(queue)}","online":\[([^\]]*)\]', out)
        return len(re.findall(r'"([^"]+)"', match.group(1))) if match else 0

    def wait_online_members(self, vhost: str, count: int, timeout: float = 90) -> None:
        """Until ``count`` members of the queue are online: the operator's gate before the next node goes."""
        deadline = time.monotonic() + timeout
        while self.online_members(vhost) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"chat.history has fewer than {count} online members after {timeout} s")
            time.sleep(0.5)

    def stop_all(self) -> None:
        """A clean stop of every node, last first (the first node then starts knowing it was not the last)."""
        for node in reversed(self.nodes):
            node.stop()

    def start_all(self, timeout: float = 180) -> None:
        """Every node launched at once: after a full stop each waits for its peers to come back."""
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.wait_started(timeout)
        self.wait_members(len(self.nodes), timeout)
