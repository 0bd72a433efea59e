"""AMQP_URL as a list of cluster nodes: validation at start, and the order a link tries them in."""

from __future__ import annotations

import random

import pytest

from services.common.brokers import BrokerRotation, describe, split_urls
from services.common.settings import AmqpSettings, ConfigError, load

NODES = ["amqp://u:p@10.0.0.1:5672/v", "amqp://u:p@10.0.0.2:5672/v", "amqps://u:p@10.0.0.3/v"]


def test_a_list_is_split_and_blanks_dropped() -> None:
    assert split_urls(" amqp://a/ , ,amqp://b/,") == ["amqp://a/", "amqp://b/"]
    assert split_urls("amqp://a/") == ["amqp://a/"]


def test_rotation_starts_at_a_random_node_then_visits_each_in_turn() -> None:
    starts = set()
    for seed in range(40):
        rotation = BrokerRotation(NODES, random.Random(seed))
        tried = [rotation.next() for _ in range(7)]
        first = NODES.index(tried[0])
        assert tried == [NODES[(first + step) % 3] for step in range(7)]
        starts.add(first)
    assert starts == {0, 1, 2}


def test_a_single_address_is_always_the_one() -> None:
    rotation = BrokerRotation(NODES[:1])
    assert {rotation.next() for _ in range(5)} == {NODES[0]}
    with pytest.raises(ValueError):
        BrokerRotation([])


def test_describe_never_shows_credentials() -> None:
    assert describe(NODES[0]) == "10.0.0.1:5672/v"
    assert describe(NODES[2]) == "10.0.0.3:5671/v"
    assert describe("amqp://guest:secret@rabbit") == "rabbit:5672/"


def test_amqp_url_accepts_a_comma_separated_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", ",".join(NODES))
    assert split_urls(load(AmqpSettings).url) == NODES


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("amqp://u:p@a/,http://u:p@b/", "entry 2 of 2 must be an amqp:// or amqps:// URL"),
        ("amqp://u:p@a/,not a url", "entry 2 of 2 is not a URL"),
        ("redis://u:p@a/", "the URL must be an amqp:// or amqps:// URL"),
        (" , ", "must be an amqp:// or amqps:// URL"),
    ],
)
def test_a_bad_entry_is_refused_naming_amqp_url_not_the_secret(
    monkeypatch: pytest.MonkeyPatch, value: str, complaint: str
) -> None:
    monkeypatch.setenv("AMQP_URL", value)
    with pytest.raises(ConfigError) as caught:
        load(AmqpSettings)
    message = str(caught.value)
    assert message.startswith("invalid configuration: AMQP_URL:") and complaint in message
    assert "u:p" not in message
