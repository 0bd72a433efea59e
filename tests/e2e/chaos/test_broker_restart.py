"""Fault 2: the broker stopped (``rabbitmqctl stop``) and started again under load.

The test runs its own RabbitMQ node so the session's node is not disturbed. While the broker is away every
service answers /readyz 503, the replicas close their clients with 1012 and refuse new ones, and a send is
answered ``publish_failed`` (never silently dropped); the load generator resends with the same client_id.
When the node is back, replicas and history reconnect by themselves (our own reconnect loop, topology
re-declared, consumers restored) and the invariant holds over the acknowledged messages.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.chaos.conftest import MakeTopology, add_vhost, wait_status
from tests.e2e.chaos.invariant import check, settle
from tests.e2e.chaos.load import ChaosLoad
from tests.support.rabbit import PrivateRabbit


async def broker_restarted(
    make_topology: MakeTopology, node: PrivateRabbit, restarts: int, outage_s: float, fault: str
) -> None:
    topology = make_topology(amqp_url=add_vhost(node))
    await asyncio.to_thread(topology.start)
    services = [*topology.chats, topology.history]
    load = ChaosLoad([c.ws_url for c in topology.chats], f"brestart{restarts}", senders=4, readers=2)
    try:
        await load.start()
        await load.wait_acked(100)
        for _ in range(restarts):
            closes_before = sum(c.close_codes.count(1012) for c in load.clients)
            await asyncio.to_thread(node.stop)
            for service in services:
                await wait_status(service.url, 503, timeout=20)
            await asyncio.sleep(outage_s)
            await asyncio.to_thread(node.start)
            for service in services:
                await wait_status(service.url, 200, timeout=60)
            assert sum(c.close_codes.count(1012) for c in load.clients) > closes_before
            acked = len(load.acked)
            await load.wait_acked(acked + 100)
        await load.stop_sending()
        stored = await settle(load, topology.history.url)
        figures = check(fault, load, stored)
        print(f"[chaos] broker restart outcomes: {dict(load.outcomes)}")
        assert figures.reconnects >= len(load.clients)
        for service in services:
            assert service.log_path.read_text(errors="replace").count('"broker connected"') >= restarts + 1
    finally:
        await load.shutdown()


async def test_broker_restart_under_load(make_topology: MakeTopology, dedicated_rabbit: PrivateRabbit) -> None:
    await broker_restarted(make_topology, dedicated_rabbit, 1, 2, "broker stop/start x1")


@pytest.mark.slow
async def test_broker_restarted_repeatedly_with_long_outages(
    make_topology: MakeTopology, dedicated_rabbit: PrivateRabbit
) -> None:
    await broker_restarted(make_topology, dedicated_rabbit, 3, 15, "broker stop/start x3, 15 s down")
