"""Crashes are never silent, and a stop never acks what it did not store: real processes, signals and broker.

Faults are injected through ``DURABLE_CHAT_TEST_FAULTS`` (tests only, off by default): a drain loop that raises
at every batch, and LevelDB writes slowed to ~0.5 s (0.25-0.75 s each, like an uneven slow disk).
"""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from services.common.lifecycle import TEST_FAULTS_ENV
from tests.e2e.conftest import Endpoints
from tests.support.history import wait_stored
from tests.support.load import Senders
from tests.support.procs import ServiceProcess

CYCLES = 6


async def readyz_statuses_until_exit(process: ServiceProcess, timeout: float = 60) -> list[int]:
    """/readyz status codes, sampled every 50 ms until the process has exited."""
    statuses: list[int] = []
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(timeout=1) as http:
        while process.running():
            assert asyncio.get_running_loop().time() < deadline, "the process did not exit"
            try:
                statuses.append((await http.get(f"{process.url}/readyz")).status_code)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    return statuses


@pytest.mark.topology_env({TEST_FAULTS_ENV: "history.drain.crash=-1"})
async def test_a_drain_loop_that_keeps_crashing_goes_unready_exits_non_zero_and_a_restart_stores_all(
    endpoints: Endpoints,
) -> None:
    topology = endpoints.local()
    senders = Senders(endpoints.ws_urls, "crashing", count=2)
    await senders.start(total=200)
    statuses = await readyz_statuses_until_exit(topology.history)
    assert topology.history.wait_exit() == 1
    assert 503 in statuses, "unready between the crashes"
    log = topology.history.tail(2000)
    assert log.count("background task crashed") == 4
    assert "Traceback" in log and "InjectedFault: injected fault at history.drain" in log
    assert "unrecoverable failure; the process will exit" in log
    await senders.wait_acked(200)  # chat does not depend on history being up
    await senders.stop()
    del topology.history.env[TEST_FAULTS_ENV]
    topology.history.start()
    stored = await wait_stored(endpoints.history_url, "crashing", 200)
    assert sorted(m["id"] for m in stored) == sorted(senders.acked.values())


# Batches smaller than the prefetch, so that deliveries wait behind the batch on the disk when the signal lands.
@pytest.mark.topology_env({TEST_FAULTS_ENV: "history.write.delay_s=0.5", "HISTORY_BATCH_MAX": "32"})
async def test_sigterm_during_slow_writes_under_load_acks_nothing_it_did_not_store(endpoints: Endpoints) -> None:
    topology = endpoints.local()
    senders = Senders(endpoints.ws_urls, "slow-disk", count=6)
    await senders.start()
    writing: list[bool] = []  # per cycle: was a write in flight when the signal landed
    for cycle in range(CYCLES):
        await senders.wait_acked(len(senders.acked) + 100)
        assert await wait_stored(endpoints.history_url, "slow-disk", 1), "writes are under way"
        # A batch is on the slow disk at any moment under this load: the signal lands during a write.
        code = topology.history.terminate(timeout=30)
        assert code in (0, -signal.SIGTERM), f"cycle {cycle}: exit {code}: {topology.history.tail(40)}"
        log = topology.history.tail(200)
        assert "did not finish in time" not in log
        drains = [line for line in log.splitlines() if "draining: consumer cancelled" in line]
        writing.append('"writing": 0' not in drains[-1])
        assert "drained: every delivery received was written and acked" in log
        topology.history.start()
    await senders.wait_acked(len(senders.acked) + 50)
    await senders.stop()
    del topology.history.env[TEST_FAULTS_ENV]
    topology.history.terminate()
    topology.history.start()
    acked = set(senders.acked.values())
    stored = await wait_stored(endpoints.history_url, "slow-disk", len(acked))
    ids = [m["id"] for m in stored]
    assert len(ids) == len(set(ids)), "stored once"
    assert acked - set(ids) == set(), "acked but never stored"
    assert sum(writing) >= CYCLES - 1, f"the signal should land during a write: {writing}"
