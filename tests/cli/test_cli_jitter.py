"""Reconnects spread out (issue 16 item 6): 500 `tail` clients closed together by a rolling restart's 1012
come back over the whole first backoff interval, not in one storm.

The clients are the CLI's own `cmd_tail` loops (500 in this process, real WebSockets to real replicas); the
delay each one waits before its first reconnect is recorded as it is drawn. (Measuring the reconnects' wall-clock
times instead would measure this one process's event loop, busy with 500 close handshakes at once.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
import uuid

import httpx
import pytest

from services.cli import main as cli
from tests.e2e.chaos.conftest import metric
from tests.e2e.conftest import Endpoints

CLIENTS = 500


async def wait_clients(url: str, count: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    current: float | None = None
    while current != count:
        assert time.monotonic() < deadline, f"{current} clients connected, not {count}"
        await asyncio.sleep(0.5)
        with contextlib.suppress(httpx.HTTPError):  # a replica busy accepting 500 clients may answer late
            current = await asyncio.to_thread(metric, url, "durable_chat_connected_clients")


def patient(urls: list[str]) -> cli.Service:
    """As with `--wait 120`: 500 connects at once on a busy machine can be refused before any answered."""
    return cli.Service(urls, None, None, wait_s=120)


async def test_500_tails_closed_together_reconnect_spread_over_the_first_backoff_interval(
    endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    topology = endpoints.local()
    drawn: dict[asyncio.Task[object] | None, float] = {}
    real_backoff = cli.backoff

    def recorded_backoff(attempt: int) -> float:  # the delay each loop waits before its first reconnect
        delay = real_backoff(attempt)
        drawn.setdefault(asyncio.current_task(), delay)
        return delay

    monkeypatch.setattr(cli, "backoff", recorded_backoff)
    args = argparse.Namespace(
        room=f"jitter-{uuid.uuid4().hex[:8]}", after=None, json=True, lines=0, verbose=False, presence=False
    )
    tails = [
        asyncio.create_task(cli.cmd_tail(patient(endpoints.chat_urls), args)) for _ in range(CLIENTS)
    ]
    try:
        await wait_clients(endpoints.chat_urls[0], CLIENTS)
        assert drawn == {}, "a tail lost its connection before the restart"
        topology.chats[0].signal(signal.SIGTERM)  # every client is closed 1012 at once
        await wait_clients(endpoints.chat_urls[1], CLIENTS)  # all of them back, on the other replica
    finally:
        for tail in tails:
            tail.cancel()
        for tail in tails:
            with contextlib.suppress(BaseException):
                await tail
    first_interval = cli.BACKOFF_BASE_S
    delays = list(drawn.values())
    assert len(delays) == CLIENTS
    quarters = [sum(q * first_interval / 4 <= d < (q + 1) * first_interval / 4 for d in delays) for q in range(4)]
    # Full jitter draws uniformly over [0, interval): each quarter gets about 125. Half-fixed jitter would leave
    # the first two quarters empty; no jitter would put all 500 at one instant.
    assert all(count >= CLIENTS // 10 for count in quarters), f"reconnects per quarter of the interval: {quarters}"
