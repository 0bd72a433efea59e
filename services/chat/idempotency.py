"""Remembers confirmed client_ids so that a resend gets the first id back and is not published again.

Bounded in time (``window_s``, pruned on every use and by a timer while any key is held) and in size
(``max_keys``; the oldest keys go first). Forgetting a key early only costs a second publish of a resend:
the history service still stores one message per ``(room, author, client_id)``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

import structlog

from services.chat.bounds import Expiring, HighWater

log = structlog.get_logger(__name__)

Key = tuple[str, str | None, str]  # (room, author, client_id)


class IdempotencyCache(Expiring):
    def __init__(
        self,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._on_evict = on_evict
        self._confirmed: OrderedDict[Key, tuple[float, str]] = OrderedDict()
        self._high = HighWater()
        self._inflight: dict[Key, asyncio.Future[str]] = {}
        self._evicting = False
        self._start_expiry(slack_s=min(5.0, window_s / 4))

    def __len__(self) -> int:
        return len(self._confirmed)

    def lookup(self, key: Key) -> str | None:
        self._expire(self._clock())
        entry = self._confirmed.get(key)
        return entry[1] if entry else None

    def inflight(self, key: Key) -> asyncio.Future[str] | None:
        return self._inflight.get(key)

    def begin(self, key: Key) -> asyncio.Future[str]:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        return future

    def confirm(self, key: Key, message_id: str) -> None:
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_result(message_id)
        if self._window_s <= 0:
            return
        now = self._clock()
        self._expire(now)
        self._confirmed[key] = (now, message_id)
        self._confirmed.move_to_end(key)
        self._high.note(len(self._confirmed))
        evicted = 0
        while len(self._confirmed) > self._max_keys:
            self._confirmed.popitem(last=False)
            evicted += 1
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)
        if evicted and not self._evicting:
            log.warning("idempotency cache full: forgetting keys younger than the window", max_keys=self._max_keys)
        self._evicting = evicted > 0
        self._timer.arm(self._due_in(now))

    def fail(self, key: Key, error: BaseException) -> None:
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # a resend may not be waiting; do not log it as unretrieved

    def _due_in(self, now: float) -> float | None:
        if not self._confirmed:
            return None
        stamp, _ = next(iter(self._confirmed.values()))
        return stamp + self._window_s - now

    def _expire(self, now: float) -> None:
        horizon = now - self._window_s
        while self._confirmed:
            stamp, _ = next(iter(self._confirmed.values()))
            if stamp >= horizon:
                break
            self._confirmed.popitem(last=False)
        self._confirmed = self._high.shrink(self._confirmed)
