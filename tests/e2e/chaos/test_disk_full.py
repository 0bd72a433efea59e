"""Fault 6: the history service's disk fills up (LevelDB write error).

The LevelDB directory is a 4 MiB tmpfs the test mounts (root only; skipped otherwise) and then fills. The batch
that fails is not acked (requeued once; the queue keeps every message), the error is logged and counted
(``durable_chat_store_failures_total``), the consumer stops and /readyz says 503; chat keeps accepting, and the
history API keeps serving what is stored. When
space is freed, the service reopens LevelDB, resumes, and stores everything exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.chaos.conftest import MakeTopology, metric, queue_depth, status, vhost_of, wait_status
from tests.e2e.chaos.invariant import check, settle
from tests.e2e.chaos.load import ChaosLoad
from tests.support.history import fetch_all
from tests.support.rabbit import PrivateRabbit


def fill(directory: Path) -> Path:
    """Write a file until the filesystem is full; return it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (65536, 4096, 256, 1):  # to the last byte, so the very next LevelDB append fails
            while True:
                try:
                    out.write(b"\0" * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "4m"):  # type: ignore[no-untyped-def]
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


async def disk_full(
    make_topology: MakeTopology, rabbit: PrivateRabbit, vhost_url: str, tmp_path: Path, rounds: int, full_s: float,
    fault: str,
) -> None:
    with small_tmpfs(tmp_path / "history-db") as data_dir:
        topology = make_topology()
        assert topology.history.env["HISTORY_DATA_DIR"] == str(data_dir)
        await asyncio.to_thread(topology.start)
        history = topology.history
        vhost = vhost_of(vhost_url)
        load = ChaosLoad([c.ws_url for c in topology.chats], f"full{rounds}", senders=4, readers=2)
        try:
            await load.start()
            await load.wait_acked(100)
            for _ in range(rounds):
                failures = "durable_chat_store_failures_total"
                failures_before = await asyncio.to_thread(metric, history.url, failures) or 0
                filler = await asyncio.to_thread(fill, data_dir)
                await wait_status(history.url, 503, timeout=20)
                failed_at, acked_at = time.monotonic(), len(load.acked)
                assert (await asyncio.to_thread(metric, history.url, failures) or 0) > failures_before
                assert "storage write failed" in history.log_path.read_text(errors="replace")
                depth = await asyncio.to_thread(queue_depth, rabbit, vhost)
                stored_then = len(await fetch_all(history.url, load.room))
                later_depth = depth
                # Chat goes on; history holds still; the queue keeps what history cannot store (quorum queue
                # counts are refreshed every few seconds, so wait for them).
                while time.monotonic() - failed_at < full_s or later_depth <= depth:
                    assert time.monotonic() - failed_at < full_s + 20, "the queue did not grow while history was full"
                    await asyncio.sleep(0.5)
                    assert await asyncio.to_thread(status, history.url) == 503
                    later_depth = await asyncio.to_thread(queue_depth, rabbit, vhost)
                accepted_while_full = len(load.acked) - acked_at
                assert accepted_while_full > 0 and all([await asyncio.to_thread(c.ready) for c in topology.chats])
                # Reads go on from the open database: nothing new stored, nothing lost from view.
                assert len(await fetch_all(history.url, load.room)) == stored_then, "nothing stored while full"
                print(f"\n[chaos] disk full {full_s:.0f} s: {accepted_while_full} messages accepted meanwhile, "
                      f"queue depth {depth} -> {later_depth}")
                filler.unlink()
                recovered = await wait_status(history.url, 200, timeout=30)
                print(f"[chaos] history ready again {recovered:.1f} s after space was freed")
                await load.wait_acked(len(load.acked) + 50)
            await load.stop_sending()
            stored = await settle(load, history.url)
            check(fault, load, stored)
        finally:
            await load.shutdown()
            topology.stop()  # before the tmpfs goes away


async def test_disk_full_is_not_acked_and_recovers(
    make_topology: MakeTopology, private_rabbit: PrivateRabbit, vhost_url: str, tmp_path: Path
) -> None:
    await disk_full(make_topology, private_rabbit, vhost_url, tmp_path, 1, 4, "history disk full x1")


@pytest.mark.slow
async def test_disk_full_repeatedly_and_long(
    make_topology: MakeTopology, private_rabbit: PrivateRabbit, vhost_url: str, tmp_path: Path
) -> None:
    await disk_full(make_topology, private_rabbit, vhost_url, tmp_path, 3, 20, "history disk full x3, 20 s each")
