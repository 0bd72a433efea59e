"""Which broker address a link tries next, when ``AMQP_URL`` lists several nodes of a RabbitMQ cluster.

Outside Kubernetes (where one Service address is enough) users list the cluster's nodes. Each link starts at a
random one, so a fleet of replicas spreads its connections (and exclusive queues) over the nodes, then tries
them in turn: a node that is down costs one backoff step, never a stuck link.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from urllib.parse import urlsplit


def split_urls(value: str) -> list[str]:
    """The addresses of a comma-separated ``AMQP_URL``, blanks dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


def describe(url: str) -> str:
    """``host:port/vhost`` of an AMQP URL, for logs: never the credentials."""
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or default_port}{parts.path or '/'}"


class BrokerRotation:
    """A random first address, then each in turn, round and round."""

    def __init__(self, urls: Sequence[str], rng: random.Random | None = None) -> None:
        if not urls:
            raise ValueError("no broker address")
        self._urls = list(urls)
        self._next = (rng or random.Random()).randrange(len(self._urls))

    def __len__(self) -> int:
        return len(self._urls)

    def next(self) -> str:
        """The address for the next connection attempt."""
        url = self._urls[self._next]
        self._next = (self._next + 1) % len(self._urls)
        return url
