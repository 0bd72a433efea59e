"""Recently delivered messages per room, kept by local arrival time.

The history service may not have stored a message this replica has just delivered; merging this ring into
every backlog closes that gap at connect. Entries live at least ``window_ms`` after they arrived here, and not
much longer: one arrival-ordered queue across rooms lets every add and a timer drop what is due in every room,
not only in the room that gets the next message. A cap on entries and on bytes bounds the ring when traffic
outruns the window; reaching it drops the oldest entries early (counted and logged: the seam then relies on
history alone for them).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import structlog

from services.chat.bounds import Expiring, HighWater
from services.chat.hub import Entry
from services.common.schema import ChatMessage

log = structlog.get_logger(__name__)

# What the ring costs beyond texts and frames, measured with tracemalloc: an entry's message object, its
# id/origin/room/author/client_id strings, tuples and queue slots (about 600 bytes); a room's deque and map
# slot (about 800 bytes, the most of it when clients spread one message each over many rooms).
ENTRY_OVERHEAD_BYTES = 600
ROOM_OVERHEAD_BYTES = 800
_Stamped = tuple[float, ChatMessage, str]


def entry_cost(message: ChatMessage, frame: str) -> int:
    return ENTRY_OVERHEAD_BYTES + len(message.text) + len(frame)


class RecentRing(Expiring):
    def __init__(
        self,
        window_ms: int,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        self._window_s = window_ms / 1000
        self._clock = clock
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._on_evict = on_evict
        self._rooms: dict[str, deque[_Stamped]] = {}
        self._rooms_high = HighWater()
        # Every entry of every room, oldest first: (arrival, room, cost). A room's own deque is in the same
        # order, so the head here is always the head of its room's deque.
        self._order: deque[tuple[float, str, int]] = deque()
        self._bytes = 0
        self._evicting = False
        self._start_expiry(slack_s=min(1.0, self._window_s / 4))

    def add(self, message: ChatMessage, frame: str) -> None:
        now = self._clock()
        self._expire(now)
        cost = entry_cost(message, frame)
        entries = self._rooms.get(message.room)
        if entries is None:
            entries = self._rooms[message.room] = deque()
            self._rooms_high.note(len(self._rooms))
        entries.append((now, message, frame))
        self._order.append((now, message.room, cost))
        self._bytes += cost
        self._enforce_caps()
        self._timer.arm(self._due_in(now))

    def snapshot(self, room: str) -> list[Entry]:
        """The room's recent messages, sorted by id."""
        self._expire(self._clock())
        entries = self._rooms.get(room)
        if not entries:
            return []
        return sorted(((m, f) for _, m, f in entries), key=lambda entry: entry[0].id)

    def prune_all(self) -> None:
        self._expire(self._clock())

    def __len__(self) -> int:
        return len(self._order)

    @property
    def rooms(self) -> int:
        return len(self._rooms)

    @property
    def bytes(self) -> int:
        """An estimate of the memory the ring holds (the quantity ``max_bytes`` bounds)."""
        return self._bytes + ROOM_OVERHEAD_BYTES * len(self._rooms)

    def _due_in(self, now: float) -> float | None:
        return self._order[0][0] + self._window_s - now if self._order else None

    def _expire(self, now: float) -> None:
        horizon = now - self._window_s
        while self._order and self._order[0][0] < horizon:
            self._drop_oldest()
        self._rooms = self._rooms_high.shrink(self._rooms)

    def _enforce_caps(self) -> None:
        evicted = 0
        while len(self._order) > self._max_entries or self.bytes > self._max_bytes:
            self._drop_oldest()
            evicted += 1
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)
        if evicted and not self._evicting:
            log.warning(
                "recent ring full: dropping entries younger than the recovery window",
                entries=len(self._order), bytes=self.bytes, max_entries=self._max_entries,
                max_bytes=self._max_bytes,
            )
        self._evicting = evicted > 0

    def _drop_oldest(self) -> None:
        _, room, cost = self._order.popleft()
        self._bytes -= cost
        entries = self._rooms[room]
        entries.popleft()
        if not entries:
            del self._rooms[room]
