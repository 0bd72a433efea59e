"""A channel that goes while a publish or an ack waits: the sender gets `publish_failed`, history lets the broker
redeliver; a bug is not mistaken for it. aiormq rejects what was pending on a channel closed without a reason with
a bare ``Exception`` (seen in CI: a crashed fan-out task took the connection down while a publish waited)."""

from __future__ import annotations

from typing import Any

import pytest

from services.chat.hub import Hub
from services.chat.metrics import ChatMetrics
from services.chat.relay import ChatRelay, PublishFailed
from services.chat.ring import RecentRing
from services.common.amqp import channel_gone, unless_channel_gone
from services.common.settings import AmqpSettings
from services.history.consumer import _settle


class ClosingChannel:
    """A publishing channel whose pending confirm is rejected with ``error``."""

    is_closed = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def basic_publish(self, *args: Any, **kwargs: Any) -> None:
        raise self.error


def relay_over(channel: ClosingChannel, metrics: ChatMetrics) -> ChatRelay:
    relay = ChatRelay(AmqpSettings(), Hub(), RecentRing(1000), metrics, "ORIGIN01")
    relay._publish_channel = channel  # type: ignore[assignment]
    return relay


@pytest.mark.parametrize("error", [Exception(), ConnectionResetError(), RuntimeError("writer closed")])
async def test_a_publish_whose_channel_went_fails_as_disconnected(error: Exception) -> None:
    metrics = ChatMetrics.create()
    with pytest.raises(PublishFailed) as failed:
        await relay_over(ClosingChannel(error), metrics).publish("room", "ann", "hi", "k1")
    assert failed.value.reason == "disconnected"
    assert metrics.publish_failures.labels(reason="disconnected")._value.get() == 1


async def test_a_bug_in_the_publish_path_is_not_taken_for_a_lost_channel() -> None:
    with pytest.raises(TypeError):
        await relay_over(ClosingChannel(TypeError("bug")), ChatMetrics.create()).publish("room", "ann", "hi", "k1")


async def test_history_leaves_to_redelivery_an_ack_whose_channel_went_and_raises_a_bug() -> None:
    async def rejected(error: Exception) -> None:
        raise error

    await _settle(rejected(Exception()), "ack")
    await _settle(rejected(ConnectionResetError()), "ack")
    with pytest.raises(ValueError):
        await _settle(rejected(ValueError("bug")), "ack")


def test_only_a_bare_exception_or_a_channel_error_counts_as_gone() -> None:
    assert channel_gone(Exception()) and channel_gone(ConnectionError()) and channel_gone(RuntimeError())
    assert not channel_gone(ValueError()) and not channel_gone(KeyError("x"))


def test_unless_channel_gone_suppresses_a_gone_channel_and_lets_a_bug_through() -> None:
    for gone in (Exception(), ConnectionResetError(), RuntimeError("writer closed")):
        with unless_channel_gone():
            raise gone
    with pytest.raises(KeyError), unless_channel_gone():
        raise KeyError("bug")
