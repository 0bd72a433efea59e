"""Private nodes run the engine a test asks for, and the frozen v1 topology declares and works on each.

RabbitMQ 4 is the default (what users run); 3.10 is Debian 12's, which `make run` uses on a fresh machine.
"""

from __future__ import annotations

import aio_pika
import pytest
from pamqp.commands import Basic

from services.common.topology import DEAD_LETTER_QUEUE, declare_topology
from tests.e2e.conftest import requested_engine
from tests.support.rabbit import PrivateRabbit

ENGINES = [pytest.param("4", marks=pytest.mark.rabbitmq("4")), pytest.param("3.10", marks=pytest.mark.rabbitmq("3.10"))]
VERSION_PREFIX = {"4": "4.", "3.10": "3.10."}


def test_unmarked_tests_get_the_runs_default_engine(
    private_rabbit: PrivateRabbit, request: pytest.FixtureRequest
) -> None:
    assert private_rabbit.version.startswith(VERSION_PREFIX[requested_engine(request)])


@pytest.mark.parametrize("engine", ENGINES)
async def test_history_topology_declares_and_confirms_on_each_engine(
    engine: str, private_rabbit: PrivateRabbit, vhost_url: str
) -> None:
    assert private_rabbit.version.startswith(VERSION_PREFIX[engine])
    connection = await aio_pika.connect(vhost_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_topology(channel, "chat", "chat.history")
        # A second declaration with the same arguments is what every restart of either service does.
        await declare_topology(channel, "chat", "chat.history")
        confirmed = await topology.exchange.publish(
            aio_pika.Message(b"{}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key="", mandatory=True
        )
        assert isinstance(confirmed, Basic.Ack)
        delivered = await topology.history_queue.get(timeout=5)
        assert delivered.body == b"{}"
        await delivered.ack()
        # RabbitMQ 4 refuses queue.delete with if_unused or if_empty (aio-pika's defaults) on quorum queues:
        # NOT_IMPLEMENTED, and the connection is closed.
        scratch = await channel.declare_queue("engine-scratch", durable=True, arguments={"x-queue-type": "quorum"})
        await scratch.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    vhost = vhost_url.rsplit("/", 1)[1]
    rows = private_rabbit.ctl("list_queues", "-p", vhost, "-q", "name", "type", "arguments")
    queues = {line.split()[0]: line for line in rows.splitlines() if line.strip()}
    history = queues["chat.history"]
    assert "\tquorum\t" in history
    for argument in ("x-dead-letter-strategy", "at-least-once", "x-overflow", "reject-publish", "chat.dlx"):
        assert argument in history
    assert "quorum" in queues[DEAD_LETTER_QUEUE]
    assert "engine-scratch" not in queues
