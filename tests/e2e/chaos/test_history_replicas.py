"""Replicated history (issue 13), whole system: history replicas killed, wiped, added, removed and upgraded from v1
under a steady load through two chat replicas, whose readers keep reconnecting with their cursors (a history read
each time). Every scenario ends with the chaos invariant (0 lost, 0 duplicated, every client exact) on every
replica's content, and equal digests on every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.e2e.chaos.conftest import MakeTopology, metric, vhost_of
from tests.e2e.chaos.invariant import REPORT, check, settle
from tests.e2e.chaos.load import ChaosLoad
from tests.e2e.chaos.replicas import (
    Readiness,
    ReadOutcomes,
    Reconnects,
    equal_digests,
    no_open_gap,
    room_count,
    wait_ready_after_copy,
)
from tests.support.procs import LocalTopology
from tests.support.rabbit import PrivateRabbit


def _report(scenario: str, started: float, outcomes: ReadOutcomes, extra: str = "") -> None:
    line = f"{scenario}: {outcomes.line()} {extra} wall={time.monotonic() - started:.1f}s"
    REPORT.append(line)
    print(f"\n[replicas] {line}")


async def _finish(fault: str, load: ChaosLoad, topology: LocalTopology) -> None:
    """Stop sending, check the invariant against every replica's content, and the digests."""
    await load.stop_sending()
    await no_open_gap(load)  # every incomplete sync (a replica behind its queue) was backfilled
    for url in topology.history_urls:
        stored = await settle(load, url)
        check(f"{fault} [{url.rsplit(':', 1)[1]}]", load, stored)
    await equal_digests(topology)


def _no_failed_reads(outcomes: ReadOutcomes) -> None:
    assert outcomes.unavailable_errors == 0, outcomes.line()
    assert outcomes.chat_unavailable == 0, outcomes.line()


@dataclass
class _Scenario:
    fault: str
    started: float
    topology: LocalTopology
    load: ChaosLoad

    async def finish(self, extra: str, *, reads_never_fail: bool = True) -> None:
        """What the reads got, the invariant and digests (`_finish`), then the figures line."""
        outcomes = await asyncio.to_thread(ReadOutcomes.of, self.load, self.topology)
        await _finish(self.fault, self.load, self.topology)
        if reads_never_fail:
            _no_failed_reads(outcomes)
        _report(self.fault, self.started, outcomes, extra)

    async def finish_after_copy(self, reconnects: Reconnects, ready: Readiness, held: int, held_by: str) -> None:
        """`finish`, once the copied replica is known to have been ready only when it held the ``held`` messages its
        peers held when it (re)started."""
        assert ready.count_at_ready >= held, f"ready before it held what its peers held when it started ({held_by})"
        await self.finish(f"reconnects={reconnects.count} {held_by}={held} ready_in={ready.seconds:.1f}s "
                          f"copying_seen={ready.copying_seen} count_at_ready={ready.count_at_ready}")


@contextlib.asynccontextmanager
async def _under_load(
    make_topology: MakeTopology,
    fault: str,
    room: str,
    acked: int,
    *,
    acked_timeout: float = 60,
    history_replicas: int = 2,
    env: dict[str, str] | None = None,
    readers: int = 3,
) -> AsyncIterator[_Scenario]:
    """A started topology under a steady load (4 senders) that has had ``acked`` messages acked; the load is shut
    down on the way out."""
    started = time.monotonic()
    topology = make_topology(env, history_replicas=history_replicas)
    await asyncio.to_thread(topology.start)
    load = ChaosLoad([c.ws_url for c in topology.chats], room, senders=4, readers=readers)
    try:
        await load.start()
        await load.wait_acked(acked, timeout=acked_timeout)
        yield _Scenario(fault, started, topology, load)
    finally:
        await load.shutdown()


# ---- replica 0 SIGKILLed, its data deleted: it copies everything back from replica 1 ---------------------------


async def replica_wiped(make_topology: MakeTopology, before: int, fault: str) -> None:
    async with _under_load(make_topology, fault, f"wipe{before}", before, acked_timeout=300) as scenario:
        topology, load = scenario.topology, scenario.load
        async with Reconnects(load) as reconnects:
            wiped = topology.histories[0]
            wiped.kill()
            shutil.rmtree(topology.data_dir(0))
            held = await room_count(topology.histories[1].url, load.room)
            await asyncio.to_thread(wiped.start, False)
            ready = await wait_ready_after_copy(wiped, load.room)
            await asyncio.sleep(1)
        await scenario.finish_after_copy(reconnects, ready, held, "held_by_peer")


