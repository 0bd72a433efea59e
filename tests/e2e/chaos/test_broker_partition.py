"""Fault 4: a replica cut off from the broker while its process lives (a TCP proxy that stops forwarding).

Nothing is closed: only AMQP heartbeats (2 s in tests) can tell. The replica must go unready, close its clients
with 1012 (its exclusive queue, and what was routed to it meanwhile, are gone), and recover when the link returns;
its clients resume elsewhere with their cursor and lose nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.chaos.conftest import MakeTopology, status, wait_status
from tests.e2e.chaos.invariant import check, settle
from tests.e2e.chaos.link_proxy import LinkProxy
from tests.e2e.chaos.load import ChaosLoad
from tests.support.procs import LocalTopology


async def partitioned(make_topology: MakeTopology, vhost_url: str, cuts: int, outage_s: float, fault: str) -> None:
    port = int(vhost_url.rsplit(":", 1)[1].split("/")[0])
    proxy = LinkProxy(port)
    proxy.start()
    topology: LocalTopology = make_topology()
    topology.chats[0].env["AMQP_URL"] = proxy.url(vhost_url)
    load = ChaosLoad([c.ws_url for c in topology.chats], f"cut{cuts}", senders=4, readers=2)
    try:
        await asyncio.to_thread(topology.start)
        cut_off, other = topology.chats
        await load.start()
        await load.wait_acked(100)
        for _ in range(cuts):
            homed = [c for c in load.clients if c.replica == 0]
            assert homed
            closes_before = {c.name: c.close_codes.count(1012) for c in homed}
            proxy.pause()
            detected = await wait_status(cut_off.url, 503, timeout=20)
            assert await asyncio.to_thread(status, other.url) == 200
            for client in homed:  # told to resume elsewhere, and did
                await client.wait_for(lambda c=client, b=closes_before: c.close_codes.count(1012) > b[c.name], 10)
            acked = len(load.acked)
            await load.wait_acked(acked + 50)  # the load goes on through the other replica
            await asyncio.sleep(max(0.0, outage_s - detected))
            proxy.resume()
            await wait_status(cut_off.url, 200, timeout=30)
            print(f"\n[chaos] partition detected after {detected:.1f} s")
            for client in load.clients:  # back home, so that the next cut hits them too
                await client.rehome()
            acked = len(load.acked)
            await load.wait_acked(acked + 50)
        await load.stop_sending()
        stored = await settle(load, topology.history.url)
        check(fault, load, stored)
    finally:
        await load.shutdown()
        proxy.stop()


async def test_replica_cut_off_from_the_broker_recovers(make_topology: MakeTopology, vhost_url: str) -> None:
    await partitioned(make_topology, vhost_url, 1, 6, "replica cut off from broker x1")


@pytest.mark.slow
async def test_replica_cut_off_repeatedly_and_long(make_topology: MakeTopology, vhost_url: str) -> None:
    await partitioned(make_topology, vhost_url, 3, 20, "replica cut off from broker x3, 20 s each")
