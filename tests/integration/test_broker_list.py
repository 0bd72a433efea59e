"""A broker link given several addresses (AMQP_URL listing a cluster's nodes) gets past a dead one."""

from __future__ import annotations

import asyncio

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection

from services.common.amqp import BrokerLink
from services.common.brokers import describe
from services.common.lifecycle import Supervisor
from services.common.settings import AmqpSettings
from tests.support.ports import free_port


async def _open_channel(connection: AbstractConnection, _tasks: asyncio.TaskGroup) -> list[AbstractChannel]:
    return [await connection.channel()]


async def test_links_start_anywhere_in_the_list_and_move_past_a_dead_node(amqp_url: str) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/nowhere"
    settings = AmqpSettings(url=f"{dead},{amqp_url}", reconnect_max_s=0.2)
    with structlog.testing.capture_logs() as logs:
        links = [BrokerLink(settings, f"list-{i}", _open_channel, Supervisor("test")) for i in range(16)]
        for link in links:
            await link.__aenter__()
        try:
            for _ in range(400):
                if all(link.ready for link in links):
                    break
                await asyncio.sleep(0.05)
            assert all(link.ready for link in links)
        finally:
            for link in links:
                await link.stop()
    connected = [entry["node"] for entry in logs if entry["event"] == "broker node"]
    assert set(connected) == {describe(amqp_url)}
    # 16 links starting at random (all at the live node: 1 in 65,536): some began at the dead one, moved on.
    assert [entry for entry in logs if entry["event"] == "broker connect failed"]
    assert not [entry for entry in logs if "guest:guest" in repr(entry)], "credentials leaked into the logs"
