"""A chat replica's history client against real history replicas: reads fail over between them, and a read
answered by a replica behind its own queue is never taken for complete (issue 13)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.chat.catchup import QueueStats
from services.chat.history_client import HistoryClient, HistoryUnavailable
from tests.support.history import import_into, minted
from tests.support.procs import ServiceProcess, running_history_replicas

QUEUES = ["chat.history", "chat.history.1"]


@pytest.fixture
def replicas(vhost_url: str, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    with running_history_replicas(vhost_url, tmp_path, 2) as processes:
        yield processes


async def store_on_both(replicas: list[ServiceProcess], room: str, count: int) -> list[str]:
    messages = minted(room, count)
    for replica in replicas:
        await import_into(replica.url, messages)
    return [m.id for m in messages]


async def test_reads_prefer_caught_up_replicas_fail_over_and_flag_a_lagging_answer(
    replicas: list[ServiceProcess],
) -> None:
    first, second = replicas
    stored = await store_on_both(replicas, "fo", 30)
    client = HistoryClient([first.url, second.url], 2.0, QUEUES, page_size=7)
    try:
        # As the relay's poll would find it: replica 0's queue backlogged, replica 1's drained.
        await client.standing.observe({"chat.history": QueueStats(500, 1), "chat.history.1": QueueStats(0, 1)})
        assert client.standing.caught_up() == {1}

        read = client.read()
        assert [m.id for m, _ in await read.latest("fo", 10, None)] == stored[-10:]
        assert read.answered == {1} and not read.lagging  # the caught-up replica is asked first

        second.kill()  # the poll has not noticed yet: replica 1 still counts as caught up
        read = client.read()
        assert [m.id async for m, _ in read.stream_after("fo", stored[4], None)] == stored[5:]
        assert read.answered == {0} and read.lagging  # answered, but by one behind its queue: not complete

        first.kill()
        read = client.read()
        with pytest.raises(HistoryUnavailable, match="no history replica answered"):
            await read.lookup("fo", stored[:2], None)
    finally:
        await client.aclose()


async def test_the_public_read_api_fails_over_too(replicas: list[ServiceProcess]) -> None:
    first, second = replicas
    stored = await store_on_both(replicas, "px", 3)
    client = HistoryClient([first.url, second.url], 2.0, QUEUES)
    try:
        first.kill()
        response = await client.proxy("px", [("limit", "10")], ndjson=False, token=None)
        try:
            assert response.status_code == 200
            assert [m["id"] for m in httpx.Response(200, content=await response.aread()).json()] == stored
        finally:
            await response.aclose()
        refused = await client.proxy("px", [("limit", "nope")], ndjson=False, token=None)
        assert refused.status_code == 400  # the request's fault: not retried elsewhere, passed through
        await refused.aclose()
    finally:
        await client.aclose()
