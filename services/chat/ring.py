"""Recently delivered messages per room, kept by local arrival time.

The history service may not have stored a message this replica has just delivered; merging this ring into
every backlog closes that gap at connect. Entries live at least ``window_ms`` after they arrived here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from services.chat.hub import Entry
from services.common.schema import ChatMessage


class RecentRing:
    def __init__(self, window_ms: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._window_s = window_ms / 1000
        self._clock = clock
        self._rooms: dict[str, deque[tuple[float, ChatMessage, str]]] = {}

    def add(self, message: ChatMessage, frame: str) -> None:
        now = self._clock()
        entries = self._rooms.setdefault(message.room, deque())
        entries.append((now, message, frame))
        self._prune(message.room, entries, now)

    def snapshot(self, room: str) -> list[Entry]:
        """The room's recent messages, sorted by id."""
        entries = self._rooms.get(room)
        if not entries:
            return []
        self._prune(room, entries, self._clock())
        return sorted(((m, f) for _, m, f in entries), key=lambda entry: entry[0].id)

    def prune_all(self) -> None:
        now = self._clock()
        for room, entries in list(self._rooms.items()):
            self._prune(room, entries, now)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._rooms.values())

    def _prune(self, room: str, entries: deque[tuple[float, ChatMessage, str]], now: float) -> None:
        horizon = now - self._window_s
        while entries and entries[0][0] < horizon:
            entries.popleft()
        if not entries:
            del self._rooms[room]
