"""Bad and hostile input against a live topology: each gets a clear error, and the replica stays healthy."""

from __future__ import annotations

import time
import uuid

import httpx
import jwt
import orjson
import pytest
import websockets

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient

SECRET = "test-secret-0123456789abcdef0123456789"


async def first_frame_and_close(url: str, **connect: object) -> tuple[dict[str, object], int | None]:
    async with websockets.connect(url, **connect) as ws:  # type: ignore[arg-type]
        frame = orjson.loads(await ws.recv())
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await ws.recv()
        return frame, ws.close_code


async def test_every_bad_frame_gets_its_error_and_the_connection_survives(endpoints: Endpoints) -> None:
    client = ChatClient(endpoints.ws_urls, "hostile")
    await client.connect(0)
    cases = [
        ("{not json", "bad_json"),
        ('["a list"]', "bad_frame"),
        ('{"text": 42}', "bad_frame"),
        ('{"client_id": "only"}', "bad_frame"),
        ('{"text": "hi", "admin": true}', "bad_frame"),
        ('{"text": "   "}', "empty_text"),
        (orjson.dumps({"text": "x" * 4097}).decode(), "too_large"),
        (orjson.dumps({"text": "nul\u0000byte"}).decode(), "bad_text"),
        ('{"text": "\\udc00"}', "bad_text"),
    ]
    for raw, _ in cases:
        await client.send_raw(raw)
    await client.send_raw(b"\x00\x01binary")
    await client.wait_for(lambda: len(client.errors) == len(cases) + 1)
    assert [e["code"] for e in client.errors] == [code for _, code in cases] + ["binary_unsupported"]
    client_id = await client.send("still alive")
    await client.wait_for(lambda: client_id in client.acks)
    await client.close()


def fresh_room() -> str:
    """A room of the test's own: against a cluster (remote endpoints) history is shared by the whole run, and these
    tests expect `synced` as the first frame of an empty room."""
    return f"hostile-{uuid.uuid4().hex[:8]}"


async def test_protocol_violations_get_their_close_codes(endpoints: Endpoints) -> None:
    url = f"{endpoints.ws_urls[0]}?room={fresh_room()}&presence=0"  # nothing after `synced` but the close
    async with websockets.connect(url, max_size=None) as ws:
        await ws.recv()  # synced
        await ws.send("x" * 70_000)  # above the 64 KiB hard frame limit
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1009
    frame, code = await first_frame_and_close(f"{endpoints.ws_urls[0]}?room=" + "r" * 65)
    assert (frame["code"], code) == ("bad_room", 1008)
    frame, code = await first_frame_and_close(f"{endpoints.ws_urls[0]}?room=ok&name=" + "n" * 40)
    assert (frame["code"], code) == ("bad_frame", 1008)


async def test_invalid_utf8_closes_1007(endpoints: Endpoints) -> None:
    from websockets.frames import Frame, Opcode

    async with websockets.connect(f"{endpoints.ws_urls[1]}?room={fresh_room()}&presence=0") as ws:
        await ws.recv()
        ws.protocol.send_frame(Frame(Opcode.TEXT, b'{"text": "\xff\xfe"}'))
        ws.send_data()
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1007


async def test_a_malformed_cursor_is_refused_without_closing(endpoints: Endpoints) -> None:
    async with websockets.connect(f"{endpoints.ws_urls[0]}?room={fresh_room()}&after=yesterday") as ws:
        first = orjson.loads(await ws.recv())
        second = orjson.loads(await ws.recv())
    assert first["code"] == "bad_after" and second["type"] == "synced"


@pytest.mark.topology_env({"CHAT_RATE_LIMIT_PER_S": "5", "CHAT_RATE_LIMIT_BURST": "10"})
async def test_floods_are_rate_limited_per_connection(endpoints: Endpoints) -> None:
    client = ChatClient(endpoints.ws_urls, "flood")
    await client.connect(0)
    for n in range(40):
        await client.send(f"flood {n}", client_id=f"f{n}")
    await client.wait_for(lambda: len(client.acks) + len(client.errors) == 40)
    limited = [e for e in client.errors if e["code"] == "rate_limited"]
    assert 10 <= len(client.acks) <= 13 and len(limited) == 40 - len(client.acks)
    assert all(e["client_id"] for e in limited)
    await client.close()


