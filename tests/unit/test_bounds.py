"""Issue 10 items 2 and 3: every per-room and per-key structure of a replica is bounded in time and size, and
every frame and send buffer in bytes. Clocks are injected where time matters; the timers run on a real loop."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest
import structlog

from services.chat.bounds import HighWater
from services.chat.hub import CLOSE_SLOW_CONSUMER, Hub, SendBounds, Subscriber, utf8_size
from services.chat.idempotency import IdempotencyCache
from services.chat.limits import ConnectionCounter
from services.chat.ring import RecentRing
from services.chat.settings import load_config
from services.common.schema import ChatMessage
from services.common.settings import ConfigError
from tests.unit.test_hub import FakeSocket

ROOMS = 30_000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def message(i: int, room: str | None = None, text: str | None = None) -> tuple[ChatMessage, str]:
    m = ChatMessage(f"01{i:024d}", "O", room or f"room-{i}", "a", text if text is not None else str(i), i)
    return m, m.to_frame()


# --- the recent ring ---------------------------------------------------------------------------------------------


def test_one_add_drops_every_room_past_the_window_not_only_its_own() -> None:
    clock = Clock()
    ring = RecentRing(10_000, clock=clock)
    for i in range(ROOMS):
        ring.add(*message(i))
    assert len(ring) == ROOMS and ring.rooms == ROOMS
    clock.now += 10.001
    ring.add(*message(ROOMS, room="elsewhere"))
    assert (len(ring), ring.rooms) == (1, 1)
    assert [m.room for m, _ in ring.snapshot("elsewhere")] == ["elsewhere"]


def test_entries_live_at_least_the_window() -> None:
    clock = Clock()
    ring = RecentRing(10_000, clock=clock)
    ring.add(*message(1, room="r"))
    clock.now += 9.999
    ring.add(*message(2, room="other"))
    assert [m.id for m, _ in ring.snapshot("r")] == [message(1)[0].id]


async def test_a_timer_empties_the_ring_when_traffic_stops() -> None:
    ring = RecentRing(50)  # 50 ms, real clock and loop: nothing touches the ring after the burst
    for i in range(2000):
        ring.add(*message(i))
    await asyncio.sleep(0.2)
    assert (len(ring), ring.rooms, ring.bytes) == (0, 0, 0)
    ring.add(*message(1))  # and it re-arms for the next burst
    await asyncio.sleep(0.2)
    assert len(ring) == 0
    ring.close()


def test_the_ring_is_capped_in_entries_counting_what_it_drops() -> None:
    evicted: list[int] = []
    ring = RecentRing(600_000, clock=Clock(), max_entries=1000, on_evict=evicted.append)
    with structlog.testing.capture_logs() as logs:
        for i in range(5000):
            ring.add(*message(i, room=f"r{i % 7}"))
    assert len(ring) == 1000 and sum(evicted) == 4000
    assert len([entry for entry in logs if entry["log_level"] == "warning"]) == 1  # once, not per entry
    kept = sorted(m.id for r in range(7) for m, _ in ring.snapshot(f"r{r}"))
    assert kept == [message(i)[0].id for i in range(4000, 5000)]  # the newest stay


def test_the_ring_is_capped_in_bytes() -> None:
    evicted: list[int] = []
    cap = 1024 * 1024
    ring = RecentRing(600_000, clock=Clock(), max_bytes=cap, on_evict=evicted.append)
    for i in range(2000):
        ring.add(*message(i, text='"' * 4000))
        assert ring.bytes <= cap
    assert sum(evicted) > 0 and len(ring) + sum(evicted) == 2000


# --- the idempotency cache ---------------------------------------------------------------------------------------


async def test_a_confirm_drops_every_key_past_the_window() -> None:
    clock = Clock()
    cache = IdempotencyCache(600, clock=clock)
    for i in range(ROOMS):
        cache.confirm((f"room-{i}", "a", "k"), f"id{i}")
    clock.now += 600.001
    cache.confirm(("elsewhere", "a", "k"), "new")
    assert len(cache) == 1 and cache.lookup(("elsewhere", "a", "k")) == "new"


async def test_a_timer_empties_the_cache_when_sends_stop() -> None:
    cache = IdempotencyCache(0.05)
    for i in range(2000):
        cache.confirm((f"room-{i}", "a", "k"), f"id{i}")
    await asyncio.sleep(0.2)
    assert len(cache) == 0
    cache.close()


async def test_the_cache_is_capped_in_keys_oldest_first() -> None:
    evicted: list[int] = []
    cache = IdempotencyCache(600, clock=Clock(), max_keys=1000, on_evict=evicted.append)
    with structlog.testing.capture_logs() as logs:
        for i in range(1500):
            cache.confirm((f"room-{i}", "a", "k"), f"id{i}")
    assert len(cache) == 1000 and sum(evicted) == 500
    assert len([entry for entry in logs if entry["log_level"] == "warning"]) == 1  # once, not per key
    assert cache.lookup(("room-499", "a", "k")) is None and cache.lookup(("room-500", "a", "k")) == "id500"


# --- limits and the hub's room map -------------------------------------------------------------------------------


def test_connection_counts_hold_only_addresses_with_open_connections() -> None:
    counter = ConnectionCounter(limit=2)
    addresses = [f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}" for i in range(ROOMS)]
    for address in addresses:
        assert counter.acquire(address)
    for address in addresses:
        counter.release(address)
    assert len(counter) == 0


async def test_the_hub_drops_a_room_with_its_last_subscriber() -> None:
    hub = Hub()
    socket = FakeSocket()
    subscribers = [Subscriber(f"room-{i}", socket.send, socket.close, 10, False) for i in range(3000)]
    for subscriber in subscribers:
        hub.subscribe(subscriber)
    assert hub.rooms == 3000
    for subscriber in subscribers:
        hub.unsubscribe(subscriber)
        await subscriber.aclose()
    assert hub.rooms == 0 and len(hub) == 0


def test_a_map_that_held_many_keys_is_compacted_once_most_are_gone() -> None:
    high = HighWater()
    rooms: dict[str, int] = {}
    for i in range(ROOMS):
        rooms[f"room-{i}"] = i
        high.note(len(rooms))
    peak_size = sys.getsizeof(rooms)  # about 1 MiB, which CPython keeps when the keys are deleted
    for i in range(ROOMS - 10):
        del rooms[f"room-{i}"]
        rooms = high.shrink(rooms)
    assert len(rooms) == 10 and sys.getsizeof(rooms) < peak_size / 50


# --- frames and send buffers in bytes ----------------------------------------------------------------------------


def quoted(i: int) -> str:
    """A quote-heavy 4 KiB message frame: JSON escaping doubles it to about 8 KiB."""
    return message(i, room="r", text='"' * 4096)[1]


async def stalled_subscriber(bounds: SendBounds, max_frames: int = 1000, coalesce: bool = True) -> tuple[
    Subscriber, FakeSocket, list[str]
]:
    socket = FakeSocket(stalled=True)
    overflows: list[str] = []
    subscriber = Subscriber("r", socket.send, socket.close, max_frames, coalesce)
    subscriber.bound(bounds, overflows.append)
    subscriber.finish_sync()
    return subscriber, socket, overflows


async def test_a_coalesced_frame_never_exceeds_the_frame_bound() -> None:
    bounds = SendBounds(buffer_bytes=4 * 1024 * 1024, frame_bytes=64 * 1024)
    subscriber, socket, _ = await stalled_subscriber(bounds)
    frames = [quoted(i) for i in range(300)]
    subscriber.push(frames[0])
    await asyncio.sleep(0.01)  # the writer is blocked on frame 0; the rest pile up behind it
    for frame in frames[1:]:
        subscriber.push(frame)
    socket.gate.set()
    await asyncio.sleep(0.05)
    assert max(utf8_size(sent) for sent in socket.sent) <= 64 * 1024
    assert len(socket.sent) < 300 / 5  # still coalesced: several messages per frame
    assert "\n".join(socket.sent).split("\n") == frames  # nothing lost, nothing reordered
    assert subscriber.buffered_bytes == 0
    await subscriber.aclose()


async def test_a_single_message_larger_than_the_frame_bound_goes_alone() -> None:
    bounds = SendBounds(buffer_bytes=1024 * 1024, frame_bytes=16 * 1024)
    subscriber, socket, _ = await stalled_subscriber(bounds)
    big = message(1, room="r", text="x" * 20_000)[1]
    small = [message(i, room="r")[1] for i in range(2, 5)]
    subscriber.push(small[0])
    await asyncio.sleep(0.01)
    for frame in [big, *small[1:]]:
        subscriber.push(frame)
    socket.gate.set()
    await asyncio.sleep(0.05)
    assert socket.sent == [small[0], big, "\n".join(small[1:])]
    await subscriber.aclose()


async def test_a_buffer_over_its_bytes_closes_1013_counted_and_logged_once() -> None:
    bounds = SendBounds(buffer_bytes=256 * 1024, frame_bytes=64 * 1024)
    subscriber, socket, overflows = await stalled_subscriber(bounds)
    with structlog.testing.capture_logs() as logs:
        for i in range(200):  # 200 x 8 KiB: far fewer frames than the 1000-frame bound, far more bytes
            subscriber.push(quoted(i))
            assert subscriber.buffered_bytes <= 256 * 1024
    assert subscriber.closed and subscriber.close_code == CLOSE_SLOW_CONSUMER
    assert overflows == ["bytes"]
    assert [entry["limit"] for entry in logs if entry["event"] == "closing slow consumer"] == ["bytes"]
    socket.gate.set()
    await asyncio.sleep(0.01)
    assert socket.closed is not None and socket.closed[0] == CLOSE_SLOW_CONSUMER
    await subscriber.aclose()


async def test_the_frame_bound_still_closes_1013_and_says_so() -> None:
    subscriber, _, overflows = await stalled_subscriber(SendBounds(), max_frames=50)
    for i in range(100):
        subscriber.push(message(i, room="r")[1])
    assert subscriber.close_code == CLOSE_SLOW_CONSUMER and overflows == ["frames"]
    await subscriber.aclose()


async def test_live_messages_held_during_the_backlog_are_bounded_in_bytes() -> None:
    socket = FakeSocket(stalled=True)
    overflows: list[str] = []
    subscriber = Subscriber("r", socket.send, socket.close, 1000, True)
    subscriber.bound(SendBounds(buffer_bytes=128 * 1024, frame_bytes=64 * 1024), overflows.append)
    for i in range(100):
        subscriber.deliver_live(*message(i, room="r", text='"' * 4096))
    assert subscriber.close_code == CLOSE_SLOW_CONSUMER and overflows == ["bytes"]
    await subscriber.aclose()


@pytest.mark.parametrize("text", ["plain", "héllo wörld", "中文字符", "emoji 😀"])
def test_frames_are_measured_in_utf8_bytes(text: str) -> None:
    frame = orjson.dumps({"type": "message", "text": text}).decode()
    assert utf8_size(frame) == len(frame.encode())


async def test_the_hub_gives_its_bounds_to_every_subscriber() -> None:
    overflows: list[str] = []
    hub = Hub(SendBounds(buffer_bytes=64 * 1024, frame_bytes=16 * 1024), overflows.append)
    socket = FakeSocket(stalled=True)
    subscriber = Subscriber("r", socket.send, socket.close, 1000, True)
    subscriber.finish_sync()
    hub.subscribe(subscriber)
    hub.dispatch([message(i, room="r", text='"' * 4096) for i in range(20)])
    assert subscriber.close_code == CLOSE_SLOW_CONSUMER and overflows == ["bytes"]
    hub.unsubscribe(subscriber)
    await subscriber.aclose()


# --- settings ----------------------------------------------------------------------------------------------------


def test_a_send_buffer_smaller_than_a_frame_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAT_SEND_BUFFER_BYTES", str(128 * 1024))
    monkeypatch.setenv("CHAT_MAX_FRAME_BYTES", str(256 * 1024))
    with pytest.raises(ConfigError, match="CHAT_SEND_BUFFER_BYTES"):
        load_config()
    monkeypatch.setenv("CHAT_MAX_FRAME_BYTES", str(64 * 1024))
    bounds = load_config().chat
    assert (bounds.send_buffer_bytes, bounds.max_frame_bytes) == (128 * 1024, 64 * 1024)
