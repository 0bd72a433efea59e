"""Helpers that keep per-room and per-key structures bounded in time and size.

``ExpiryTimer`` prunes a time-bounded structure while it holds anything, so nothing outlives its window. Pruning
only on use keeps everything once traffic stops: after one message to each of 30,000 rooms the ring
held them all until each room's next message. The timer is one ``call_later`` handle, armed for when the
oldest entry falls due (plus a little slack, so that a burst is pruned in a few passes, not one per entry).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

# What a structure's prune returns: seconds until its next entry falls due, or None when it is empty.
Prune = Callable[[], float | None]
M = TypeVar("M", bound=dict[Any, Any])


class ExpiryTimer:
    def __init__(self, prune: Prune, slack_s: float) -> None:
        self._prune = prune
        self._slack_s = slack_s
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def arm(self, due_in_s: float | None) -> None:
        """Make sure a prune runs once ``due_in_s`` has passed; None (nothing held) needs no timer."""
        if due_in_s is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # used outside a loop (tools, synchronous tests): pruning on use still bounds it
        if self._handle is not None and self._loop is loop and not self._handle.cancelled():
            return
        self._loop = loop
        self._handle = loop.call_later(max(0.0, due_in_s) + self._slack_s, self._fire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self.arm(self._prune())


class Expiring:
    """A structure whose entries expire: ``_expire(now)`` drops what is due and ``_due_in(now)`` says when the next
    entry is; a timer prunes it while it holds anything, and ``close`` cancels that timer."""

    _clock: Callable[[], float]

    def _start_expiry(self, slack_s: float) -> None:
        self._timer = ExpiryTimer(self._prune_due, slack_s)

    def close(self) -> None:
        self._timer.cancel()

    def _prune_due(self) -> float | None:
        now = self._clock()
        self._expire(now)
        return self._due_in(now)

    def _expire(self, now: float) -> None:
        raise NotImplementedError

    def _due_in(self, now: float) -> float | None:
        raise NotImplementedError


class HighWater:
    """Hands back a compact copy of a dict once it has shrunk to a quarter of its peak.

    CPython never shrinks a dict's table on delete: a map that once held 30,000 rooms keeps about 1 MiB (an
    OrderedDict of 30,000 keys, about 2 MiB) after they are all gone.
    """

    MIN_PEAK = 1024

    def __init__(self) -> None:
        self.peak = 0

    def note(self, size: int) -> None:
        if size > self.peak:
            self.peak = size

    def shrink(self, mapping: M) -> M:
        if self.peak < self.MIN_PEAK or len(mapping) * 4 > self.peak:
            return mapping
        self.peak = len(mapping)
        return type(mapping)(mapping)  # a new table sized for what is left
