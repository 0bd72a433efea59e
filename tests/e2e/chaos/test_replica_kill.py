"""Fault 3: a chat replica SIGKILLed under load; its clients resume on the other replica with ``after=``."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.chaos.conftest import MakeTopology, wait_status
from tests.e2e.chaos.invariant import check, settle
from tests.e2e.chaos.load import ChaosLoad


async def replica_killed(make_topology: MakeTopology, cycles: int, fault: str) -> None:
    topology = make_topology()
    await asyncio.to_thread(topology.start)
    load = ChaosLoad([c.ws_url for c in topology.chats], f"ckill{cycles}", senders=4, readers=2)
    try:
        await load.start()
        await load.wait_acked(100)
        for cycle in range(cycles):
            victim = topology.chats[cycle % 2]
            survivor = topology.chats[(cycle + 1) % 2]
            homed = [c for c in load.clients if c.replica == cycle % 2]
            assert homed
            before = {c.name: c.connections for c in homed}
            victim.kill()
            # Its clients come back on the survivor, resuming with their cursor, while the load goes on.
            for client in homed:
                await client.wait_for(lambda c=client, b=before: c.connections > b[c.name] and c.online.is_set(), 30)
            assert all(c.urls[c.replica or 0] == survivor.ws_url for c in homed)
            acked = len(load.acked)
            await load.wait_acked(acked + 100)
            await asyncio.to_thread(victim.start)
            await wait_status(victim.url, 200)
        await load.stop_sending()
        stored = await settle(load, topology.history.url)
        check(fault, load, stored)
    finally:
        await load.shutdown()


async def test_replica_sigkilled_clients_resume_on_the_other(make_topology: MakeTopology) -> None:
    await replica_killed(make_topology, 2, "chat replica SIGKILL x2 (each replica once)")


@pytest.mark.slow
async def test_replicas_sigkilled_in_turn(make_topology: MakeTopology) -> None:
    await replica_killed(make_topology, 8, "chat replica SIGKILL x8 (alternating)")
