"""Issue 10 item 3 through the CLI: `durable-chat tail` falls behind a burst of quote-heavy 4 KiB messages and
catches up without a frame over its 4 MiB limit (before: it closed 1009 five times and called each
"connection lost (no close frame)"), and it reports the close codes it does see."""

from __future__ import annotations

import asyncio
import signal

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Close

from services.cli.main import close_report
from tests.cli.test_cli import room
from tests.e2e.conftest import Endpoints
from tests.e2e.test_frame_bounds import SENDERS, burst
from tests.support.tail import Tail

# 1300 messages of about 8.3 KiB while tail is stopped: more than the kernel's socket buffers take, and (before
# the byte bounds) few enough for the replica to queue the rest under its 1000-frame bound and then send them
# joined in one frame of several MiB, over the CLI's 4 MiB limit.
PER_SENDER = 325


@pytest.mark.timeout(300)
async def test_tail_catches_up_after_a_burst_without_1009(shared_endpoints: Endpoints) -> None:
    endpoints = shared_endpoints
    r = room()
    async with Tail(endpoints.chat_urls[0], "--room", r, "-n", "0") as tail:
        await tail.until(lambda: tail.notes("following") == 1)
        # A reader that stops reading (SIGSTOP: the whole process, a real stall) while the room gets a burst.
        tail.signal(signal.SIGSTOP)
        try:
            sent = await burst(endpoints, r, PER_SENDER)
        finally:
            tail.signal(signal.SIGCONT)
        await tail.until(lambda: len(tail.out) >= sent, limit_s=120)
        await asyncio.sleep(0.5)  # anything doubled would show up by now
    stderr = "".join(tail.err)
    print(f"\ntail stderr:\n{stderr}")
    expected = sorted(f"{n:05d}" for n in range(PER_SENDER) for _ in range(SENDERS))
    assert sorted(text[:5] for text in tail.texts) == expected
    assert len({m["id"] for m in tail.out}) == len(tail.out) == SENDERS * PER_SENDER
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
