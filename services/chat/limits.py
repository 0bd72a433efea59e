"""Per-connection rate limiting, per-address connection counting, and the client address behind proxies."""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Sequence

from services.chat.bounds import HighWater


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; a rate or burst of 0 turns limiting off."""

    __slots__ = ("_rate", "_burst", "_tokens", "_stamp", "_clock")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._stamp = clock()

    def take(self) -> bool:
        if self._rate <= 0 or self._burst <= 0:
            return True
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class ConnectionCounter:
    """Open WebSockets per client address. An address is held only while it has an open connection, so the map
    never outgrows the open connections, and it is compacted once most of the addresses it held are gone."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: Counter[str] = Counter()
        self._high = HighWater()

    def __len__(self) -> int:
        return len(self._open)

    def acquire(self, address: str) -> bool:
        if self._limit and self._open[address] >= self._limit:
            return False
        self._open[address] += 1
        self._high.note(len(self._open))
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
            self._open = self._high.shrink(self._open)


class ClientAddress:
    """Believes X-Forwarded-For only when the direct peer is a trusted proxy."""

    def __init__(self, trusted_cidrs: Sequence[str]) -> None:
        self._trusted = [ipaddress.ip_network(cidr, strict=False) for cidr in trusted_cidrs]

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str:
        address = peer or "unknown"
        if not forwarded_for or not self._is_trusted(address):
            return address
        # Walk right to left: the first address not of a trusted proxy is the client.
        for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
            if not self._is_trusted(hop):
                return hop
        return address

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)
