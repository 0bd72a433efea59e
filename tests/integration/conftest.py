"""Integration tests run against the machine's RabbitMQ, each in a vhost of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.rabbit import shared_vhost


@pytest.fixture
def amqp_url() -> Iterator[str]:
    with shared_vhost() as url:
        yield url
