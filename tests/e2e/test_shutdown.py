"""SIGTERM: stop accepting, close clients 1012 so they resume elsewhere, drain, exit cleanly."""

from __future__ import annotations

import signal

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.history import wait_stored
from tests.support.load import Senders
from tests.support.procs import ServiceProcess


def stopped_cleanly(process: ServiceProcess) -> bool:
    # uvicorn re-raises the signal it handled once shutdown is complete, so -SIGTERM is a clean exit too.
    code = process.terminate(timeout=20)
    return code in (0, -signal.SIGTERM) and "Application shutdown complete" in process.tail(200)


async def test_sigterm_on_a_replica_sends_its_clients_elsewhere_without_loss(endpoints: Endpoints) -> None:
    topology = endpoints.local()
    watcher = ChatClient(endpoints.ws_urls, "drain")
    await watcher.connect(0)
    senders = Senders(endpoints.ws_urls[1:], "drain", count=2)
    await senders.start()
    await senders.wait_acked(50)
    assert stopped_cleanly(topology.chats[0])
    assert await watcher.wait_closed() == 1012
    await senders.wait_acked(len(senders.acked) + 50)
    await watcher.reconnect(1)
    await senders.stop()
    acked = set(senders.acked.values())
    await watcher.wait_for(lambda: acked <= set(watcher.unique))
    assert watcher.duplicates == []
    await watcher.close()


async def test_sigterm_on_history_acks_what_it_stored_and_exits_cleanly(endpoints: Endpoints) -> None:
    topology = endpoints.local()
    senders = Senders(endpoints.ws_urls, "drain-h", count=2)
    await senders.start(total=300)
    await senders.wait_acked(150)
    assert stopped_cleanly(topology.history)
    await senders.wait_acked(300)
    await senders.stop()
    topology.history.start()
    stored = await wait_stored(endpoints.history_url, "drain-h", 300)
    assert sorted(m["id"] for m in stored) == sorted(senders.acked.values())
