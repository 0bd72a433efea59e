"""Every refusal is one log line at INFO, read from the real processes' logs: each per-frame refusal code of a
replica with its room, connection id and client address, a flood capped per connection with one line saying how
many were not logged, and the history API's 400s."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets

from services.chat.endpoints import REFUSAL_LOG_CAP
from tests.e2e.conftest import Endpoints
from tests.support.procs import ServiceProcess

pytestmark = pytest.mark.e2e

# One frame per refusal code a client can provoke (rate_limited comes from the small limit below).
BAD_FRAMES: list[tuple[str, str | bytes]] = [
    ("bad_json", "{not json"),
    ("bad_frame", '{"type": "shout", "text": "hi"}'),
    ("too_large", orjson.dumps({"type": "send", "text": "x" * 5000}).decode()),
    ("empty_text", '{"type": "send", "text": "   "}'),
    ("bad_text", '{"type": "send", "text": "bell \\u0007"}'),
    ("binary_unsupported", b"\x00\x01"),
]


def log_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return records


async def records_until(path: Path, done: Any, timeout: float = 10) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        records = log_records(path)
        if done(records) or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.1)


async def errors_received(ws: websockets.ClientConnection, count: int) -> list[str]:
    codes = []
    while len(codes) < count:
        frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == "error":
            codes.append(frame["code"])
    return codes


@pytest.mark.topology_env(
    {"CHAT_MAX_MESSAGE_BYTES": "4000", "CHAT_RATE_LIMIT_PER_S": "0.001", "CHAT_RATE_LIMIT_BURST": "1"}
)
async def test_every_refusal_is_one_log_line(endpoints: Endpoints) -> None:
    """One topology for the three checks (starting one costs more than the checks)."""
    topology = endpoints.local()
    await each_frame_refusal_is_one_info_line_with_room_connection_and_client(topology.chats[0])
    await a_flood_is_capped_per_connection_with_one_line_for_the_rest(topology.chats[1])
    await history_api_refusals_are_logged(topology.history)


async def each_frame_refusal_is_one_info_line_with_room_connection_and_client(chat: ServiceProcess) -> None:
    async with websockets.connect(f"{chat.ws_url}?room=refusals&name=eve") as ws:
        for _, frame in BAD_FRAMES:
            await ws.send(frame)
        await ws.send('{"type": "send", "text": "first is allowed", "client_id": "c1"}')
        await ws.send('{"type": "send", "text": "second is over the limit", "client_id": "c2"}')
        assert await errors_received(ws, len(BAD_FRAMES) + 1) == [code for code, _ in BAD_FRAMES] + ["rate_limited"]

    records = await records_until(chat.log_path, lambda rs: sum(r["event"] == "frame refused" for r in rs) >= 7)
    refused = [r for r in records if r["event"] == "frame refused"]
    assert [r["code"] for r in refused] == [code for code, _ in BAD_FRAMES] + ["rate_limited"]
    assert {(r["level"], r["room"], r["client"]) for r in refused} == {("info", "refusals", "127.0.0.1")}
    assert len({r["conn"] for r in refused}) == 1 and len(refused[0]["conn"]) == 8
    assert refused[-1]["client_id"] == "c2"
    assert not [r for r in records if r["event"] == "frame refusals not logged"]


async def a_flood_is_capped_per_connection_with_one_line_for_the_rest(chat: ServiceProcess) -> None:
    flood = 200
    async with (
        websockets.connect(f"{chat.ws_url}?room=flood") as ws,
        websockets.connect(f"{chat.ws_url}?room=calm") as other,
    ):
        for _ in range(flood):
            await ws.send("nope")
        await other.send("{}")
        await errors_received(ws, flood)
        await errors_received(other, 1)

    def summed(records: list[dict[str, Any]]) -> bool:
        return any(r["event"] == "frame refusals not logged" for r in records)

    records = await records_until(chat.log_path, summed)
    flood_lines = [r for r in records if r.get("room") == "flood"]
    assert [r["event"] for r in flood_lines] == ["frame refused"] * REFUSAL_LOG_CAP + ["frame refusals not logged"]
    assert flood_lines[-1]["count"] == flood - REFUSAL_LOG_CAP and flood_lines[-1]["codes"] == {
        "bad_json": flood - REFUSAL_LOG_CAP
    }
    assert "further" in flood_lines[REFUSAL_LOG_CAP - 1]
    # Another connection has its own budget: its first refusal is logged.
    assert [(r["event"], r["code"]) for r in records if r.get("room") == "calm"] == [("frame refused", "bad_frame")]


async def history_api_refusals_are_logged(history: ServiceProcess) -> None:
    queries = {"limit=ten": "bad_limit", "latest=true": "bad_parameter", "limit=1&limit=2": "bad_parameter"}
    async with httpx.AsyncClient(base_url=history.url) as client:
        for query, code in queries.items():
            response = await client.get(f"/rooms/general/messages?{query}")
            assert (response.status_code, response.json()["error"]["code"]) == (400, code)

    def all_logged(records: list[dict[str, Any]]) -> bool:
        return sum(r["event"] == "history request refused" for r in records) >= len(queries)

    refused = [r for r in await records_until(history.log_path, all_logged) if r["event"] == "history request refused"]
    assert [(r["query"], r["code"], r["status"], r["level"]) for r in refused] == [
        (query, code, 400, "info") for query, code in queries.items()
    ]
    assert {(r["room"], r["client"]) for r in refused} == {("general", "127.0.0.1")}
