"""Reconnects spread out (issue 16 item 6): 500 `tail` clients closed together by a rolling restart's 1012
come back over the whole first backoff interval, not in one storm.

The clients are the CLI's own `cmd_tail` loops (500 in this process, real WebSockets to real replicas). Each
one's reconnect delay is measured from the moment it noticed the close to its next connection attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
import uuid

import pytest

from services.cli import main as cli
from tests.e2e.chaos.conftest import metric
from tests.e2e.conftest import Endpoints

CLIENTS = 500


async def wait_clients(url: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (current := await asyncio.to_thread(metric, url, "durable_chat_connected_clients")) != count:
        assert time.monotonic() < deadline, f"{current} clients connected, not {count}"
        await asyncio.sleep(0.5)


async def test_500_tails_closed_together_reconnect_spread_over_the_first_backoff_interval(
    endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = endpoints.local()
    noticed: dict[asyncio.Task[object] | None, float] = {}
    retried: dict[asyncio.Task[object] | None, float] = {}

    def timed_note(message: str) -> None:  # the loop's first note after its connection closed
        noticed.setdefault(asyncio.current_task(), time.monotonic())

    class TimedService(cli.Service):
        async def open(self, room: str, after: str | None = None):  # type: ignore[no-untyped-def]
            task = asyncio.current_task()
            if task in noticed:
                retried.setdefault(task, time.monotonic())
            return await super().open(room, after)

    monkeypatch.setattr(cli, "note", timed_note)
    args = argparse.Namespace(room=f"jitter-{uuid.uuid4().hex[:8]}", after=None, json=True, lines=0, verbose=False)
    tails = [
        asyncio.create_task(cli.cmd_tail(TimedService(endpoints.chat_urls, None, None), args))
        for _ in range(CLIENTS)
    ]
    try:
        await wait_clients(endpoints.chat_urls[0], CLIENTS)
        topology.chats[0].signal(signal.SIGTERM)  # every client is closed 1012 at once
        deadline = time.monotonic() + 60
        while len(retried) < CLIENTS:
            assert time.monotonic() < deadline, f"{len(retried)} of {CLIENTS} reconnected"
            await asyncio.sleep(0.1)
    finally:
        for tail in tails:
            tail.cancel()
        for tail in tails:
            with contextlib.suppress(BaseException):
                await tail
    first_interval = cli.BACKOFF_BASE_S
    delays = sorted(retried[task] - noticed[task] for task in retried)
    quarters = [sum(q * first_interval / 4 <= d < (q + 1) * first_interval / 4 for d in delays) for q in range(4)]
    # Full jitter draws uniformly over [0, interval): each quarter gets about 125. Half-fixed jitter would leave
    # the first two quarters empty; no jitter would put all 500 in one.
    assert all(count >= CLIENTS // 10 for count in quarters), f"reconnects per quarter of the interval: {quarters}"
    assert delays[-1] < first_interval + 1.0, f"slowest reconnect after {delays[-1]:.2f} s"
