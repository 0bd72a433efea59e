"""Helpers of the history-replica scenarios (issue 13): digests, readiness, and what the clients' reads got.

``Reconnects`` keeps the readers of a load reconnecting with their cursors while a fault runs, so that history is
read through the chat replicas the whole time; ``ReadOutcomes`` then counts what those reads got: any
`history_unavailable` error, any `synced` with `complete: false`, and the chat replicas' own counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from tests.e2e.chaos.conftest import metric
from tests.e2e.chaos.load import ChaosLoad
from tests.support.procs import LocalTopology, ServiceProcess


async def digests(url: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"{url}/digest")
        response.raise_for_status()
        return [orjson.loads(line) for line in response.text.splitlines() if line.strip()]


async def room_count(url: str, room: str) -> int:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(f"{url}/digest", params={"room": room})
        response.raise_for_status()
        lines = [orjson.loads(line) for line in response.text.splitlines() if line.strip()]
        return int(lines[0]["count"]) if lines else 0


async def equal_digests(topology: LocalTopology, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until every replica's /digest is the same (messages in flight settle); return it."""
    deadline = time.monotonic() + timeout
    while True:
        answers = [await digests(url) for url in topology.history_urls]
        if all(answer == answers[0] for answer in answers):
            return answers[0]
        if time.monotonic() > deadline:
            summary = [[(d["room"], d["count"]) for d in answer] for answer in answers]
            raise AssertionError(f"replica digests still differ after {timeout} s: {summary}")
        await asyncio.sleep(0.5)


def readyz(process: ServiceProcess) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(f"{process.url}/readyz", timeout=2)
        return response.status_code, response.json()
    except (httpx.HTTPError, ValueError):
        return 0, {}


@dataclass
class Readiness:
    seconds: float  # from start to ready
    copying_seen: bool  # /readyz said a copy ran at some poll before ready
    count_at_ready: int  # the room's count on the replica at its first ready answer


async def wait_ready_after_copy(process: ServiceProcess, room: str, timeout: float = 120) -> Readiness:
    """Poll a (re)started replica's /readyz until 200; note whether it was copying and what it held when ready."""
    started = time.monotonic()
    copying_seen = False
    while True:
        code, body = await asyncio.to_thread(readyz, process)
        if code == 200:
            count = await room_count(process.url, room)
            return Readiness(time.monotonic() - started, copying_seen, count)
        copying_seen = copying_seen or bool((body.get("copy") or {}).get("copying")) or "copying" in str(body)
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"history replica not ready in {timeout} s: {body} {process.tail()}")
        await asyncio.sleep(0.1)


class Reconnects:
    """Close each reader's connection in turn, every ``interval_s``: it resumes with its cursor (a history read)."""

    def __init__(self, load: ChaosLoad, interval_s: float = 0.3) -> None:
        self._load = load
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.count = 0

    async def __aenter__(self) -> Reconnects:
        self._task = asyncio.create_task(self._run(), name="reconnects")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        for turn in range(10**9):
            await asyncio.sleep(self._interval_s)
            client = self._load.readers[turn % len(self._load.readers)]
            if client.online.is_set():
                with contextlib.suppress(Exception):
                    await client.ws.close()
                self.count += 1


def open_gaps(load: ChaosLoad) -> list[str]:
    """Clients whose last `synced` said complete: false (a backfill still owed)."""
    gaps = []
    for client in load.clients:
        synced = [f for f in client.frames if f.get("type") == "synced"]
        if synced and synced[-1].get("complete") is False:
            gaps.append(client.name or "?")
    return gaps


async def no_open_gap(load: ChaosLoad, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while gaps := open_gaps(load):
        assert time.monotonic() < deadline, f"clients still waiting for a backfill: {gaps}"
        await asyncio.sleep(0.2)


@dataclass
class ReadOutcomes:
    unavailable_errors: int  # `history_unavailable` error frames the clients got
    incomplete_syncs: int  # `synced` frames with complete: false
    syncs: int
    chat_unavailable: float  # durable_chat_history_fetches_total{result="unavailable"} over the chat replicas
    chat_lagging: float  # ... {result="lagging"}: answered only by a replica behind its queue

    @classmethod
    def of(cls, load: ChaosLoad, topology: LocalTopology) -> ReadOutcomes:
        frames = [frame for client in load.clients for frame in client.frames]
        fetches = "durable_chat_history_fetches_total"
        return cls(
            unavailable_errors=sum(
                1 for f in frames if f.get("type") == "error" and f.get("code") == "history_unavailable"
            ),
            incomplete_syncs=sum(1 for f in frames if f.get("type") == "synced" and f.get("complete") is False),
            syncs=sum(1 for f in frames if f.get("type") == "synced"),
            chat_unavailable=sum(metric(c.url, fetches, 'result="unavailable"') or 0 for c in topology.chats),
            chat_lagging=sum(metric(c.url, fetches, 'result="lagging"') or 0 for c in topology.chats),
        )

    def line(self) -> str:
        return (f"syncs={self.syncs} history_unavailable={self.unavailable_errors} "
                f"incomplete={self.incomplete_syncs} (chat counters: unavailable={self.chat_unavailable:.0f} "
                f"lagging={self.chat_lagging:.0f})")
