"""The history-outage gap of issue 10 item 1, step by step, for any client (test client, CLI, page).

A client holds a cursor and goes away; 50 messages are sent and stored; the history service goes down; the
client comes back (within the replicas' ring window, or after it) and gets an incomplete `synced`; 5 live
messages follow. Whatever the path, the client must end with all 55, each once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.history import wait_stored

# The ring window of the topology these tests start (it must exceed the publish timeout: settings refuse less).
GAP_TOPOLOGY_ENV = {"AMQP_PUBLISH_TIMEOUT_S": "1", "CHAT_RECOVERY_WINDOW_MS": "1500"}
RING_WINDOW_S = 1.5
MISSED = 50
LIVE = 5


@dataclass
class GapScenario:
    endpoints: Endpoints
    room: str
    sender_replica: int = 1
    missed: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    _sender: ChatClient | None = None

    @property
    def sender(self) -> ChatClient:
        if self._sender is None:
            self._sender = ChatClient(self.endpoints.ws_urls, self.room, name="sender")
        return self._sender

    async def send(self, count: int, label: str) -> list[str]:
        """Send ``count`` messages from the sender's replica; return their acknowledged ids."""
        sender = self.sender
        if sender.connections == 0:
            await sender.connect(self.sender_replica)
        return await sender.send_acked([f"{label} {i:02d}" for i in range(count)])

    async def miss_while_away(self) -> None:
        """The 50 messages the absent client misses, stored by history before it goes down."""
        self.missed = await self.send(MISSED, "missed")
        stored = await wait_stored(self.endpoints.history_url, self.room, MISSED)
        assert set(self.missed) <= {m["id"] for m in stored}

    async def history_down(self, past_ring_window: bool) -> None:
        self.endpoints.local().history.kill()
        if past_ring_window:
            await asyncio.sleep(RING_WINDOW_S + 1.0)

    async def send_live(self) -> None:
        self.live = await self.send(LIVE, "live")

    async def history_up(self) -> None:
        await asyncio.to_thread(self.endpoints.local().history.start)

    @property
    def expected(self) -> list[str]:
        return sorted(self.missed + self.live)

    async def close(self) -> None:
        if self._sender is not None:
            await self._sender.close()
