"""Reads iterating while the store reopens, on a real LevelDB on disk.

The consumer reopens LevelDB to clear a sticky write error (disk full) while the history API may be iterating a
page. plyvel frees a database's iterators when it closes, so a reopen on one thread while another iterates
crashes the process (segfault). Each scenario runs in a child process so that such a crash is a failed test, not a
dead test run; the second test shows that crash with the pattern the service used before (a worker thread per call).
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import orjson

from services.common.ids import UlidGenerator
from services.common.schema import ChatMessage
from services.history.store import MessageStore, PageQuery, ThreadedStore

MESSAGES, READERS, REOPENS = 20_000, 4, 20
WHOLE_ROOM = PageQuery(room="r", limit=MESSAGES)


def _fill(path: str) -> list[str]:
    ids = UlidGenerator()
    store = MessageStore(path)
    minted = []
    for start in range(0, MESSAGES, 5000):
        batch = []
        for n in range(start, start + 5000):
            msg_id, ts = ids.mint()
            message = ChatMessage(msg_id, "ORIGIN01", "r", "ann", f"message {n} " + "x" * 100, ts)
            batch.append((message, message.to_wire()))
            minted.append(msg_id)
        store.write(batch)
    store.close()
    return minted


async def _threaded_store_scenario(path: str) -> int:
    """Whole-room reads on the service's store while it reopens; every read must be the whole room, in order."""
    async with ThreadedStore(path) as store:
        expected = [orjson.loads(body)["id"] for body in await store.page(WHOLE_ROOM)]
        assert len(expected) == MESSAGES

        async def reader() -> int:
            reads = 0
            while not reopened.done():
                page = await store.page(WHOLE_ROOM)
                assert [orjson.loads(body)["id"] for body in page[:: MESSAGES // 100]] == expected[:: MESSAGES // 100]
                assert len(page) == MESSAGES
                reads += 1
            return reads

        async def reopener() -> None:
            for _ in range(REOPENS):
                await store.reopen()
                await asyncio.sleep(0.005)

        reopened = asyncio.ensure_future(reopener())
        reads = await asyncio.gather(*(reader() for _ in range(READERS)))
        await reopened
        return sum(reads)


async def _worker_thread_scenario(path: str) -> int:
    """The same load with a worker thread per call (``asyncio.to_thread``), as the service did before."""
    store = MessageStore(path)
    stop = asyncio.Event()

    async def reader() -> int:
        reads = 0
        while not stop.is_set():
            await asyncio.to_thread(store.page, WHOLE_ROOM)
            reads += 1
        return reads

    async def reopener() -> None:
        for _ in range(REOPENS):
            await asyncio.to_thread(store.reopen)
            await asyncio.sleep(0.005)
        stop.set()

    results = await asyncio.gather(reopener(), *(reader() for _ in range(READERS)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise failures[0]
    return sum(r for r in results if isinstance(r, int))


def _child(scenario: str, path: str) -> None:
    reads = asyncio.run(_SCENARIOS[scenario](path))
    print(f"{scenario}: {reads} whole-room reads during {REOPENS} reopens", flush=True)


_SCENARIOS = {"threaded": _threaded_store_scenario, "worker-thread": _worker_thread_scenario}


def _run_in_child(scenario: str, path: str) -> int | None:
    process = multiprocessing.get_context("spawn").Process(target=_child, args=(scenario, path))
    process.start()
    process.join(timeout=240)
    return process.exitcode


def test_reads_during_reopens_are_whole_and_ordered_and_never_crash(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    _fill(path)
    assert _run_in_child("threaded", path) == 0


def test_before_the_store_had_its_own_thread_a_reopen_under_reads_crashed(tmp_path: Path) -> None:
    """The failure the store's single thread guards against, on the same database and load."""
    path = str(tmp_path / "db")
    _fill(path)
    assert _run_in_child("worker-thread", path) != 0
