"""Integration tests run against the machine's RabbitMQ, each in a vhost of its own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.rabbit import SharedVhost


@pytest.fixture
def amqp_url() -> Iterator[str]:
    vhost = SharedVhost()
    vhost.create()
    try:
        yield vhost.url
    finally:
        vhost.delete()
