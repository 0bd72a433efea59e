"""`durable-chat verify` and `repair` as real subprocesses against real history replicas (their own LevelDB, on a
broker vhost of their own): the rooms that differ are named, repair copies what each replica lacks, both ways."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli.test_cli import cli
from tests.support.history import import_into, minted
from tests.support.procs import ServiceProcess, running_history_replicas


@pytest.fixture
def replicas(vhost_url: str, tmp_path: Path) -> Iterator[list[ServiceProcess]]:
    with running_history_replicas(vhost_url, tmp_path, 2) as processes:
        for process in processes:  # started together, each copies from the other once that one is ready
            copy_done(process)
        yield processes


def copy_done(process: ServiceProcess, timeout: float = 30) -> None:
    """Wait until the replica's start-up copy from its peer has run: writes made after it stay one-sided."""
    deadline = time.monotonic() + timeout
    while (state := httpx.get(f"{process.url}/readyz", timeout=2).json()["copy"]["state"]) != "done":
        assert time.monotonic() < deadline, f"copy state still {state}"
        time.sleep(0.2)


async def digests(replica: ServiceProcess) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        return (await http.get(f"{replica.url}/digest")).text


async def test_verify_names_the_rooms_that_differ_and_repair_copies_both_ways(
    replicas: list[ServiceProcess],
) -> None:
    first, second = replicas
    # As if each replica had missed some messages: stored on one only, through its write endpoint.
    shared = minted("shared", 50, "ada")
    await import_into(first.url, shared)
    await import_into(second.url, shared)
    await import_into(first.url, minted("only-on-0", 30, "ada"))
    await import_into(second.url, minted("only-on-1", 7, "ada"))
    mixed = minted("mixed", 20, "ada")  # same count on both, different ids: the hash tells
    await import_into(first.url, mixed[:10])
    await import_into(second.url, mixed[10:])
    urls = f"{first.url},{second.url}"

    verified = await cli("verify", "--history", urls, "--recheck", "1", "--interval", "0.2")
    assert verified.rc == 1, verified
    lines = verified.out.splitlines()
    assert sorted(line.split()[1] for line in lines) == ["mixed", "only-on-0", "only-on-1"], verified.out
    assert any("only-on-0" in line and f"replica 1 ({second.url}) lacks at least 30" in line for line in lines)
    assert any("only-on-1" in line and f"replica 0 ({first.url}) lacks at least 7" in line for line in lines)
    assert any("mixed" in line and "same counts, different ids" in line for line in lines)
    assert "shared" not in verified.out

    started = time.monotonic()
    repaired = await cli("repair", "--history", urls, "--batch", "8")
    repair_s = time.monotonic() - started
    assert repaired.rc == 0, repaired
    assert f"room only-on-0: copied 30 to replica 1 ({second.url})" in repaired.out
    assert f"room only-on-1: copied 7 to replica 0 ({first.url})" in repaired.out
    assert f"room mixed: copied 10 to replica 0 ({first.url}), 10 to replica 1 ({second.url})" in repaired.out
    assert await digests(first) == await digests(second)
    print(f"\n[cli] repair of 3 rooms (67 messages copied) in {repair_s:.2f} s")

    again = await cli("verify", "--history", urls)
    assert again.rc == 0 and again.out == "", again
    idle = await cli("repair", "--history", urls)
    assert idle.rc == 0 and "nothing to repair" in idle.out, idle


async def test_a_replica_that_does_not_answer_exits_2(replicas: list[ServiceProcess]) -> None:
    first, second = replicas
    await asyncio.to_thread(second.kill)
    for command in ("verify", "repair"):
        result = await cli(command, "--history", f"{first.url},{second.url}", "--timeout", "5")
        assert result.rc == 2, result
        assert "did not answer" in result.err and second.url in result.err, result.err
