"""The seam: history, then pending live, then `synced`, with no gap and no duplicate (fake history)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from services.chat import sync as sync_module
from services.chat.history_client import HistoryUnavailable
from services.chat.hub import Entry, Subscriber
from services.chat.ring import RecentRing
from services.chat.sync import BacklogSync, Gap
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
        self.fail_after: int | None = None  # a stream that breaks after this many entries
        self.reads: list[str] = []
        self.caught_up = True  # the one replica has caught up with its queue
        self.answered = {0}

    def read(self) -> FakeHistory:
        """One replica: a read is answered by it, judged on whether it had caught up."""
        return self

    @property
    def all_caught_up(self) -> bool:
        return self.caught_up

    @property
    def any_caught_up(self) -> bool:
        return self.caught_up

    @property
    def lagging(self) -> bool:
        return not self.caught_up

    def store(self, *entries: Entry) -> None:
        self.stored = sorted(self.stored + list(entries), key=lambda e: e[0].id)

    async def latest(self, room: str, limit: int, token: str | None, before: str | None = None) -> list[Entry]:
        self._maybe_fail()
        return [e for e in self.stored if before is None or e[0].id < before][-limit:]

    async def lookup(self, room: str, ids: list[str], token: str | None) -> list[ChatMessage]:
        self._maybe_fail()
        return [m for m, _ in self.stored if m.id in ids]

    async def stream_after(self, room: str, after: str, token: str | None) -> AsyncIterator[Entry]:
        self._maybe_fail()
        self.reads.append(after)
        for count, entry in enumerate(e for e in self.stored if e[0].id > after):
            if count == self.fail_after:
                raise HistoryUnavailable("broke midway")
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
    assert frames[-1] == {"type": "synced", "last": live[1][0].id, "complete": True}


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
    assert frames[-1] == {"type": "synced", "last": live[0][0].id, "complete": False}


@pytest.mark.parametrize("fail", [False, True])
async def test_no_duplicates_between_backlog_and_pending(fail: bool) -> None:
    entries = [make("A") for _ in range(10)]
    frames = await run_sync(FakeHistory(entries, fail=fail), entries, entries[5:], Cursor((entries[2][0].id,)))
    sent = ids_of(frames)
    assert sent == [e[0].id for e in entries[3:]]


class Connection:
    """A subscriber after an incomplete sync, with its backfill running as the replica runs it."""

    def __init__(self, history: FakeHistory, ring: RecentRing, cursor: Cursor | None, limit: int = 100) -> None:
        self.recorder = Recorder()
        self.subscriber = Subscriber("r", self.recorder.send, self.recorder.close, 10_000, False)
        self.sync = BacklogSync(history, ring, 10_000, limit)  # type: ignore[arg-type]
        self.cursor = cursor

    async def connect(self) -> Gap:
        gap = await self.sync.deliver_backlog(self.subscriber, self.cursor, None)
        assert gap is not None
        return gap

    def live(self, *entries: Entry) -> None:
        for entry in entries:
            self.subscriber.deliver_live(*entry)

    async def frames(self) -> list[dict[str, object]]:
        await asyncio.sleep(0.01)
        await self.subscriber.aclose()
        return self.recorder.frames


@pytest.fixture(autouse=True)
def instant_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_module, "BACKFILL_RETRY_FIRST_S", 0.001)
    monkeypatch.setattr(sync_module, "BACKFILL_RETRY_MAX_S", 0.002)


async def test_after_an_outage_the_backfill_sends_what_the_cursor_lacks_once_then_synced_complete() -> None:
    seen = make("A")
    missed = [make("A") for _ in range(50)]  # stored while the client was away, beyond the ring
    history = FakeHistory([seen, *missed], fail=True)
    connection = Connection(history, RecentRing(10_000), Cursor((seen[0].id,)))
    gap = await connection.connect()
    live = [make("B") for _ in range(5)]
    connection.live(*live)
    history.store(*live)  # history stores the live ones too: they must not come twice
    history.fail = False
    assert await connection.sync.backfill(connection.subscriber, gap, None)
    frames = await connection.frames()
    ids = ids_of(frames)
    assert sorted(ids) == sorted(e[0].id for e in missed + live)
    assert len(ids) == len(set(ids))
    synced = [f for f in frames if f["type"] == "synced"]
    assert synced == [
        {"type": "synced", "last": None, "complete": False},
        {"type": "synced", "last": max(ids), "complete": True},
    ]


async def test_a_backfill_that_breaks_midway_resumes_without_repeating() -> None:
    seen = make("A")
    missed = [make("A") for _ in range(30)]
    history = FakeHistory([seen, *missed], fail=True)
    connection = Connection(history, RecentRing(10_000), Cursor((seen[0].id,)))
    gap = await connection.connect()
    history.fail, history.fail_after = False, 12
    backfill = asyncio.create_task(connection.sync.backfill(connection.subscriber, gap, None))
    await asyncio.sleep(0.05)
    history.fail_after = None
    assert await asyncio.wait_for(backfill, 5)
    ids = ids_of(await connection.frames())
    assert ids == [e[0].id for e in missed]


async def test_a_sync_that_breaks_midway_is_incomplete_and_the_backfill_sends_only_the_rest() -> None:
    seen = make("A")
    missed = [make("A") for _ in range(20)]
    history = FakeHistory([seen, *missed])
    history.fail_after = 8
    connection = Connection(history, RecentRing(10_000), Cursor((seen[0].id,)))
    gap = await connection.connect()
    assert gap.history_through == missed[6][0].id  # the stream starts with `seen` itself
    history.fail_after = None
    assert await connection.sync.backfill(connection.subscriber, gap, None)
    frames = await connection.frames()
    assert ids_of(frames) == [e[0].id for e in missed]
    assert [f["complete"] for f in frames if f["type"] == "synced"] == [False, True]


async def test_without_a_cursor_the_backfill_completes_the_newest_as_of_the_connect() -> None:
    old = [make("A") for _ in range(10)]
    recent = [make("A") for _ in range(2)]
    ring = RecentRing(10_000)
    for entry in recent:
        ring.add(*entry)
    history = FakeHistory(old + recent, fail=True)
    connection = Connection(history, ring, None, limit=5)
    await asyncio.sleep(0.002)  # the connect comes a millisecond after the last of them
    gap = await connection.connect()
    later = make("A")  # after the connect: not part of what it wanted; it comes live
    connection.live(later)
    history.store(later)
    history.fail = False
    assert await connection.sync.backfill(connection.subscriber, gap, None)
    ids = ids_of(await connection.frames())
    # The ring's two, the live one, then the three older ones that complete the newest five as of the connect.
    assert ids == [e[0].id for e in recent] + [later[0].id] + [e[0].id for e in old[-3:]]


async def test_a_gap_held_too_long_on_a_busy_room_closes_1012(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync_module, "BACKFILL_MAX_TRACKED_IDS", 10)
    history = FakeHistory([], fail=True)
    connection = Connection(history, RecentRing(10_000), None)
    gap = await connection.connect()
    connection.live(*(make("A") for _ in range(11)))
    assert not await connection.sync.backfill(connection.subscriber, gap, None)
    assert connection.subscriber.close_code == 1012


async def test_a_sync_while_history_is_behind_its_queue_is_incomplete_and_backfilled_once_it_catches_up() -> None:
    seen = make("A")
    late = [make("B") for _ in range(5)]  # ids below the last stored one, stored only after the sync read
    stored = [make("A") for _ in range(10)]
    history = FakeHistory([seen, *stored])
    history.caught_up = False
    recorder = Recorder()
    subscriber = Subscriber("r", recorder.send, recorder.close, 10_000, False)
    sync = BacklogSync(history, RecentRing(10_000), 10_000, 100)  # type: ignore[arg-type]
    gap = await sync.deliver_backlog(subscriber, Cursor((seen[0].id,)), None)
    assert gap is not None and gap.reason == "lagging"
    backfill = asyncio.create_task(sync.backfill(subscriber, gap, None))
    await asyncio.sleep(0.05)
    assert not backfill.done()  # it waits for history to catch up
    history.store(*late)
    history.caught_up = True
    assert await asyncio.wait_for(backfill, 5)
    await asyncio.sleep(0.01)
    await subscriber.aclose()
    frames = recorder.frames
    assert not [f for f in frames if f["type"] == "error"]  # behind is not unavailable
    assert sorted(ids_of(frames)) == sorted(e[0].id for e in stored + late)
    assert len(ids_of(frames)) == len(set(ids_of(frames)))
    assert [f["complete"] for f in frames if f["type"] == "synced"] == [False, True]


class ReplicaAnswer(FakeHistory):
    """One read of two replicas, one of them behind its queue: answered by that one (``lagging``) or not."""

    def __init__(self, stored: list[Entry], lagging: bool) -> None:
        super().__init__(stored)
        self._lagging = lagging

    @property
    def all_caught_up(self) -> bool:
        return False

    @property
    def any_caught_up(self) -> bool:
        return True

    @property
    def lagging(self) -> bool:
        return self._lagging


class TwoReplicas(FakeHistory):
    """A caught-up replica that does not answer the first ``down_reads`` reads, and one behind its queue that
    answers them instead, lacking what it has not stored yet (``behind``)."""

    def __init__(self, stored: list[Entry], behind: list[Entry], down_reads: int) -> None:
        super().__init__(stored)
        self.behind = behind
        self.down_reads = down_reads

    def read(self) -> FakeHistory:
        lagging = self.down_reads > 0
        self.down_reads = max(0, self.down_reads - 1)
        return ReplicaAnswer(self.stored if lagging else self.stored + self.behind, lagging)


async def test_a_backfill_answered_by_a_replica_behind_its_queue_reads_again_until_a_caught_up_one_answers() -> None:
    seen = make("A")
    stored = [make("A") for _ in range(10)]
    behind = [make("B") for _ in range(4)]  # not yet stored by the lagging replica
    history = TwoReplicas([seen, *stored], sorted(behind, key=lambda e: e[0].id), down_reads=3)
    connection = Connection(history, RecentRing(10_000), Cursor((seen[0].id,)))
    gap = await connection.connect()  # read 1, from the lagging replica
    assert gap.reason == "lagging"
    assert await connection.sync.backfill(connection.subscriber, gap, None)  # reads 2, 3 lagging; then complete
    frames = await connection.frames()
    assert sorted(ids_of(frames)) == sorted(e[0].id for e in stored + behind)
    assert len(ids_of(frames)) == len(set(ids_of(frames)))
    assert [f["complete"] for f in frames if f["type"] == "synced"] == [False, True]
