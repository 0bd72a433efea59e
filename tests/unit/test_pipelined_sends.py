"""A connection's sends are confirmed concurrently, and its replies still go out in the order of its frames."""

from __future__ import annotations

import asyncio

from services.chat.endpoints import _Replies
from services.chat.hub import Subscriber


class Sink:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, text: str) -> None:
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def confirmed(gate: asyncio.Event, reply: str) -> str:
    await gate.wait()
    return reply


async def test_replies_keep_the_frame_order_when_confirms_come_back_out_of_order() -> None:
    sink = Sink()
    subscriber = Subscriber("r", sink.send, sink.close, 100, False)
    subscriber.finish_sync()
    replies = _Replies(subscriber)
    gates = [asyncio.Event() for _ in range(3)]
    for i, gate in enumerate(gates):
        replies.publish(asyncio.create_task(confirmed(gate, f"ack{i}")))
        if i == 1:
            replies.reply("error-after-1")  # a refused frame between two sends waits for the first one's ack
    assert replies.in_flight == 3
    gates[2].set()
    gates[1].set()
    await asyncio.sleep(0.01)
    assert sink.sent == []  # the first is still unconfirmed: nothing may overtake its ack
    gates[0].set()
    await replies.settle()
    await asyncio.sleep(0.01)
    assert sink.sent == ["ack0", "ack1", "error-after-1", "ack2"] and replies.in_flight == 0
    replies.reply("direct")  # nothing in flight: straight through
    await asyncio.sleep(0.01)
    assert sink.sent[-1] == "direct"
    await subscriber.aclose()


async def test_a_send_that_fails_unexpectedly_closes_the_connection_1011() -> None:
    sink = Sink()
    subscriber = Subscriber("r", sink.send, sink.close, 100, False)
    subscriber.finish_sync()
    replies = _Replies(subscriber)

    async def broken() -> str:
        raise RuntimeError("bug")

    replies.publish(asyncio.create_task(broken()))
    await replies.settle()
    await asyncio.sleep(0.01)
    assert subscriber.close_code == 1011 and sink.closed == (1011, "internal error")
    await subscriber.aclose()
