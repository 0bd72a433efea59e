"""Fault 7: a client that stops reading while others send.

Its replica must not buffer for it without bound: a per-client send buffer of ``CHAT_SEND_BUFFER_FRAMES``
frames, then the connection is closed with 1013 (contract section 2). The test's slow client is a real
WebSocket on a socket with a 4 KiB receive buffer whose reader is never called until the end; then it reads
what was queued for it and must find the 1013 close frame. A client that never reads again is dropped by the
WebSocket keepalive (uvicorn's ping, 20 s + 20 s): the long variant checks that too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import websockets

from tests.e2e.chaos.conftest import MakeTopology, metric, rss_kib
from tests.e2e.chaos.invariant import check, settle
from tests.e2e.chaos.load import ChaosLoad
from tests.support.client import socket_receiving_at_most

TEXT_BYTES = 3500
STALLED = 5
# Small time windows, so that the memory that legitimately follows the load (the recovery ring, the remembered
# client_ids) reaches its steady size quickly and RSS shows what the stalled clients cost.
ENV = {"CHAT_SEND_BUFFER_FRAMES": "50", "AMQP_PUBLISH_TIMEOUT_S": "2", "CHAT_RECOVERY_WINDOW_MS": "3000",
       "CHAT_IDEMPOTENCY_WINDOW_S": "3"}


async def stalled_client(ws_url: str, room: str) -> websockets.ClientConnection:
    sock = await socket_receiving_at_most(ws_url, 4096)
    # max_queue=1: the library stops reading the socket as soon as one frame waits for the application.
    return await websockets.connect(f"{ws_url}?room={room}", sock=sock, max_queue=1, max_size=2**22)


async def slow_consumer(make_topology: MakeTopology, messages: int, fault: str, resume: bool = True) -> None:
    topology = make_topology(ENV)
    await asyncio.to_thread(topology.start)
    replica = topology.chats[0]
    room = f"slow{messages}"
    load = ChaosLoad([c.ws_url for c in topology.chats], room, senders=8, readers=2, interval_s=0.005,
                     text_bytes=TEXT_BYTES)
    stalled: list[websockets.ClientConnection] = []
    try:
        await load.start()
        await load.wait_acked(300)
        await asyncio.sleep(3.5)  # the recovery ring (3 s here) reaches its steady size
        rss_before = rss_kib(replica.pid)
        stalled = [await stalled_client(replica.ws_url, room) for _ in range(STALLED)]
        started = len(load.acked)
        samples = []
        while len(load.acked) < started + messages:
            await asyncio.sleep(0.5)
            samples.append(rss_kib(replica.pid))
        rss_after = rss_kib(replica.pid)
        unbounded_mib = STALLED * messages * TEXT_BYTES / 2**20
        growth_mib = (max(samples) - rss_before) / 1024
        print(f"\n[chaos] slow consumer: {messages} messages for {STALLED} stalled clients ({unbounded_mib:.1f} MiB "
              f"unbounded); replica RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB "
              f"(peak growth {growth_mib:.1f} MiB)")
        assert growth_mib < min(6.0, unbounded_mib / 3), "the replica buffered for clients that do not read"
        closed_slow = replica.log_path.read_text(errors="replace").count("closing slow consumer")
        assert closed_slow == STALLED, f"{closed_slow} of {STALLED} stalled clients closed as slow consumers"

        if resume:  # the stalled clients read again: what fitted in the buffers, then the close frame
            for slow in stalled:
                frames = await read_until_closed(slow)
                assert slow.close_code == 1013, f"closed with {slow.close_code} after {frames} frames"
                print(f"[chaos] a stalled client read {frames} frames (kernel buffers), then close {slow.close_code}")
        else:  # they never read again: the replica drops them anyway, holding nothing for them
            await wait_metric(replica.url, "durable_chat_connected_clients", 5, timeout=60)
        await wait_metric(replica.url, "durable_chat_connected_clients", 5, timeout=10)
        assert (metric(replica.url, "durable_chat_disconnects_total", 'code="1013"') or 0) >= STALLED * resume
        assert rss_kib(replica.pid) / 1024 - rss_before / 1024 < 6.0

        await load.stop_sending()
        stored = await settle(load, topology.history.url)
        check(fault, load, stored)  # the other clients, on both replicas, were not held back
    finally:
        for slow in stalled:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(slow.close(), 2)
        await load.shutdown()


async def read_until_closed(ws: websockets.ClientConnection, timeout: float = 30) -> int:
    frames = 0
    deadline = time.monotonic() + timeout
    with pytest.raises(websockets.exceptions.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout=max(0.1, deadline - time.monotonic()))
            frames += 1
    return frames


async def wait_metric(url: str, name: str, value: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (current := await asyncio.to_thread(metric, url, name)) != value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} is {current}, not {value}, after {timeout} s")
        await asyncio.sleep(0.5)


async def test_slow_consumer_is_closed_1013_and_memory_stays_bounded(make_topology: MakeTopology) -> None:
    await slow_consumer(make_topology, 1500, "slow consumer")


@pytest.mark.slow
async def test_slow_consumer_long_stall(make_topology: MakeTopology) -> None:
    await slow_consumer(make_topology, 4000, "slow consumer, never reads again", resume=False)
