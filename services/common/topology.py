"""The AMQP topology. Both services declare it at start, idempotently.

Replica 0's ``chat.history`` is the frozen v1 queue: changing one of its arguments breaks every running deployment
(RabbitMQ refuses a redeclare with other arguments, 406), so they are versioned with the contract, never tuned per
install. History replicas n >= 1 (v1.1) each have a queue of their own, ``chat.history.<n>``, described by
``history_queue``: the one place both services take its name and arguments from, so that their declares agree.

A queue of ordinal >= 1 that already exists with other arguments (``AMQP_HISTORY_QUEUE_EXPIRES_S`` changed since it
was created) is kept as it is: the declare logs one error naming the queue and both argument sets, then uses the
existing queue. The rule (docs/guarantees.md, history replicas): the expiry applies to queues created after the
change; to change an existing one, set a RabbitMQ policy or delete the queue (its replica then copies what it lacks
from a peer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue

from services.common.settings import AmqpSettings

log = structlog.get_logger(__name__)

DEAD_LETTER_EXCHANGE = "chat.dlx"
DEAD_LETTER_QUEUE = "chat.history.dlq"
# `chat.dlx` is a fanout (frozen v1): every queue bound to it gets every dead letter. Replicas n >= 1 dead-letter
# to this direct exchange instead, routed by their queue's name, so that each one's dead letters stay its own.
REPLICA_DEAD_LETTER_EXCHANGE = "chat.history.dlx"
DEFAULT_QUEUE_EXPIRES_S = 604800


def history_queue_arguments() -> dict[str, Any]:
    """Replica 0's ``chat.history`` (frozen v1)."""
    # at-least-once dead-lettering only applies with reject-publish overflow; with no length limit set,
    # that overflow mode never refuses anything.
    return {
        "x-queue-type": "quorum",
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


@dataclass(frozen=True, slots=True)
class HistoryQueue:
    """What one history replica consumes: its queue and its dead-letter queue, with their arguments."""

    ordinal: int
    name: str
    arguments: dict[str, Any]
    dead_letter_exchange: str
    dead_letter_queue: str
    dead_letter_arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def dead_letter_routing_key(self) -> str:
        """The binding of the dead-letter queue (a fanout ignores it)."""
        return "" if self.ordinal == 0 else self.name


def history_queue(ordinal: int, base: str = "chat.history", expires_s: int = DEFAULT_QUEUE_EXPIRES_S) -> HistoryQueue:
    """The queue of history replica ``ordinal``: v1's ``chat.history`` for 0, ``<base>.<n>`` otherwise."""
    if ordinal < 0:
        raise ValueError("a replica ordinal is >= 0")
    if ordinal == 0:
        return HistoryQueue(0, base, history_queue_arguments(), DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE,
                            {"x-queue-type": "quorum"})
    name = f"{base}.{ordinal}"
    expiry = {"x-expires": expires_s * 1000} if expires_s else {}
    arguments = {
        **history_queue_arguments(),
        "x-dead-letter-exchange": REPLICA_DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": name,
        **expiry,
    }
    return HistoryQueue(ordinal, name, arguments, REPLICA_DEAD_LETTER_EXCHANGE, f"{name}.dlq",
                        {"x-queue-type": "quorum", **expiry})


def history_queues(replicas: int, base: str = "chat.history",
                   expires_s: int = DEFAULT_QUEUE_EXPIRES_S) -> list[HistoryQueue]:
    """Every history replica's queue, in ordinal order (what chat replicas declare)."""
    return [history_queue(ordinal, base, expires_s) for ordinal in range(replicas)]


@dataclass(frozen=True, slots=True)
class Topology:
    exchange: AbstractExchange
    history_queues: dict[int, AbstractQueue]

    @property
    def history_queue(self) -> AbstractQueue:
        """The first declared history queue (a history replica declares only its own)."""
        return next(iter(self.history_queues.values()))


def replica_queue(amqp: AmqpSettings, ordinal: int) -> HistoryQueue:
    """History replica ``ordinal``'s queue under these settings."""
    return history_queue(ordinal, amqp.history_queue, amqp.history_queue_expires_s)


def replica_queues(amqp: AmqpSettings) -> list[HistoryQueue]:
    """Every history replica's queue under these settings, in ordinal order (what chat replicas declare)."""
    return history_queues(amqp.history_replicas, amqp.history_queue, amqp.history_queue_expires_s)


async def declare_topology(
    channel: AbstractChannel, exchange_name: str, queues: Sequence[HistoryQueue] | str
) -> Topology:
    """Declare the exchange and each history queue with its dead-letter path, and bind them.

    ``queues`` as a string names the v1 queue alone (replica 0's, under that name).
    """
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.FANOUT, durable=True)
    declared = {}
    for queue in [history_queue(0, queues)] if isinstance(queues, str) else queues:
        declared[queue.ordinal] = await declare_history_queue(channel, exchange, queue)
    return Topology(exchange=exchange, history_queues=declared)


async def declare_history_queue(
    channel: AbstractChannel, exchange: AbstractExchange, queue: HistoryQueue
) -> AbstractQueue:
    dlx_type = aio_pika.ExchangeType.FANOUT if queue.ordinal == 0 else aio_pika.ExchangeType.DIRECT
    dlx = await channel.declare_exchange(queue.dead_letter_exchange, dlx_type, durable=True)
    dlq = await _declare_keeping_existing(channel, queue.dead_letter_queue, queue.dead_letter_arguments)
    await dlq.bind(dlx, routing_key=queue.dead_letter_routing_key)
    declared = await _declare_keeping_existing(channel, queue.name, queue.arguments)
    await declared.bind(exchange)
    return declared


async def _declare_keeping_existing(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        # The broker closed the channel; the queue exists with other arguments. Keep it (see the module docstring).
        log.error(
            "queue exists with other arguments; keeping it as it is (delete it or set a policy to change them)",
            queue=name, wanted=arguments, broker_said=str(exc)[:300],
        )
        await channel.reopen()
        return await channel.declare_queue(name, passive=True)


async def declare_replica_queue(channel: AbstractChannel, exchange: AbstractExchange) -> AbstractQueue:
    """A server-named, exclusive, auto-delete queue: it dies with the replica's connection, by design."""
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True, durable=False)
    await queue.bind(exchange)
    return queue
