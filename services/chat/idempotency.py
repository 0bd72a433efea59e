"""Remembers confirmed client_ids so that a resend gets the first id back and is not published again."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable

Key = tuple[str, str | None, str]  # (room, author, client_id)


class IdempotencyCache:
    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 200_000) -> None:
        self._window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._confirmed: OrderedDict[Key, tuple[float, str]] = OrderedDict()
        self._inflight: dict[Key, asyncio.Future[str]] = {}

    def lookup(self, key: Key) -> str | None:
        self._expire()
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
        if self._window_s > 0:
            self._confirmed[key] = (self._clock(), message_id)
            self._confirmed.move_to_end(key)
            while len(self._confirmed) > self._max_keys:
                self._confirmed.popitem(last=False)

    def fail(self, key: Key, error: BaseException) -> None:
        future = self._inflight.pop(key, None)
        if future is not None and not future.done():
            future.set_exception(error)
            future.exception()  # a resend may not be waiting; do not log it as unretrieved

    def _expire(self) -> None:
        horizon = self._clock() - self._window_s
        while self._confirmed:
            key, (stamp, _) = next(iter(self._confirmed.items()))
            if stamp >= horizon:
                break
            self._confirmed.popitem(last=False)
