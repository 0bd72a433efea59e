"""The below-ASGI fan-out path (services/chat/wire.py) against a real uvicorn server and real WebSocket clients.

Each test serves a small ASGI app in-process on a free port: it accepts, builds a ``Subscriber`` the way the
replica does, and hands it to the test, which pushes frames and watches what a ``websockets`` client receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
import websockets

from services.chat.hub import CLOSE_SLOW_CONSUMER, Hub, SendBounds, Subscriber
from services.chat.wire import FastSendProtocol, encode_text, fast_send
from services.common.schema import ChatMessage

BUFFER_BYTES = 64 * 1024


@dataclass
class Served:
    url: str
    server: uvicorn.Server
    subscribers: asyncio.Queue[Subscriber] = field(default_factory=asyncio.Queue)
    overflows: list[str] = field(default_factory=list)


def _app(served: list[Served], max_frames: int) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})

        async def send_text(text: str) -> None:
            await send({"type": "websocket.send", "text": text})

        async def close(code: int, reason: str) -> None:
            await send({"type": "websocket.close", "code": code, "reason": reason})

        subscriber = Subscriber("r", send_text, close, max_frames, False, fast_send(scope))
        subscriber.bound(SendBounds(BUFFER_BYTES, 16 * 1024), served[0].overflows.append)
        subscriber.finish_sync()
        served[0].subscribers.put_nowait(subscriber)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            await subscriber.aclose()

    return app


@contextlib.asynccontextmanager
async def serving(ws: type[asyncio.Protocol] | str = FastSendProtocol, deflate: bool = False,
                  max_frames: int = 1000) -> AsyncIterator[Served]:
    holder: list[Served] = []
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        _app(holder, max_frames), ws=ws, ws_per_message_deflate=deflate, lifespan="off", log_config=None,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    served = Served(f"ws://127.0.0.1:{sock.getsockname()[1]}/ws", server)
    holder.append(served)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:  # noqa: ASYNC110  # uvicorn offers no started event
            await asyncio.sleep(0.01)
        yield served
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def stalled_client(url: str) -> websockets.ClientConnection:
    """A client that reads nothing until told: a tiny receive buffer, and the library stops at one frame."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return await websockets.connect(url, sock=sock, max_queue=1, max_size=None, compression=None)


def entry(i: int, text: str) -> tuple[ChatMessage, str]:
    message = ChatMessage(f"01{i:024d}", "O", "r", None, text, i)
    return message, message.to_frame()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_a_text_frame_header_carries_the_payload_length(size: int) -> None:
    # Parsed back by websockets' own frame reader, as a client would.
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    payload = "é" * (size // 2) + "x" * (size % 2)
    reader = StreamReader()
    reader.feed_data(encode_text(payload))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data.decode() == payload


async def test_every_frame_of_a_batch_arrives_whole_and_in_order() -> None:
    async with serving() as served, websockets.connect(served.url, max_size=None, compression=None) as client:
        subscriber = await served.subscribers.get()
        assert subscriber.direct
        hub = Hub(SendBounds(1024 * 1024, 256 * 1024))
        hub.subscribe(subscriber)
        texts = ["a", "é" * 100, "x" * 130, "y" * 70_000]
        assert hub.dispatch([entry(i, text) for i, text in enumerate(texts)]) == len(texts)
        subscriber.push('{"type":"ack"}')
        for i, text in enumerate(texts):
            assert await client.recv() == entry(i, text)[1]
        assert await client.recv() == '{"type":"ack"}'
        hub.unsubscribe(subscriber)


async def test_another_protocol_class_falls_back_to_the_asgi_send() -> None:
    async with serving(ws="websockets-sansio") as served, websockets.connect(served.url) as client:
        subscriber = await served.subscribers.get()
        assert not subscriber.direct
        subscriber.push('{"type":"ack"}')
        assert await client.recv() == '{"type":"ack"}'


async def test_a_connection_with_compression_falls_back_to_the_asgi_send() -> None:
    async with serving(deflate=True) as served, websockets.connect(served.url, compression="deflate") as client:
        subscriber = await served.subscribers.get()
        assert not subscriber.direct  # every frame would have to be compressed for this client
        subscriber.push('{"type":"ack"}')
        assert await client.recv() == '{"type":"ack"}'


async def test_close_soon_sends_the_close_frame_after_the_data_and_then_writes_nothing() -> None:
    async with serving() as served, websockets.connect(served.url, compression=None) as client:
        subscriber = await served.subscribers.get()
        subscriber.push('{"n":1}')
        subscriber.close_soon(1012, "server shutting down")
        subscriber.push('{"n":2}')  # after the close: dropped
        assert await client.recv() == '{"n":1}'
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "server shutting down")


@pytest.mark.parametrize(("max_frames", "text_bytes", "limit"), [(1000, 3500, "bytes"), (50, 100, "frames")])
async def test_a_client_that_stops_reading_is_closed_1013_within_the_bounds(
    max_frames: int, text_bytes: int, limit: str
) -> None:
    async with serving(max_frames=max_frames) as served:
        client = await stalled_client(served.url)
        subscriber = await served.subscribers.get()
        frame = '"' + "x" * text_bytes + '"'
        pushed = 0
        while not subscriber.closed and pushed < 200_000:
            subscriber.push(frame)
            pushed += 1
            assert subscriber.buffered_bytes <= BUFFER_BYTES and subscriber.buffered <= max_frames
            await asyncio.sleep(0)  # let the socket take what it can
        assert subscriber.close_code == CLOSE_SLOW_CONSUMER and served.overflows == [limit]
        received = 0
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                assert await asyncio.wait_for(client.recv(), 10) == frame
                received += 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == CLOSE_SLOW_CONSUMER
        assert 0 < received < pushed  # what the buffers held went out before the close; the rest was not queued


async def test_a_paced_push_waits_until_the_transport_drains() -> None:
    async with serving() as served:
        client = await stalled_client(served.url)
        subscriber = await served.subscribers.get()
        frame = '"' + "x" * 3000 + '"'
        while subscriber.buffered_bytes < BUFFER_BYTES // 2:
            subscriber.push(frame)
            await asyncio.sleep(0)
        paced = asyncio.create_task(subscriber.push_paced('"last"'))
        await asyncio.sleep(0.2)
        assert not paced.done()  # the backlog goes at the client's pace: half the buffer is already waiting
        received: list[str | bytes] = []
        while not received or received[-1] != '"last"':
            received.append(await asyncio.wait_for(client.recv(), 10))
        assert paced.done() and not subscriber.closed and set(received[:-1]) == {frame}
        await client.close()


async def test_server_shutdown_closes_direct_clients_1012() -> None:
    async with serving() as served:
        client = await websockets.connect(served.url, compression=None)
        subscriber = await served.subscribers.get()
        subscriber.push('{"n":1}')
        served.server.should_exit = True  # uvicorn's own graceful shutdown closes every WebSocket with 1012
        assert await client.recv() == '{"n":1}'
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        subscriber.push('{"n":2}')  # the transport is closing: nothing is written, nothing raises
        assert subscriber.closed
