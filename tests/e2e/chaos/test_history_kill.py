"""Fault 1: the history service SIGKILLed again and again while both replicas take a steady load."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.chaos.conftest import MakeTopology
from tests.e2e.chaos.invariant import check, settle
from tests.e2e.chaos.load import ChaosLoad


async def history_killed_repeatedly(make_topology: MakeTopology, cycles: int, fault: str) -> None:
    topology = make_topology()
    await asyncio.to_thread(topology.start)
    load = ChaosLoad([c.ws_url for c in topology.chats], f"hkill{cycles}", senders=4, readers=2)
    try:
        await load.start()
        await load.wait_acked(100)
        for cycle in range(cycles):
            await asyncio.sleep(0.8 + 0.3 * (cycle % 3))  # kill at different points of a batch
            topology.history.kill()
            await asyncio.sleep(0.3 + 0.2 * (cycle % 2))
            await asyncio.to_thread(topology.history.start)
        await asyncio.sleep(1)
        await load.stop_sending()
        stored = await settle(load, topology.history.url)
        check(fault, load, stored)
    finally:
        await load.shutdown()


async def test_history_sigkilled_five_times_under_load(make_topology: MakeTopology) -> None:
    await history_killed_repeatedly(make_topology, 5, "history SIGKILL x5")


@pytest.mark.slow
async def test_history_sigkilled_twenty_times_under_load(make_topology: MakeTopology) -> None:
    await history_killed_repeatedly(make_topology, 20, "history SIGKILL x20")
