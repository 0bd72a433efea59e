"""Leaving a chat replica's lifespan leaves nothing behind on the event loop: the ring's and the idempotency
cache's prune timers are cancelled by their owner, not left to die with the loop."""

from __future__ import annotations

from services.chat.service import ChatService
from services.chat.settings import ChatConfig, ChatSettings
from services.common.schema import SendRequest
from services.common.settings import AmqpSettings, LogSettings
from tests.integration.test_lifecycle_loops import until


def pending(timer: object) -> bool:
    handle = getattr(timer, "_handle", None)
    return handle is not None and not handle.cancelled()


async def test_leaving_the_service_cancels_the_prune_timers(amqp_url: str) -> None:
    config = ChatConfig(
        chat=ChatSettings(history_url="http://127.0.0.1:9"),
        amqp=AmqpSettings(url=amqp_url, heartbeat_s=2, reconnect_max_s=0.2),
        log=LogSettings(),
    )
    async with ChatService(config) as service:
        await until(lambda: service.ready)
        await service.accept("room", "ann", SendRequest(text="hi", client_id="k1"))
        await until(lambda: len(service.ring) == 1)
        timers = [service.ring._timer, service.idempotency._timer]
        assert all(pending(timer) for timer in timers)  # armed while they hold something
    assert not any(pending(timer) for timer in timers)
