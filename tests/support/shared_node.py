"""One private RabbitMQ node for the page, CLI and dashboard tests of a run, and module-wide topologies on it.

Each test directory's session fixture takes a reference; the node (with the Prometheus plugin, which the
dashboard test scrapes) boots once and is killed, with its process group, when the last reference goes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.conftest import REMOTE_CHAT_URLS, REMOTE_HISTORY_URL, Endpoints
from tests.support.procs import LocalTopology
from tests.support.rabbit import PrivateRabbit

_node: PrivateRabbit | None = None
_users = 0


@contextlib.contextmanager
def shared_private_rabbit() -> Iterator[PrivateRabbit]:
    global _node, _users
    if _node is None:
        node = PrivateRabbit(plugins=("rabbitmq_prometheus",))
        try:
            node.start()
        except BaseException:
            node.kill()
            node.destroy()
            raise
        _node = node
    _users += 1
    try:
        yield _node
    finally:
        _users -= 1
        if _users == 0 and _node is not None:
            node, _node = _node, None
            node.kill()  # throwaway: SIGKILL to its group is quicker than a clean stop with plugins
            node.destroy()


@contextlib.contextmanager
def module_topology(node: PrivateRabbit, workdir: Path) -> Iterator[Endpoints]:
    """History and two replicas in a vhost of their own, for tests that kill nothing (each uses its own room)."""
    if REMOTE_CHAT_URLS:
        yield Endpoints(REMOTE_CHAT_URLS, REMOTE_HISTORY_URL)
        return
    vhost = f"m-{uuid.uuid4().hex[:10]}"
    node.ctl("add_vhost", vhost)
    node.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    topology = LocalTopology(f"amqp://guest:guest@127.0.0.1:{node.port}/{vhost}", workdir)
    try:
        topology.start()
        yield Endpoints([chat.url for chat in topology.chats], topology.history.url, topology)
    finally:
        topology.stop()
        with contextlib.suppress(Exception):
            node.ctl("delete_vhost", vhost)


def revive(endpoints: Endpoints) -> Endpoints:
    """Restart whatever an earlier test of the module killed, on the same ports and data."""
    topology = endpoints.topology
    if topology is not None:
        dead = [process for process in [topology.history, *topology.chats] if not process.running()]
        for process in dead:
            process.start(wait_ready=False)
        for process in dead:
            process.wait_ready()
    return endpoints
