"""Whether a history replica has stored everything published before this chat replica's queue was bound.

The ring only holds what this replica's queue delivered. A message published before the queue was bound (at
start, or after a broker loss took the old queue and what was routed to it) and not yet stored by history is in
neither; a sync that reads history then would miss it for good. A history replica has caught up once its own queue
showed no ready message, with a consumer, and the replica has then settled every delivery it had received at that
moment (its `/progress` counters; deliveries are settled in the order they arrive). The answer is only as fresh as
the last poll: older than ``STALE_AFTER_S`` (the poller stalled, the broker is slow) it counts as not caught up.

Each history replica (issue 13) consumes its own queue and answers its own `/progress`, so each is judged on its
own: a replica that lags its queue (just restarted, its queue backlogged) is not caught up while another one is,
and a sync must only be called complete when every replica that answered it had caught up (see history_client).
The queue a replica is judged against is the one its `/progress` names, else the one of its place in
``CHAT_HISTORY_URL`` (the list in ordinal order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

STALE_AFTER_S = 2.5


@dataclass(frozen=True, slots=True)
class HistoryProgress:
    boot: str  # new at every start of the history process: its counters start again
    received: int
    settled: int
    queue: str | None = None  # the queue this replica consumes, when its /progress says


@dataclass(frozen=True, slots=True)
class QueueStats:
    """One passive declare of a history queue."""

    ready: int
    consumers: int


class HistoryCatchUp:
    """One history replica's standing against its own queue."""

    def __init__(
        self,
        progress: Callable[[], Awaitable[HistoryProgress | None]],
        queue: str = "chat.history",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._progress = progress
        self._clock = clock
        self.queue = queue  # the queue judged: from /progress once the replica says, else from its place
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

    async def observe(self, queues: Mapping[str, QueueStats]) -> None:
        """Take one poll of the history queues (taken before this call: the order is what makes it sound)."""
        progress = await self._progress()
        if progress is None:
            self.reset()
            return
        if progress.queue is not None and progress.queue != self.queue:
            self.queue = progress.queue
            self._mark = None  # another replica behind this URL, or a first answer: judge its own queue from now
        stats = queues.get(self.queue)
        if stats is None or stats.ready or not stats.consumers:
            self.reset()
            return
        if self._mark is None or self._mark[0] != progress.boot:
            self._mark = (progress.boot, progress.received)
        self._caught_up = progress.settled >= self._mark[1]
        self._observed_at = self._clock()


class HistoryStanding:
    """Every history replica's standing, fed by the chat relay's queue polls, read by each backlog read."""

    def __init__(self, replicas: Sequence[HistoryCatchUp]) -> None:
        self.replicas = list(replicas)

    @property
    def queues(self) -> list[str]:
        return [replica.queue for replica in self.replicas]

    def reset(self) -> None:
        for replica in self.replicas:
            replica.reset()

    async def observe(self, queues: Mapping[str, QueueStats]) -> None:
        await asyncio.gather(*(replica.observe(queues) for replica in self.replicas))

    def caught_up(self) -> frozenset[int]:
        """The indices (in ``CHAT_HISTORY_URL``) of the replicas caught up as of the last poll."""
        return frozenset(index for index, replica in enumerate(self.replicas) if replica.caught_up)
