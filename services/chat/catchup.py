"""Whether the history service has stored everything published before this replica's queue was bound.

The ring only holds what this replica's queue delivered. A message published before the queue was bound (at
start, or after a broker loss took the old queue and what was routed to it) and not yet stored by history is in
neither; a sync that reads history then would miss it for good. History has caught up once its queue showed no
ready message, with a consumer, and history has then settled every delivery it had received at that moment
(its `/progress` counters; deliveries are settled in the order they arrive). The answer is only as fresh as the
last poll: older than ``STALE_AFTER_S`` (the poller stalled, the broker is slow) it counts as not caught up.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

STALE_AFTER_S = 2.5


@dataclass(frozen=True, slots=True)
class HistoryProgress:
    boot: str  # new at every start of the history process: its counters start again
    received: int
    settled: int


class HistoryCatchUp:
    def __init__(
        self,
        progress: Callable[[], Awaitable[HistoryProgress | None]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._progress = progress
        self._clock = clock
        self._mark: tuple[str, int] | None = None
        self._caught_up = False
        self._observed_at = float("-inf")

    @property
    def caught_up(self) -> bool:
        return self._caught_up and self._clock() - self._observed_at <= STALE_AFTER_S

    def reset(self) -> None:
        """A new queue, or a queue poll that failed: nothing is known until the next quiet poll."""
        self._mark = None
        self._caught_up = False

    async def observe(self, ready: int, consumers: int) -> None:
        """Take one poll of the history queue into account."""
        if ready or not consumers:
            self.reset()
            return
        progress = await self._progress()
        if progress is None:
            self.reset()
            return
        if self._mark is None or self._mark[0] != progress.boot:
            self._mark = (progress.boot, progress.received)
        self._caught_up = progress.settled >= self._mark[1]
        self._observed_at = self._clock()
