"""The seam: history, then pending live, then `synced`, with no gap and no duplicate (fake history)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from services.chat.history_client import HistoryUnavailable
from services.chat.hub import Entry, Subscriber
from services.chat.ring import RecentRing
from services.chat.sync import BacklogSync
from services.common.ids import UlidGenerator, ulid_floor
from services.common.schema import ChatMessage, Cursor

gen = UlidGenerator()


def make(origin: str, room: str = "r") -> Entry:
    msg_id, ts = gen.mint()
    message = ChatMessage(msg_id, origin, room, None, msg_id[-4:], ts)
    return message, message.to_frame()


class FakeHistory:
    def __init__(self, stored: list[Entry], fail: bool = False) -> None:
        self.stored = sorted(stored, key=lambda e: e[0].id)
        self.fail = fail
        self.reads: list[str] = []

    async def latest(self, room: str, limit: int, token: str | None) -> list[Entry]:
        self._maybe_fail()
        return self.stored[-limit:]

    async def lookup(self, room: str, ids: list[str], token: str | None) -> list[ChatMessage]:
        self._maybe_fail()
        return [m for m, _ in self.stored if m.id in ids]

    async def stream_after(self, room: str, after: str, token: str | None) -> AsyncIterator[Entry]:
        self._maybe_fail()
        self.reads.append(after)
        for entry in self.stored:
            if entry[0].id > after:
                yield entry

    def _maybe_fail(self) -> None:
        if self.fail:
            raise HistoryUnavailable("down")


class Recorder:
    def __init__(self) -> None:
        self.frames: list[dict[str, object]] = []

    async def send(self, text: str) -> None:
        self.frames.append(orjson.loads(text))

    async def close(self, code: int, reason: str) -> None:
        pass


async def run_sync(
    history: FakeHistory, ring_entries: list[Entry], pending: list[Entry], cursor: Cursor | None, limit: int = 100
) -> list[dict[str, object]]:
    ring = RecentRing(10_000)
    for entry in ring_entries:
        ring.add(*entry)
    recorder = Recorder()
    subscriber = Subscriber("r", recorder.send, recorder.close, 10_000, False)
    for entry in pending:
        subscriber.deliver_live(*entry)
    await BacklogSync(history, ring, 10_000, limit).deliver_backlog(subscriber, cursor, None)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    await subscriber.aclose()
    return recorder.frames


def ids_of(frames: list[dict[str, object]]) -> list[object]:
    return [f["id"] for f in frames if f["type"] == "message"]


async def test_without_cursor_newest_history_and_ring_then_pending_once_then_synced() -> None:
    old = [make("A") for _ in range(5)]
    recent = [make("B") for _ in range(3)]  # delivered here, not yet stored
    live = [recent[2], make("A")]  # one repeats the ring, one is new
    frames = await run_sync(FakeHistory(old + recent[:1]), recent, live, None, limit=6)
    expected = [e[0].id for e in (old + recent)[-6:]] + [live[1][0].id]
    assert ids_of(frames) == expected
    assert frames[-1] == {"type": "synced", "last": live[1][0].id}


async def test_cursor_sends_exactly_what_the_client_has_not_seen() -> None:
    a = [make("A") for _ in range(4)]
    b = [make("B") for _ in range(4)]
    stored = sorted(a + b, key=lambda e: e[0].id)
    cursor = Cursor((a[1][0].id, b[2][0].id))
    history = FakeHistory(stored)
    frames = await run_sync(history, [], [], cursor)
    expected = sorted([e[0].id for e in a[2:] + b[3:]])
    assert ids_of(frames) == expected
    assert history.reads == [ulid_floor(cursor.newest_ts - 10_000)]


async def test_a_message_unknown_to_history_is_recovered_from_the_ring() -> None:
    seen = make("A")
    unstored = make("B")
    frames = await run_sync(FakeHistory([seen]), [seen, unstored], [], Cursor((seen[0].id,)))
    assert ids_of(frames) == [unstored[0].id]


async def test_history_down_gives_an_error_then_the_ring_then_synced() -> None:
    ring_entries = [make("A") for _ in range(3)]
    live = [make("A")]
    frames = await run_sync(FakeHistory([], fail=True), ring_entries, live, None)
    assert frames[0]["type"] == "error" and frames[0]["code"] == "history_unavailable"
    assert ids_of(frames) == [e[0].id for e in ring_entries + live]
    assert frames[-1]["type"] == "synced"


@pytest.mark.parametrize("fail", [False, True])
async def test_no_duplicates_between_backlog_and_pending(fail: bool) -> None:
    entries = [make("A") for _ in range(10)]
    frames = await run_sync(FakeHistory(entries, fail=fail), entries, entries[5:], Cursor((entries[2][0].id,)))
    sent = ids_of(frames)
    assert sent == [e[0].id for e in entries[3:]]
