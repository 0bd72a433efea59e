"""Fault 5: the history service down for a long stretch while chat runs.

Chat keeps accepting (the broker holds the messages in the durable ``chat.history`` queue); the backlog is
visible on the chat replicas' /metrics (``durable_chat_history_queue_messages``, from a passive declare every
5 s) while history is down, and drains after the restart, when history's /metrics shows the lag
(``durable_chat_history_lag_seconds``) of the messages it stored late.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e.chaos.conftest import MakeTopology, metric, queue_depth, vhost_of, wait_status
from tests.e2e.chaos.invariant import check, settle
from tests.e2e.chaos.load import ChaosLoad
from tests.support.rabbit import PrivateRabbit


async def history_down(
    make_topology: MakeTopology, rabbit: PrivateRabbit, vhost_url: str, outage_s: float, fault: str
) -> None:
    topology = make_topology()
    await asyncio.to_thread(topology.start)
    chat = topology.chats[0]
    load = ChaosLoad([c.ws_url for c in topology.chats], f"hdown{int(outage_s)}", senders=4, readers=2)
    try:
        await load.start()
        await load.wait_acked(100)
        topology.history.kill()
        down_at, acked_at_kill = time.monotonic(), len(load.acked)
        backlog_seen = 0.0
        while time.monotonic() - down_at < outage_s:
            await asyncio.sleep(1)
            depth = await asyncio.to_thread(metric, chat.url, "durable_chat_history_queue_messages")
            backlog_seen = max(backlog_seen, depth or 0)
            assert all([await asyncio.to_thread(c.ready) for c in topology.chats])  # chat never depends on history
        accepted_while_down = len(load.acked) - acked_at_kill
        depth_before_restart = await asyncio.to_thread(queue_depth, rabbit, vhost_of(vhost_url))
        assert backlog_seen > 0, "the history backlog was not visible on the chat replica's /metrics"
        assert depth_before_restart > 0  # quorum queue counts are refreshed every few seconds: not exact

        await asyncio.to_thread(topology.history.start)
        restarted = time.monotonic()
        while await asyncio.to_thread(queue_depth, rabbit, vhost_of(vhost_url)) > 50:
            assert time.monotonic() - restarted < 60, "the backlog did not drain"
            await asyncio.sleep(0.2)
        drained_s = time.monotonic() - restarted
        history = topology.history.url
        count = await asyncio.to_thread(metric, history, "durable_chat_history_lag_seconds_count") or 0
        prompt = await asyncio.to_thread(metric, history, "durable_chat_history_lag_seconds_bucket", 'le="5.0"') or 0
        assert count - prompt > 0, "history /metrics does not show the lag of the backlog"
        print(f"\n[chaos] history down {outage_s:.0f} s: {accepted_while_down} messages accepted meanwhile, "
              f"queue depth {depth_before_restart} (chat /metrics saw {backlog_seen:.0f}), "
              f"drained in {drained_s:.1f} s, "
              f"{count - prompt:.0f} stored with lag > 5 s")
        await load.stop_sending()
        stored = await settle(load, history)
        check(fault, load, stored)
        await wait_status(history, 200)
    finally:
        await load.shutdown()


async def test_history_down_for_a_while_backlog_drains(
    make_topology: MakeTopology, private_rabbit: PrivateRabbit, vhost_url: str
) -> None:
    await history_down(make_topology, private_rabbit, vhost_url, 11, "history down 11 s")


@pytest.mark.slow
async def test_history_down_for_a_long_stretch(
    make_topology: MakeTopology, private_rabbit: PrivateRabbit, vhost_url: str
) -> None:
    await history_down(make_topology, private_rabbit, vhost_url, 90, "history down 90 s")
