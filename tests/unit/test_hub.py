"""Fan-out and slow-consumer handling, with a fake socket."""

from __future__ import annotations

import asyncio

from services.chat.hub import CLOSE_SLOW_CONSUMER, Hub, Subscriber
from services.common.schema import ChatMessage


class FakeSocket:
    def __init__(self, stalled: bool = False) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.gate = asyncio.Event()
        if not stalled:
            self.gate.set()

    async def send(self, text: str) -> None:
        await self.gate.wait()
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def msg(i: int, room: str = "r") -> tuple[ChatMessage, str]:
    message = ChatMessage(f"01{i:024d}", "O", room, None, str(i), i)
    return message, message.to_frame()


async def test_one_encoded_frame_reaches_every_member_of_the_room_only() -> None:
    hub = Hub()
    sockets = [FakeSocket() for _ in range(3)]
    subs = [Subscriber(room, s.send, s.close, 100, False) for room, s in zip("rrx", sockets, strict=True)]
    for sub in subs:
        sub.finish_sync()
        hub.subscribe(sub)
    assert hub.dispatch([msg(1)]) == 2
    await asyncio.sleep(0.01)
    assert sockets[0].sent == sockets[1].sent == [msg(1)[1]] and sockets[2].sent == []
    assert sockets[0].sent[0] is sockets[1].sent[0]  # the same string object: encoded once
    for sub in subs:
        await sub.aclose()


async def test_pending_holds_live_messages_until_sync_finishes() -> None:
    sock = FakeSocket()
    sub = Subscriber("r", sock.send, sock.close, 100, False)
    sub.deliver_live(*msg(1))
    await asyncio.sleep(0.01)
    assert sock.sent == [] and [m.text for m, _ in sub.finish_sync()] == ["1"]
    sub.deliver_live(*msg(2))
    await asyncio.sleep(0.01)
    assert sock.sent == [msg(2)[1]]
    await sub.aclose()


async def test_a_stalled_client_is_closed_1013_with_bounded_memory() -> None:
    sock = FakeSocket(stalled=True)
    sub = Subscriber("r", sock.send, sock.close, 50, False)
    sub.finish_sync()
    for i in range(1000):
        sub.push(msg(i)[1])
        assert sub.buffered <= 50
    assert sub.closed and sub.close_code == CLOSE_SLOW_CONSUMER
    sock.gate.set()
    await asyncio.sleep(0.01)
    assert sock.closed is not None and sock.closed[0] == CLOSE_SLOW_CONSUMER
    await sub.aclose()


async def test_the_close_frame_goes_out_when_the_overflow_happens_mid_send() -> None:
    # The usual case in production: the writer is blocked sending to the slow client when its buffer overflows.
    sock = FakeSocket(stalled=True)
    sub = Subscriber("r", sock.send, sock.close, 50, False)
    sub.finish_sync()
    sub.push(msg(0)[1])
    await asyncio.sleep(0.01)  # the writer is now blocked sending frame 0
    for i in range(1, 100):
        sub.push(msg(i)[1])
    assert sub.closed and sub.buffered == 0
    sock.gate.set()
    await asyncio.sleep(0.01)
    assert sock.closed is not None and sock.closed[0] == CLOSE_SLOW_CONSUMER
    assert sock.sent == [msg(0)[1]]
    await sub.aclose()


async def test_a_shutdown_close_during_a_send_reaches_the_client() -> None:
    sock = FakeSocket(stalled=True)
    sub = Subscriber("r", sock.send, sock.close, 50, False)
    sub.finish_sync()
    sub.push(msg(0)[1])
    await asyncio.sleep(0.01)
    sub.close_soon(1012, "broker connection lost")
    sock.gate.set()
    await asyncio.sleep(0.01)
    assert sock.closed == (1012, "broker connection lost")
    await sub.aclose()


async def test_coalescing_joins_queued_frames_with_newlines() -> None:
    sock = FakeSocket(stalled=True)
    sub = Subscriber("r", sock.send, sock.close, 100, True)
    sub.finish_sync()
    sub.push(msg(0)[1])
    await asyncio.sleep(0.01)  # the writer is now blocked sending frame 0
    for i in range(1, 4):
        sub.push(msg(i)[1])
    sock.gate.set()
    await asyncio.sleep(0.01)
    assert sock.sent == [msg(0)[1], "\n".join(msg(i)[1] for i in range(1, 4))]
    await sub.aclose()


async def test_paced_pushes_wait_for_the_client() -> None:
    sock = FakeSocket(stalled=True)
    sub = Subscriber("r", sock.send, sock.close, 10, False)

    async def pump() -> None:
        for i in range(30):
            await sub.push_paced(msg(i)[1])

    pusher = asyncio.create_task(pump())
    await asyncio.sleep(0.05)
    assert not pusher.done() and not sub.closed and sub.buffered <= 10
    sock.gate.set()
    await asyncio.wait_for(pusher, 2)
    await asyncio.sleep(0.01)
    assert len(sock.sent) == 30 and not sub.closed
    await sub.aclose()


async def test_broadcast_reaches_every_member_of_the_room_but_the_excluded_one() -> None:
    hub = Hub()
    sockets = [FakeSocket() for _ in range(4)]
    subs = [Subscriber(room, s.send, s.close, 100, False) for room, s in zip("rrrx", sockets, strict=True)]
    for sub in subs:
        hub.subscribe(sub)
    subs[0].finish_sync()  # a synced member and members still receiving their backlog get it alike
    frame = '{"type":"presence"}'
    assert hub.broadcast("r", frame, exclude=subs[1]) == 2
    assert hub.broadcast("nobody-here", frame) == 0
    await asyncio.sleep(0.01)
    assert sockets[0].sent == sockets[2].sent == [frame]
    assert sockets[1].sent == [] and sockets[3].sent == []
    for sub in subs:
        await sub.aclose()