async def test_a_wiped_replica_copies_from_its_peer_and_reads_never_fail(make_topology: MakeTopology) -> None:
    await replica_wiped(make_topology, 300, "history replica 0 wiped")


@pytest.mark.slow
async def test_a_wiped_replica_with_a_large_store_copies_from_its_peer(make_topology: MakeTopology) -> None:
    await replica_wiped(make_topology, 5000, "history replica 0 wiped (5000 stored)")


# ---- both replicas SIGKILLed in turn, never both down -------------------------------------------------------------


async def replicas_killed_in_turn(make_topology: MakeTopology, cycles: int, fault: str) -> None:
    async with _under_load(make_topology, fault, f"turns{cycles}", 100) as scenario:
        async with Reconnects(scenario.load) as reconnects:
            for cycle in range(cycles):
                victim = scenario.topology.histories[cycle % 2]
                await asyncio.sleep(0.5 + 0.3 * (cycle % 3))
                victim.kill()
                await asyncio.sleep(0.5 + 0.5 * (cycle % 2))
                await asyncio.to_thread(victim.start)  # ready again before the other one goes
            await asyncio.sleep(1)
        await scenario.finish(f"reconnects={reconnects.count}")


async def test_replicas_killed_in_turn_no_client_sees_history_unavailable(make_topology: MakeTopology) -> None:
    await replicas_killed_in_turn(make_topology, 4, "history replicas SIGKILLed in turn x4")


@pytest.mark.slow
async def test_replicas_killed_in_turn_many_times(make_topology: MakeTopology) -> None:
    await replicas_killed_in_turn(make_topology, 16, "history replicas SIGKILLed in turn x16")


# ---- scale up: a third replica added under load ------------------------------------------------------------------


async def replica_added(make_topology: MakeTopology, before: int, fault: str) -> None:
    async with _under_load(make_topology, fault, f"grow{before}", before, acked_timeout=300) as scenario:
        topology, load = scenario.topology, scenario.load
        async with Reconnects(load) as reconnects:
            added = topology.add_history()
            held = await room_count(topology.histories[0].url, load.room)
            await asyncio.to_thread(added.start, False)
            ready = await wait_ready_after_copy(added, load.room)
            # Roll the chat replicas onto the new list (as the chart does when history.replicas changes).
            for chat in topology.chats:
                await asyncio.to_thread(chat.terminate)
                await asyncio.to_thread(chat.start)
            await asyncio.sleep(1)
        await scenario.finish_after_copy(reconnects, ready, held, "held_by_peers")


async def test_a_replica_added_under_load_is_ready_only_after_its_copy(make_topology: MakeTopology) -> None:
    await replica_added(make_topology, 300, "history scaled 2 -> 3")


@pytest.mark.slow
async def test_a_replica_added_to_a_large_store(make_topology: MakeTopology) -> None:
    await replica_added(make_topology, 5000, "history scaled 2 -> 3 (5000 stored)")


# ---- scale down: the orphan queue is seen with no consumer, then expires -----------------------------------------


async def replica_removed(
    make_topology: MakeTopology, rabbit: PrivateRabbit, vhost_url: str, expires_s: int, fault: str
) -> None:
    orphan = "chat.history.1"
    gauge = f'queue="{orphan}"'
    async with _under_load(make_topology, fault, f"shrink{expires_s}", 100, readers=2,
                           env={"AMQP_HISTORY_QUEUE_EXPIRES_S": str(expires_s)}) as scenario:
        topology = scenario.topology
        # The chat replicas first rolled onto one history replica (AMQP_HISTORY_REPLICAS=1, one URL), then
        # replica 1 stopped: from then on only their watch beyond the configured count sees chat.history.1.
        for chat in topology.chats:
            chat.env.update(AMQP_HISTORY_REPLICAS="1", CHAT_HISTORY_URL=topology.history.url)
            await asyncio.to_thread(chat.terminate)
            await asyncio.to_thread(chat.start)
        topology.remove_history()
        chat = topology.chats[0]
        removed_at = time.monotonic()
        consumers_seen: list[float] = []
        backlog_seen: list[float] = []
        while await asyncio.to_thread(_queue_exists, rabbit, vhost_url, orphan):
            assert time.monotonic() - removed_at < expires_s + 60, "the orphan queue did not expire"
            consumers = await asyncio.to_thread(metric, chat.url, "durable_chat_history_queue_consumers", gauge)
            backlog = await asyncio.to_thread(metric, chat.url, "durable_chat_history_queue_messages", gauge)
            if consumers is not None and backlog is not None:
                consumers_seen.append(consumers)
                backlog_seen.append(backlog)
            await asyncio.sleep(0.5)
        expired_after = time.monotonic() - removed_at
        assert expired_after >= expires_s - 1, "the queue went before its expiry: something else deleted it"
        # The gauge comes from a poll (every QUEUE_POLL_INTERVAL_S): its first readings may predate the removal.
        # Once it reads 0 it must stay 0 until the queue is gone.
        settled = list(itertools.dropwhile(lambda count: count != 0.0, consumers_seen))
        assert settled, f"the orphan queue never showed 0 consumers while it existed: {consumers_seen}"
        assert set(settled) == {0.0}, consumers_seen
        assert max(backlog_seen) > 0, "the orphan queue's backlog was not visible"
        await asyncio.sleep(2.5)  # a poll or two after the expiry: the series is gone, not stale
        assert await asyncio.to_thread(metric, chat.url, "durable_chat_history_queue_consumers", gauge) is None
        await scenario.finish(f"orphan expired {expired_after:.1f}s after removal (x-expires {expires_s}s), "
                              f"backlog seen up to {max(backlog_seen):.0f}, "
                              f"polls with 0 consumers={len(settled)}", reads_never_fail=False)


