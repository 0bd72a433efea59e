from __future__ import annotations

import asyncio

import pytest

from services.chat.idempotency import IdempotencyCache
from services.chat.limits import ClientAddress, ConnectionCounter, TokenBucket
from services.chat.relay import PublishFailed


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now = 0.5
    assert [bucket.take(), bucket.take()] == [True, False]


def test_token_bucket_off_when_zero() -> None:
    bucket = TokenBucket(rate=0, burst=0)
    assert all(bucket.take() for _ in range(1000))


def test_connection_counter_limits_per_address() -> None:
    counter = ConnectionCounter(2)
    assert counter.acquire("a") and counter.acquire("a") and not counter.acquire("a")
    assert counter.acquire("b")
    counter.release("a")
    assert counter.acquire("a")


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    resolver = ClientAddress(["10.0.0.0/8"])
    assert resolver.resolve("203.0.113.9", "1.2.3.4") == "203.0.113.9"
    assert resolver.resolve("10.1.1.1", "1.2.3.4, 10.2.2.2") == "1.2.3.4"
    assert resolver.resolve("10.1.1.1", None) == "10.1.1.1"
    assert resolver.resolve("10.1.1.1", "garbage, 10.2.2.2") == "garbage"


async def test_idempotency_remembers_confirmed_keys_for_the_window() -> None:
    clock = Clock()
    cache = IdempotencyCache(600, clock=clock)
    key = ("r", "ann", "k1")
    cache.begin(key)
    assert cache.inflight(key) is not None
    cache.confirm(key, "ID1")
    assert cache.lookup(key) == "ID1" and cache.inflight(key) is None
    assert cache.lookup(("r", "bob", "k1")) is None
    clock.now = 601
    assert cache.lookup(key) is None


async def test_a_failed_publish_is_forgotten_so_a_resend_publishes_anew() -> None:
    cache = IdempotencyCache(600)
    key = ("r", None, "k1")
    waiter = cache.begin(key)
    cache.fail(key, PublishFailed("timeout"))
    with pytest.raises(PublishFailed):
        await asyncio.shield(waiter)
    assert cache.lookup(key) is None and cache.inflight(key) is None
