"""`durable-chat` as a real subprocess against real replicas: send, history export, tail with failover."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import uuid
from dataclasses import dataclass

import httpx
import orjson

from tests.e2e.conftest import Endpoints
from tests.support.client import ChatClient
from tests.support.ports import free_port
from tests.support.tail import CLI, Tail, cli_env

ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


@dataclass
class Result:
    rc: int
    out: str
    err: str


async def cli(*args: str, stdin: str | None = None, limit_s: float = 60) -> Result:
    process = await asyncio.create_subprocess_exec(
        CLI, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=cli_env(), process_group=0,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else b""), limit_s)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


async def stored(endpoints: Endpoints, room: str, count: int, limit_s: float = 20) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=endpoints.chat_urls[0]) as http:
        deadline = asyncio.get_running_loop().time() + limit_s
        while True:
            page = (await http.get(f"/api/rooms/{room}/messages", params={"limit": 1000})).json()
            if len(page) >= count or asyncio.get_running_loop().time() > deadline:
                return list(page)
            await asyncio.sleep(0.1)


def room() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"


async def test_send_waits_for_the_ack_and_history_exports_what_was_sent(shared_endpoints: Endpoints) -> None:
    endpoints = shared_endpoints
    r = room()
    a, b = endpoints.chat_urls
    one = await cli("--url", a, "--name", "ada", "send", "--room", r, "hello from the CLI")
    assert one.rc == 0, one.err
    assert ULID.match(one.out.strip())
    lines = await cli("--url", b, "--name", "ada", "send", "--room", r, stdin="line 1\n\nline 2\nline 3\n")
    assert lines.rc == 0, lines.err
    line_ids = lines.out.split()
    assert len(line_ids) == 3 and all(ULID.match(i) for i in line_ids)
    # The same idempotency key gets the first id back from the same replica; through another replica it is
    # published again (the replicas' key caches are local) but stored once (contract section 4).
    first = await cli("--url", a, "--name", "ada", "send", "--room", r, "--client-id", "k-1", "once")
    again = await cli("--url", a, "--name", "ada", "send", "--room", r, "--client-id", "k-1", "once")
    elsewhere = await cli("--url", b, "--name", "ada", "send", "--room", r, "--client-id", "k-1", "once")
    assert first.rc == again.rc == elsewhere.rc == 0
    assert again.out == first.out
    sent = [one.out.strip(), *line_ids, first.out.strip()]

    too_big = await cli("--url", a, "send", "--room", r, "x" * 5000)
    assert too_big.rc == 1 and "too_large" in too_big.err and too_big.out == ""
    nowhere = f"http://127.0.0.1:{free_port()}"
    # With --wait the send keeps trying a service that never answered, until its own --timeout gives up.
    unreachable = await cli("--url", nowhere, "--wait", "10", "send", "--timeout", "2", "--room", r, "x")
    assert unreachable.rc == 3 and "gave up" in unreachable.err
    bad_room = await cli("--url", a, "history", "--room", "no spaces")
    assert bad_room.rc == 2

    await stored(endpoints, r, len(sent))
    exported = await cli("--url", b, "history", "--room", r, "--json")
    assert exported.rc == 0, exported.err
    messages = [orjson.loads(line) for line in exported.out.splitlines()]
    assert [m["id"] for m in messages] == sorted(sent)
    assert [m["text"] for m in messages] == ["hello from the CLI", "line 1", "line 2", "line 3", "once"]
    assert {m["author"] for m in messages} == {"ada"}

    human = await cli("--url", a, "history", "--room", r)
    assert human.rc == 0
    assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ada: hello from the CLI$", human.out.splitlines()[0])


async def test_history_pages_through_a_long_room_with_progress(shared_endpoints: Endpoints) -> None:
    endpoints = shared_endpoints
    r = room()
    sender = ChatClient(endpoints.ws_urls, r, name="bulk")
    await sender.connect(0)
    try:
        for index in range(250):
            await sender.send(f"bulk {index:03d}")
        await sender.wait_for(lambda: len(sender.acks) == 250)
    finally:
        await sender.close()
    await stored(endpoints, r, 250)

    full = await cli("--url", endpoints.chat_urls[1], "history", "--room", r, "--json",
                     "--page-size", "100", "--progress", "always")
    assert full.rc == 0, full.err
    texts = [orjson.loads(line)["text"] for line in full.out.splitlines()]
    assert texts == [f"bulk {i:03d}" for i in range(250)]
    assert "exported 250 messages" in full.err

    ids = [orjson.loads(line)["id"] for line in full.out.splitlines()]
    window = await cli("--url", endpoints.chat_urls[0], "history", "--room", r, "--json",
                       "--after", ids[99], "--limit", "50", "--page-size", "20", "--progress", "never")
    assert window.rc == 0 and window.err == ""
    assert [orjson.loads(line)["id"] for line in window.out.splitlines()] == ids[100:150]

    # History down: a failed page is retried, then the export stops with exit 3 and says where to resume.
    topology = endpoints.local()
    topology.history.kill()  # the next test of the module gets it back
    down = await cli("--url", endpoints.chat_urls[0], "history", "--room", r, "--after", ids[9], "--retries", "1")
    assert down.rc == 3 and down.out == ""
    assert "history_unavailable" in down.err and f"resume with --after {ids[9]}" in down.err


async def test_tail_follows_live_and_resumes_once_after_its_replica_restarts(shared_endpoints: Endpoints) -> None:
    endpoints = shared_endpoints
    topology = endpoints.local()
    r = room()
    sender = ChatClient(endpoints.ws_urls, r, name="sam")
    await sender.connect(1)
    for text in ("old 1", "old 2"):
        await sender.send(text)
    await sender.wait_for(lambda: len(sender.acks) == 2)
    try:
        async with Tail(endpoints.chat_urls[0], "--room", r, "-n", "1") as tail:
            await tail.until(lambda: tail.notes("following") == 1)
            assert tail.texts == ["old 2"]  # -n 1: only the newest of the backlog
            await sender.send("live 1")
            await tail.until(lambda: len(tail.out) == 2)

            # tail's replica dies (SIGKILL) and comes back on the same port after more messages than the 100 a
            # connect without a cursor gets: only a resume with the per-origin cursor shows them all.
            topology.chats[0].kill()
            meanwhile = [f"meanwhile {i}" for i in range(130)]
            for text in meanwhile:
                await sender.send(text)
            await sender.wait_for(lambda: len(sender.acks) == 3 + len(meanwhile))
            assert tail.notes("following") == 1
            await asyncio.to_thread(topology.chats[0].start)
            await tail.until(lambda: tail.notes("following") == 2, limit_s=30)
            await sender.send("after")
            await tail.until(lambda: "after" in tail.texts)
            await asyncio.sleep(0.3)  # anything doubled would show up by now
            assert sorted(tail.texts) == sorted(["old 2", "live 1", *meanwhile, "after"])
            assert len({m["id"] for m in tail.out}) == len(tail.out)
            assert tail.notes("resuming") >= 1
    finally:
        await sender.close()