def _queue_exists(rabbit: PrivateRabbit, vhost_url: str, queue: str) -> bool:
    names = rabbit.ctl("list_queues", "-p", vhost_of(vhost_url), "-q", "name").split()
    return queue in names


async def test_scale_down_the_orphan_queue_is_watched_then_expires(
    make_topology: MakeTopology, private_rabbit: PrivateRabbit, vhost_url: str
) -> None:
    await replica_removed(make_topology, private_rabbit, vhost_url, 10, "history scaled 2 -> 1")


@pytest.mark.slow
async def test_scale_down_with_a_longer_expiry(
    make_topology: MakeTopology, private_rabbit: PrivateRabbit, vhost_url: str
) -> None:
    await replica_removed(make_topology, private_rabbit, vhost_url, 30, "history scaled 2 -> 1 (expiry 30 s)")


# ---- a v1 deployment (one replica on chat.history) upgraded to two ---------------------------------------------


async def upgraded_from_v1(
    make_topology: MakeTopology, rabbit: PrivateRabbit, vhost_url: str, before: int, fault: str
) -> None:
    # v1: one history, none of the replica settings
    async with _under_load(make_topology, fault, f"v1up{before}", before, acked_timeout=300,
                           history_replicas=1) as scenario:
        topology, load = scenario.topology, scenario.load
        v1 = topology.history
        held_by_v1 = await room_count(v1.url, load.room)
        async with Reconnects(load) as reconnects:
            # The order a StatefulSet scale-up plus roll takes: the new replica 1 first (it copies from the v1
            # replica), then the chat replicas onto the list of both, then replica 0 restarted with the replica
            # settings (it keeps its data and chat.history); reads go to replica 1 meanwhile.
            added = topology.add_history()
            await asyncio.to_thread(added.start, False)
            ready = await wait_ready_after_copy(added, load.room)
            for chat in topology.chats:
                await asyncio.to_thread(chat.terminate)
                await asyncio.to_thread(chat.start)
            await asyncio.to_thread(v1.terminate)
            await asyncio.to_thread(v1.start)
            assert await room_count(v1.url, load.room) >= held_by_v1, "replica 0 lost data in the upgrade"
            await asyncio.sleep(1)
        assert ready.count_at_ready >= held_by_v1
        assert await asyncio.to_thread(_queue_exists, rabbit, vhost_url, "chat.history")
        await scenario.finish(
            f"reconnects={reconnects.count} held_by_v1={held_by_v1} replica1_ready_in={ready.seconds:.1f}s")


async def test_a_v1_deployment_upgrades_to_two_replicas_with_its_data(
    make_topology: MakeTopology, private_rabbit: PrivateRabbit, vhost_url: str
) -> None:
    await upgraded_from_v1(make_topology, private_rabbit, vhost_url, 300, "v1 -> 2 history replicas")


@pytest.mark.slow
async def test_a_v1_deployment_with_a_large_store_upgrades(
    make_topology: MakeTopology, private_rabbit: PrivateRabbit, vhost_url: str
) -> None:
    await upgraded_from_v1(make_topology, private_rabbit, vhost_url, 5000, "v1 -> 2 history replicas (5000 stored)")