@pytest.mark.topology_env({"CHAT_MAX_CONNECTIONS_PER_CLIENT": "3"})
async def test_too_many_connections_from_one_address(endpoints: Endpoints) -> None:
    held = [ChatClient(endpoints.ws_urls, "limit") for _ in range(3)]
    for client in held:
        await client.connect(0)
    frame, code = await first_frame_and_close(f"{endpoints.ws_urls[0]}?room=limit")
    assert (frame["code"], code) == ("rate_limited", 1008)
    await held[0].close()
    extra = ChatClient(endpoints.ws_urls, "limit")
    await extra.connect(0)  # a slot was freed
    for client in [*held, extra]:
        await client.close()


@pytest.mark.topology_env({"CHAT_ALLOWED_ORIGINS": "https://chat.example"})
async def test_websocket_upgrades_from_other_origins_are_refused(endpoints: Endpoints) -> None:
    frame, code = await first_frame_and_close(
        f"{endpoints.ws_urls[0]}?room=o", additional_headers={"Origin": "https://evil.example"}
    )
    assert (frame["code"], code) == ("unauthorized", 1008)
    async with websockets.connect(f"{endpoints.ws_urls[0]}?room=o", origin="https://chat.example") as ws:
        assert orjson.loads(await ws.recv())["type"] == "synced"


async def test_history_api_refuses_bad_parameters_without_leaking_internals(endpoints: Endpoints) -> None:
    async with httpx.AsyncClient() as http:
        for base in (f"{endpoints.history_url}", f"{endpoints.chat_urls[0]}/api"):
            for query, code in [
                ("limit=0", "bad_limit"), ("limit=100000", "bad_limit"), ("limit=abc", "bad_limit"),
                ("after=xyz", "bad_after"), ("before=' OR 1=1", "bad_before"), ("bogus=1", "bad_parameter"),
            ]:
                response = await http.get(f"{base}/rooms/general/messages?{query}")
                assert response.status_code == 400, query
                body = response.json()
                assert body["error"]["code"] == code
                assert "Traceback" not in response.text and "plyvel" not in response.text
            response = await http.get(f"{base}/rooms/{'x' * 100}/messages")
            assert (response.status_code, response.json()["error"]["code"]) == (400, "bad_room")


def token(sub: str, ttl: int = 300, secret: str = SECRET) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl}, secret, algorithm="HS256")


@pytest.mark.topology_env({"CHAT_AUTH_SECRET": SECRET, "HISTORY_AUTH_SECRET": SECRET})
async def test_with_a_secret_set_a_signed_token_is_required_and_names_the_author(endpoints: Endpoints) -> None:
    for bad in ["", "&token=garbage", f"&token={token('eve', ttl=-10)}", f"&token={token('eve', secret='x' * 40)}"]:
        frame, code = await first_frame_and_close(f"{endpoints.ws_urls[0]}?room=auth{bad}")
        assert (frame["code"], code) == ("unauthorized", 1008), bad
    url = f"{endpoints.ws_urls[0]}?room=auth&name=mallory&presence=0&token={token('ann')}"
    async with websockets.connect(url) as ws:
        assert orjson.loads(await ws.recv())["type"] == "synced"
        await ws.send(orjson.dumps({"text": "signed", "client_id": "a1"}).decode())
        frames = [orjson.loads(await ws.recv()) for _ in range(2)]
    message = next(f for f in frames if f["type"] == "message")
    assert message["author"] == "ann"
    async with httpx.AsyncClient() as http:
        for base in (endpoints.history_url, f"{endpoints.chat_urls[1]}/api"):
            url = f"{base}/rooms/auth/messages"
            denied = await http.get(url)
            assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
            allowed = await http.get(url, headers={"Authorization": f"Bearer {token('bob')}"})
            assert allowed.status_code == 200
    async with websockets.connect(f"{endpoints.ws_urls[1]}?room=auth&token={token('bob')}") as ws:
        backlog = orjson.loads(await ws.recv())
        assert backlog["type"] == "message" and backlog["author"] == "ann"
