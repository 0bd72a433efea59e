"""The common frame of every cluster fault: load on, fault, recovery measured, load off, invariant checked."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tests.e2e.chaos.invariant import check, settle
from tests.e2e.chaos.load import ChaosLoad
from tests.e2e.cluster.cluster import RabbitCluster
from tests.e2e.cluster.conftest import CLUSTER_REPORT
from tests.support.procs import LocalTopology, ServiceProcess


class StallMeter:
    """The longest stretch without a new acknowledgement while a fault runs: what it cost the senders."""

    def __init__(self, acked: Callable[[], int]) -> None:
        self._acked = acked
        self.longest_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        last, since = self._acked(), time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now, acked = time.monotonic(), self._acked()
            if acked != last:
                last, since = acked, now
            self.longest_s = max(self.longest_s, now - since)

    def __enter__(self) -> StallMeter:
        self._task = asyncio.create_task(self._watch())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


@dataclass
class Run:
    """What a fault works with."""

    cluster: RabbitCluster
    topology: LocalTopology
    load: ChaosLoad
    vhost: str


Fault = Callable[[Run], Awaitable[None]]


PRESENCE_LINK = "durable-chat-presence-"


def broker_nodes(service: ServiceProcess) -> list[str]:
    """The broker addresses the service's message link connected to, in order, from its ``broker node`` log lines.

    A chat replica's presence runs on a second connection of its own, which may sit on another node: a fault aimed
    at the node carrying messages must not pick that one.
    """
    nodes = []
    for line in service.log_path.read_text(errors="replace").splitlines():
        if '"broker node"' in line:
            record = json.loads(line)
            if not str(record.get("link", "")).startswith(PRESENCE_LINK):
                nodes.append(record["node"].split(":")[0])
    return nodes


async def services_ready(topology: LocalTopology, timeout: float = 60) -> None:
    services = [topology.history, *topology.chats]
    deadline = time.monotonic() + timeout
    while not all(await asyncio.gather(*(asyncio.to_thread(s.ready) for s in services))):
        if time.monotonic() > deadline:
            raise TimeoutError("services not ready again after the fault")
        await asyncio.sleep(0.2)


async def under_load(cluster: RabbitCluster, topology: LocalTopology, fault: Fault, name: str, room: str) -> None:
    """Start the services and the load, run ``fault``, let it recover, and check the invariant."""
    await asyncio.to_thread(topology.start)
    vhost = topology.amqp_url.rsplit("/", 1)[1]
    _, members = await asyncio.to_thread(cluster.queue_info, vhost)
    assert sorted(members) == sorted(node.node for node in cluster.nodes), "history queue must span all nodes"
    load = ChaosLoad([c.ws_url for c in topology.chats], room, senders=4, readers=2)
    try:
        await load.start()
        await load.wait_acked(100)
        started = time.monotonic()
        with StallMeter(lambda: len(load.acked)) as stall:
            await fault(Run(cluster, topology, load, vhost))
            await services_ready(topology)
            acked = len(load.acked)
            await load.wait_acked(acked + 100, timeout=120)
        recovered_s = time.monotonic() - started
        await load.stop_sending()
        stored = await settle(load, topology.history.url, timeout=120)
        figures = check(name, load, stored)
        CLUSTER_REPORT.append(
            f"{figures.line()} | longest ack stall {stall.longest_s:.1f} s, fault to 100 more acks {recovered_s:.1f} s"
        )
        print(f"[cluster] {CLUSTER_REPORT[-1]}\n[cluster] outcomes: {dict(load.outcomes)}")
    finally:
        await load.shutdown()
