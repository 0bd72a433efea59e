"""Monotonic ULIDs: 26 Crockford base32 characters, 48 bits of milliseconds then 80 bits of entropy.

Two ids minted by one process never compare equal or out of order, even when the wall clock steps back:
the generator uses ``max(now, last_ts)`` and increments the entropy within one millisecond.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {char: value for value, char in enumerate(CROCKFORD)}
ULID_LENGTH = 26
_MAX_TS = (1 << 48) - 1
_MAX_RANDOM = (1 << 80) - 1


def encode_ulid(ts_ms: int, entropy: int) -> str:
    value = (ts_ms << 80) | entropy
    chars = []
    for _ in range(ULID_LENGTH):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def ulid_timestamp(ulid: str) -> int:
    """Milliseconds since the epoch encoded in the first 10 characters."""
    ts = 0
    for char in ulid[:10]:
        ts = (ts << 5) | _DECODE[char]
    return ts


def is_ulid(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == ULID_LENGTH
        and value[0] in "01234567"  # the first character carries 3 bits only
        and all(char in _DECODE for char in value)
    )


def ulid_floor(ts_ms: int) -> str:
    """The smallest id of a millisecond: every id minted at ``ts_ms`` or later sorts after it."""
    return encode_ulid(max(0, min(ts_ms, _MAX_TS)), 0)


class UlidGenerator:
    """Per-process monotonic ULID source; not thread-safe (one event loop mints)."""

    __slots__ = ("_clock", "_last_ts", "_last_random")

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self._clock = clock or (lambda: time.time_ns() // 1_000_000)
        self._last_ts = -1
        self._last_random = 0

    def mint(self) -> tuple[str, int]:
        """Return a new id and its timestamp in milliseconds."""
        now = self._clock()
        if now > self._last_ts:
            self._last_ts = now
            self._last_random = secrets.randbits(80) >> 1  # leave headroom for increments
        elif self._last_random < _MAX_RANDOM:
            self._last_random += 1
        else:
            self._last_ts += 1
            self._last_random = 0
        return encode_ulid(self._last_ts, self._last_random), self._last_ts


def new_origin() -> str:
    """A short id of this replica process, new at every start."""
    return "".join(secrets.choice(CROCKFORD) for _ in range(8))
