"""Fan-out and slow-consumer handling, with a fake socket."""

from __future__ import annotations

import asyncio

from services.chat.hub import CLOSE_SLOW_CONSUMER, Hub, Subscriber
from services.chat.wire import encode_text
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


class FakeTransport:
    """What a direct subscriber writes to (services.chat.wire.FastSend): every write kept, nothing buffered."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.open = True
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def room_to_write(self) -> None:
        await asyncio.sleep(0)


def direct_subscriber(transport: FakeTransport, hub: Hub) -> Subscriber:
    sock = FakeSocket()
    sub = Subscriber("r", sock.send, sock.close, 100, False, transport)  # type: ignore[arg-type]
    hub.subscribe(sub)
    return sub


async def test_a_synced_direct_subscriber_gets_a_rooms_batch_in_one_write_encoded_once() -> None:
    hub = Hub()
    transports = [FakeTransport(), FakeTransport()]
    subs = [direct_subscriber(t, hub) for t in transports]
    for sub in subs:
        sub.finish_sync()
    assert hub.dispatch([msg(1), msg(2, room="x"), msg(3)]) == 4
    expected = encode_text(msg(1)[1]) + encode_text(msg(3)[1])
    assert transports[0].writes == transports[1].writes == [expected]
    assert transports[0].writes[0] is transports[1].writes[0]  # the same bytes object for every member


async def test_a_direct_subscriber_still_syncing_holds_the_batch_aside() -> None:
    hub = Hub()
    transport = FakeTransport()
    sub = direct_subscriber(transport, hub)
    hub.dispatch([msg(1), msg(2)])
    assert transport.writes == []
    assert [m.text for m, _ in sub.finish_sync()] == ["1", "2"]


async def test_a_batch_repeating_an_id_the_backlog_sent_is_delivered_without_it() -> None:
    hub = Hub()
    transport = FakeTransport()
    sub = direct_subscriber(transport, hub)
    sub.finish_sync(already_sent={msg(2)[0].id}, window_s=60)
    hub.dispatch([msg(1), msg(2), msg(3)])
    assert b"".join(transport.writes) == encode_text(msg(1)[1]) + encode_text(msg(3)[1])
    transport.writes.clear()
    hub.dispatch([msg(4), msg(5)])  # nothing to drop: one write again
    assert transport.writes == [encode_text(msg(4)[1]) + encode_text(msg(5)[1])]


async def test_live_ids_of_a_batch_are_tracked_for_the_backfill() -> None:
    hub = Hub()
    sub = direct_subscriber(FakeTransport(), hub)
    sub.finish_sync()
    tracked: set[str] = set()
    sub.track_live(tracked)
    hub.dispatch([msg(1), msg(2)])
    assert tracked == {msg(1)[0].id, msg(2)[0].id}


async def test_a_direct_subscriber_whose_connection_closed_stops_writing() -> None:
    hub = Hub()
    transport = FakeTransport()
    sub = direct_subscriber(transport, hub)
    sub.finish_sync()
    transport.open = False
    hub.dispatch([msg(1)])
    assert transport.writes == [] and sub.closed and sub.close_code is None
