"""Issue 10 item 3: frames and send buffers bounded in bytes, however far behind a reader falls.

Seen before: a slow `coalesce=1` reader got one 7,962,719-byte frame (the quote-heavy 4 KiB messages queued for
it, doubled by JSON escaping, joined into one frame). Here real replicas take a burst of such messages while a
real reader reads nothing, then the reader reads everything: every frame is under CHAT_MAX_FRAME_BYTES; and with
the default buffer bound the reader is closed 1013 (counted by bound in /metrics), never sent a frame its own
limit would refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest
import websockets

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient, socket_receiving_at_most

MAX_FRAME_BYTES = 256 * 1024
SENDERS = 4
SENDER_IN_FLIGHT = 16
PER_SENDER = 500  # 2000 frames of about 8.3 KiB: far more than the socket buffers on the way hold
READER_RECEIVE_BUFFER = 64 * 1024
QUOTES = '"' * 4090  # a 4 KiB text that JSON escaping doubles


async def burst(endpoints: Endpoints, room: str, per_sender: int = PER_SENDER) -> int:
    """Send SENDERS x per_sender quote-heavy messages as fast as the replicas confirm them; return how many."""
    senders = [ChatClient(endpoints.ws_urls, room, name=f"q{i}") for i in range(SENDERS)]
    for index, sender in enumerate(senders):
        await sender.connect(index)

    async def send_all(sender: ChatClient) -> None:
        # Sends are pipelined by the replica: a sender that never waits for its acks outpaces its own reading of
        # the room on a loaded machine and is closed 1013 itself. These senders are not the ones measured.
        await sender.send_acked([f"{n:05d}{QUOTES}" for n in range(per_sender)], timeout=120, window=SENDER_IN_FLIGHT)

    try:
        await asyncio.gather(*(send_all(sender) for sender in senders))
    finally:
        for sender in senders:
            await sender.close()
    return SENDERS * per_sender


@contextlib.asynccontextmanager
async def stalled_reader(endpoints: Endpoints, room: str) -> AsyncIterator[websockets.ClientConnection]:
    """A coalescing reader, synced, that reads nothing until the caller does. It accepts frames of any size
    (max_size=None), so a test sees the biggest frame the server sends."""
    url = f"{endpoints.ws_urls[0]}?{urlencode({'room': room, 'coalesce': '1'})}"
    sock = await socket_receiving_at_most(url, READER_RECEIVE_BUFFER)
    async with websockets.connect(url, sock=sock, max_size=None, max_queue=1) as ws:
        while '"type":"synced"' not in str(await ws.recv()):
            pass
        yield ws


async def read_all(ws: websockets.ClientConnection, expected: int) -> tuple[list[int], int]:
    """Frame sizes and message count, until ``expected`` messages or the close."""
    sizes: list[int] = []
    messages = 0
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):
        while messages < expected:
            raw = await asyncio.wait_for(ws.recv(), 30)
            assert isinstance(raw, str)
            sizes.append(len(raw.encode()))
            messages += raw.count('"type":"message"')
    return sizes, messages


@pytest.mark.topology_env({"CHAT_SEND_BUFFER_FRAMES": "100000", "CHAT_SEND_BUFFER_BYTES": str(256 * 1024 * 1024)})
@pytest.mark.timeout(300)
async def test_a_reader_far_behind_gets_coalesced_frames_under_the_bound(endpoints: Endpoints) -> None:
    # Buffers large enough to hold the whole burst: what is left to bound is the frame.
    async with stalled_reader(endpoints, "quotes") as ws:
        sent = await burst(endpoints, "quotes")
        sizes, messages = await read_all(ws, sent)
        close_code = ws.close_code
    print(f"\nbiggest frame {max(sizes):,} bytes over {len(sizes)} frames, {messages} messages, close {close_code}")
    assert messages == sent and close_code is None
    assert max(sizes) <= MAX_FRAME_BYTES
    assert max(sizes) > MAX_FRAME_BYTES // 2  # still coalesced: dozens of messages to a frame


@pytest.mark.timeout(300)
async def test_a_reader_behind_by_more_than_its_buffer_bytes_is_closed_1013(endpoints: Endpoints) -> None:
    async with stalled_reader(endpoints, "quotes") as ws:
        sent = await burst(endpoints, "quotes")
        sizes, messages = await read_all(ws, sent)
        close_code = ws.close_code
    print(f"\nbiggest frame {max(sizes):,} bytes over {len(sizes)} frames, {messages} messages, close {close_code}")
    assert close_code == 1013 and messages < sent
    assert max(sizes) <= MAX_FRAME_BYTES
    if endpoints.topology is None:
        return  # a cluster serves /metrics on the pods' metrics port only, not through the chat URL
    async with httpx.AsyncClient(base_url=endpoints.chat_urls[0]) as http:
        metrics = (await http.get("/metrics")).text
    closed = re.search(r'^durable_chat_slow_consumers_total\{limit="bytes"\} (\S+)$', metrics, re.MULTILINE)
    assert closed is not None and float(closed.group(1)) >= 1
