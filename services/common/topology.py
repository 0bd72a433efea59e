"""The frozen v1 AMQP topology. Both services declare all of it at start, idempotently.

Changing an argument here breaks every running deployment (RabbitMQ refuses a redeclare with other
arguments), so these are versioned with the contract, not tuned per install.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

DEAD_LETTER_EXCHANGE = "chat.dlx"
DEAD_LETTER_QUEUE = "chat.history.dlq"


def history_queue_arguments() -> dict[str, Any]:
    # at-least-once dead-lettering only applies with reject-publish overflow; with no length limit set,
    # that overflow mode never refuses anything.
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: AbstractExchange
    history_queue: AbstractQueue


async def declare_topology(channel: AbstractChannel, exchange_name: str, history_queue: str) -> Topology:
    """Declare the exchange, the history queue and its dead-letter path, and bind them."""
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.FANOUT, durable=True)
    dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    dlq = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    await dlq.bind(dlx)
    queue = await channel.declare_queue(history_queue, durable=True, arguments=history_queue_arguments())
    await queue.bind(exchange)
    return Topology(exchange=exchange, history_queue=queue)


async def declare_replica_queue(channel: AbstractChannel, exchange: AbstractExchange) -> AbstractQueue:
    """A server-named, exclusive, auto-delete queue: it dies with the replica's connection, by design."""
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True, durable=False)
    await queue.bind(exchange)
    return queue
