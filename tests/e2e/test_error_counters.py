"""Counters count (issue 16 item 4): every error code the contract names moves
`durable_chat_client_errors_total{code}` on the replica that sent it, by exactly the number of times it was sent."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import pytest
import websockets

from services.chat.metrics import ERROR_CODES
from tests.e2e.chaos.conftest import metric
from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.rabbit import PrivateRabbit

ALLOWED_ORIGIN = "https://chat.example"


def error_counts(url: str) -> dict[str, float]:
    return {code: metric(url, "durable_chat_client_errors_total", f'code="{code}"') or 0.0 for code in ERROR_CODES}


async def refused(url: str, **connect: object) -> str:
    """Connect, return the error code of the first frame; the server closes the connection."""
    async with websockets.connect(url, **connect) as ws:  # type: ignore[arg-type]
        frame = orjson.loads(await ws.recv())
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await ws.recv()
    return str(frame["code"])


async def policy_applied(node: PrivateRabbit, vhost: str, queue: str, policy: str, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        listing = await asyncio.to_thread(node.ctl, "list_queues", "-p", vhost, "--no-table-headers", "name",
                                          "effective_policy_definition")
        if any(line.startswith(queue + "\t") and "max-length" in line for line in listing.splitlines()):
            return
        assert asyncio.get_running_loop().time() < deadline, f"policy {policy} not on {queue}: {listing}"
        await asyncio.sleep(0.5)


@pytest.mark.topology_env(
    {"CHAT_RATE_LIMIT_PER_S": "1", "CHAT_RATE_LIMIT_BURST": "3", "CHAT_ALLOWED_ORIGINS": ALLOWED_ORIGIN}
)
async def test_every_error_code_is_counted_once_per_error_frame(
    endpoints: Endpoints, private_rabbit: PrivateRabbit
) -> None:
    topology = endpoints.local()
    replica = endpoints.chat_urls[0]
    ws_url = endpoints.ws_urls[0]
    assert set(error_counts(replica).values()) == {0.0}
    sent: dict[str, int] = dict.fromkeys(ERROR_CODES, 0)

    client = ChatClient(endpoints.ws_urls, "counters")
    await client.connect(0)
    for raw, code in [
        ("{not json", "bad_json"), ('{"text": 42}', "bad_frame"), ('{"text": "  "}', "empty_text"),
        (orjson.dumps({"text": "x" * 4097}).decode(), "too_large"), ('{"text": "a\\u0007"}', "bad_text"),
        (b"\x00binary", "binary_unsupported"),
    ]:
        await client.send_raw(raw)
        sent[code] += 1
    for _ in range(6):  # a burst of 3 is allowed at 1/s: the rest are refused
        await client.send("burst")
    await client.wait_for(lambda: len(client.errors) + len(client.acks) == 6 + 6)
    sent["rate_limited"] = sum(e["code"] == "rate_limited" for e in client.errors)
    assert sent["rate_limited"] >= 2

    async with websockets.connect(f"{ws_url}?room=counters&after=not-an-id") as ws:
        assert orjson.loads(await ws.recv())["code"] == "bad_after"
        while orjson.loads(await ws.recv())["type"] != "synced":  # the backlog (without a cursor) is done
            pass
    sent["bad_after"] += 1
    assert await refused(f"{ws_url}?room=" + "r" * 65) == "bad_room"
    sent["bad_room"] += 1
    assert await refused(f"{ws_url}?room=counters", origin="https://elsewhere.example") == "unauthorized"
    sent["unauthorized"] += 1

    # The history queue full (a length limit, as an operator's policy would set, with history down): the broker
    # refuses the publish and the sender gets publish_failed.
    topology.history.kill()
    vhost = topology.amqp_url.rsplit("/", 1)[1]
    private_rabbit.ctl("set_policy", "-p", vhost, "--apply-to", "queues", "full", r"^chat\.history$",
                       '{"max-length": 1}')
    try:
        await policy_applied(private_rabbit, vhost, "chat.history", "full")
        # Quorum queues enforce the limit once it is exceeded (RabbitMQ 4 lets the queue pass it by one or two).
        for _ in range(6):
            await asyncio.sleep(1.1)  # within the rate limit
            answered = len(client.acks) + len(client.errors)
            await client.send("into a full queue")
            await client.wait_for(lambda n=answered: len(client.acks) + len(client.errors) > n, timeout=30)
            if client.errors[-1]["code"] == "publish_failed":
                break
        sent["publish_failed"] = sum(e["code"] == "publish_failed" for e in client.errors)
        assert sent["publish_failed"] >= 1
    finally:
        private_rabbit.ctl("clear_policy", "-p", vhost, "full")
    await client.close()

    late = ChatClient(endpoints.ws_urls, "counters")
    await late.connect(0, timeout=30)  # history is down
    sent["history_unavailable"] += 1
    await late.close()

    assert all(sent[code] >= 1 for code in ERROR_CODES), f"not triggered: {[c for c in ERROR_CODES if not sent[c]]}"
    assert error_counts(replica) == {code: float(n) for code, n in sent.items()}
