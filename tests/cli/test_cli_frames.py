"""Issue 10 item 3 through the CLI: `durable-chat tail` falls behind a burst of quote-heavy 4 KiB messages and
catches up without a frame over its 4 MiB limit (before: it closed 1009 five times and called each
"connection lost (no close frame)"), and it reports the close codes it does see."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import orjson
import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close

from services.cli.main import close_report
from tests.cli.test_cli import CLI, _env, room
from tests.e2e.conftest import Endpoints
from tests.e2e.test_frame_bounds import SENDERS, burst

# 1300 messages of about 8.3 KiB while tail is stopped: more than the kernel's socket buffers take, and (before
# the byte bounds) few enough for the replica to queue the rest under its 1000-frame bound and then send them
# joined in one frame of several MiB, over the CLI's 4 MiB limit.
PER_SENDER = 325


@pytest.mark.timeout(300)
async def test_tail_catches_up_after_a_burst_without_1009(shared_endpoints: Endpoints) -> None:
    endpoints = shared_endpoints
    r = room()
    process = await asyncio.create_subprocess_exec(
        CLI, "--url", endpoints.chat_urls[0], "tail", "--room", r, "--json", "-n", "0", "-v",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(), process_group=0,
        limit=1024 * 1024,
    )
    out: list[dict[str, object]] = []
    err: list[str] = []

    async def pump_out() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            out.append(orjson.loads(line))

    async def pump_err() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            err.append(line.decode())

    pumps = [asyncio.create_task(pump_out()), asyncio.create_task(pump_err())]
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not any("following" in line for line in err):
            assert asyncio.get_running_loop().time() < deadline, "".join(err)
            await asyncio.sleep(0.05)
        # A reader that stops reading (SIGSTOP: the whole process, a real stall) while the room gets a burst.
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            sent = await burst(endpoints, r, PER_SENDER)
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        deadline = asyncio.get_running_loop().time() + 120
        while len(out) < sent:
            assert asyncio.get_running_loop().time() < deadline, f"{len(out)} of {sent}: {''.join(err)}"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # anything doubled would show up by now
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        for pump in pumps:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
    stderr = "".join(err)
    print(f"\ntail stderr:\n{stderr}")
    expected = sorted(f"{n:05d}" for n in range(PER_SENDER) for _ in range(SENDERS))
    assert sorted(str(m["text"])[:5] for m in out) == expected
    assert len({m["id"] for m in out}) == len(out) == SENDERS * PER_SENDER
    assert "1009" not in stderr and "no close frame" not in stderr
    # Falling this far behind closes the slow consumer with 1013, and the CLI says so before resuming.
    assert "closed by the server (1013 slow consumer); resuming" in stderr


@pytest.mark.parametrize(
    ("rcvd", "sent", "rcvd_then_sent", "report"),
    [
        (Close(1013, "slow consumer"), Close(1013, "slow consumer"), True, "closed by the server (1013 slow consumer)"),
        (Close(1012, ""), None, None, "closed by the server (1012)"),
        (None, Close(1009, "frame exceeds limit"), None, "closed by this client (1009 frame exceeds limit)"),
        (Close(1009, "frame exceeds limit"), Close(1009, "frame exceeds limit"), False,
         "closed by this client (1009 frame exceeds limit)"),
        (None, None, None, "connection lost (no close frame)"),
    ],
)
def test_the_cli_reports_who_closed_with_which_code(
    rcvd: Close | None, sent: Close | None, rcvd_then_sent: bool | None, report: str
) -> None:
    assert close_report(ConnectionClosedError(rcvd, sent, rcvd_then_sent)) == report
