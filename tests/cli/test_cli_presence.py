"""`durable-chat who` and `tail --presence` as real subprocesses against two real replicas."""

from __future__ import annotations

import orjson

from tests.cli.test_cli import cli, room
from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.tail import Tail


async def test_who_lists_the_cluster_and_tail_presence_shows_joins_and_leaves(shared_endpoints: Endpoints) -> None:
    endpoints = shared_endpoints
    r = room()
    ann = ChatClient(endpoints.ws_urls, r, name="ann")
    bob = ChatClient(endpoints.ws_urls, r, name="bob")
    await ann.connect(1)
    try:
        async with Tail(endpoints.chat_urls[0], "--room", r, "--presence", "--name", "watcher") as tail:
            def frames(kind: str) -> list[dict[str, object]]:
                return [f for f in tail.out if f.get("type") == kind]

            await tail.until(lambda: bool(frames("presence")))
            assert {m["author"] for m in frames("presence")[0]["members"]} == {"ann", "watcher"}  # type: ignore[attr-defined]
            await bob.connect(1)
            await tail.until(lambda: {"type": "join", "room": r, "author": "bob"} in tail.out)

            # `send` is a tool's connection: it is not announced as a member (presence=0).
            sent = await cli("--url", endpoints.chat_urls[1], "--name", "sam", "send", "--room", r, "hello")
            assert sent.rc == 0, sent.err
            await tail.until(lambda: any(m.get("text") == "hello" for m in tail.out))

            who = await cli("--url", endpoints.chat_urls[1], "who", "--room", r)  # any replica answers for all
            assert who.rc == 0, who.err
            assert [line.split("\t")[0] for line in who.out.splitlines()] == ["ann", "watcher", "bob"]
            assert all(line.endswith("\t1 connection") for line in who.out.splitlines())
            assert f"#{r}: 3 members, 3 connected" in who.err
            as_json = await cli("--url", endpoints.chat_urls[0], "who", "--room", r, "--json")
            body = orjson.loads(as_json.out)
            assert body["occupancy"] == 3 and body["total"] == 3

            await bob.close()
            await tail.until(lambda: {"type": "leave", "room": r, "author": "bob"} in tail.out)
            assert not [f for f in frames("join") + frames("leave") if f["author"] == "sam"]
    finally:
        await ann.close()
        await bob.close()


async def test_who_refuses_a_bad_room_and_reports_an_unreachable_service(shared_endpoints: Endpoints) -> None:
    bad = await cli("--url", shared_endpoints.chat_urls[0], "who", "--room", "no spaces")
    assert bad.rc == 2  # refused by the argument parser before any request
    down = await cli("--url", "http://127.0.0.1:9", "who", "--room", "r")
    assert down.rc == 3 and "cannot reach the chat service" in down.err
