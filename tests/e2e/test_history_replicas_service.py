"""History replicas as real processes (history only; the whole system with chat replicas is in other tests).

A replica SIGKILLed and its data directory deleted comes back empty, copies from its peer, and is ready (and
serves reads) only once it holds everything; a copy whose peer is SIGKILLed midway resumes from another peer; the
periodic verify names rooms that differ; export and import move a room between replicas.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import pytest

from services.common.ids import encode_ulid
from services.common.schema import ChatMessage
from services.common.topology import declare_topology, history_queues
from tests.support.procs import ServiceProcess, history_replicas
from tests.support.rabbit import shared_vhost

ROOMS = [f"room-{n}" for n in range(12)]


@pytest.fixture
def amqp_url() -> Iterator[str]:
    with shared_vhost() as url:
        yield url


@pytest.fixture
def stopper() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    try:
        yield started
    finally:
        for process in started:
            if process.running():
                process.kill()


def old_messages(count: int, age_s: float = 120) -> list[ChatMessage]:
    """Messages minted ``age_s`` ago (outside the verify's settle window), some resent under a second id."""
    base_ms = int(time.time() * 1000 - age_s * 1000)
    messages = []
    for n in range(count):
        ts = base_ms + n // 50
        client_id = f"c{n // 2}" if n % 10 < 2 else None  # pairs of ids sharing a client key
        room = "dup" if client_id else ROOMS[n % len(ROOMS)]
        messages.append(ChatMessage(encode_ulid(ts, random.getrandbits(80)), "ORIGIN01", room, "ann", f"text {n}", ts,
                                    client_id))
    return messages


async def publish(amqp_url: str, replicas: int, messages: list[ChatMessage]) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_topology(channel, "chat", history_queues(replicas))
        for start in range(0, len(messages), 500):
            await asyncio.gather(*(
                topology.exchange.publish(aio_pika.Message(m.to_wire(), delivery_mode=2), routing_key="")
                for m in messages[start:start + 500]
            ))
    finally:
        await connection.close()


def digest(url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/digest", timeout=10)
    response.raise_for_status()
    return [orjson.loads(line) for line in response.text.splitlines()]


def stored_count(url: str) -> int:
    return sum(room["count"] for room in digest(url))


def wait_for(predicate: Any, timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        time.sleep(0.1)


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        response = httpx.get(f"{url}/readyz", timeout=2)
    except httpx.HTTPError:
        return 0, {}
    return response.status_code, response.json()


def expected_count(messages: list[ChatMessage]) -> int:
    keys = {(m.room, m.author, m.client_id) for m in messages if m.client_id is not None}
    return sum(1 for m in messages if m.client_id is None) + len(keys)


def start_all(replicas: list[ServiceProcess], stopper: list[ServiceProcess]) -> None:
    for replica in replicas:
        stopper.append(replica)
        replica.start(wait_ready=False)
    for replica in replicas:
        replica.wait_ready()


def test_a_replica_that_lost_its_data_copies_from_its_peer_and_is_ready_only_after(
    amqp_url: str, tmp_path: Path, stopper: list[ServiceProcess]
) -> None:
    # Replica 1 exports slowly (0.8 s per 2000 messages), so the copy lasts long enough to be watched.
    replicas = history_replicas(amqp_url, tmp_path, 2, {"HISTORY_VERIFY_INTERVAL_S": "0.5"})
    replicas[1].env["DURABLE_CHAT_TEST_FAULTS"] = "history.export.delay_s=0.8"
    start_all(replicas, stopper)
    first, second = replicas
    # Started together, neither was ready for the other; each then finds the other ready and equal: complete.
    wait_for(lambda: [readyz(r.url)[1]["copy"]["state"] for r in replicas] == ["done", "done"], timeout=30,
             what="both replicas know they are complete")
    messages = old_messages(2500)
    asyncio.run(publish(amqp_url, 2, messages))
    total = expected_count(messages)
    wait_for(lambda: stored_count(first.url) == stored_count(second.url) == total, what="both replicas store")
    assert digest(first.url) == digest(second.url)

    first.kill()
    shutil.rmtree(tmp_path / "history-db-0")
    while_down = old_messages(500, age_s=90)
    asyncio.run(publish(amqp_url, 2, while_down))  # waits in chat.history for replica 0
    total = expected_count(messages + while_down)  # resent client keys among them are stored once
    wait_for(lambda: stored_count(second.url) == total, what="replica 1 stores what was published meanwhile")

    first.start(wait_ready=False)
    seen: set[str] = set()
    refused_reads = 0
    while True:
        status, body = readyz(first.url)
        if status == 200:
            break
        assert first.running(), first.tail()
        seen.add(body.get("copy", {}).get("state", "down"))
        if body.get("copy", {}).get("state") == "copying":
            read = httpx.get(f"{first.url}/rooms/{ROOMS[0]}/messages", timeout=5)
            if read.status_code == 503:
                assert read.json()["error"]["code"] == "not_ready"
                refused_reads += 1
            else:  # the copy ended between the two requests
                assert read.status_code == 200 and readyz(first.url)[0] == 200
        time.sleep(0.05)
    # Ready means complete: at the first 200 it already holds everything its peer holds.
    assert digest(first.url) == digest(second.url)
    assert stored_count(first.url) == total
    assert "copying" in seen and refused_reads > 0
    assert body["copy"]["state"] == "done" and body["copy"]["peer"] == 1
    assert body["copy"]["messages"] >= total - len(while_down)
    read = httpx.get(f"{first.url}/rooms/{ROOMS[0]}/messages", params={"limit": "1000"}, timeout=5)
    assert read.status_code == 200 and len(read.json()) == sum(1 for m in messages + while_down
                                                               if m.room == ROOMS[0])
    metrics = httpx.get(f"{first.url}/metrics", timeout=5).text
    assert f"durable_chat_history_copy_messages_total {float(body['copy']['stored'])}" in metrics
    assert 'durable_chat_history_replica{ordinal="0"} 1.0' in metrics
    assert "durable_chat_history_copy_in_progress 0.0" in metrics
    log = (tmp_path / "history-0.log").read_text()
    assert '"copy from peer done; ready"' in log and '"rate_per_s"' in log

    # The verify: equal now; a message only replica 1 holds (imported) is one mismatched room on replica 0.
    wait_for(lambda: 'durable_chat_history_digest_mismatched_rooms{peer="1"} 0.0'
             in httpx.get(f"{first.url}/metrics", timeout=5).text, what="verify says equal")
    extra = old_messages(3, age_s=200)[2]  # no client key
    imported = httpx.post(f"{second.url}/import", content=extra.to_wire() + b"\n", timeout=10)
    assert imported.json() == {"received": 1, "stored": 1}
    wait_for(lambda: 'durable_chat_history_digest_mismatched_rooms{peer="1"} 1.0'
             in httpx.get(f"{first.url}/metrics", timeout=5).text, what="verify sees the difference")


def test_export_resumes_after_a_room_and_id_and_import_is_idempotent(
    amqp_url: str, tmp_path: Path, stopper: list[ServiceProcess]
) -> None:
    source, target = history_replicas(amqp_url, tmp_path, 2)
    # Two unrelated single replicas: the target has no peer, so it copies nothing by itself.
    source.env.update({"HISTORY_PEERS": "", "AMQP_HISTORY_REPLICAS": "2"})
    target.env.update({"HISTORY_PEERS": "", "AMQP_EXCHANGE": "other", "HISTORY_REPLICA": "0",
                       "AMQP_HISTORY_QUEUE": "other.history", "AMQP_HISTORY_REPLICAS": "1"})
    start_all([source, target], stopper)
    messages = old_messages(2000)
    asyncio.run(publish(amqp_url, 1, messages))
    wait_for(lambda: stored_count(source.url) == expected_count(messages), what="source stores")

    everything = httpx.get(f"{source.url}/export", timeout=30).content.splitlines()
    keys = [(orjson.loads(b)["room"], orjson.loads(b)["id"]) for b in everything]
    assert keys == sorted(keys) and len(keys) == expected_count(messages)
    room, after = keys[1234]
    rest = httpx.get(f"{source.url}/export", params={"from_room": room, "after": after}, timeout=30)
    assert rest.content.splitlines() == everything[1235:]
    one_room = httpx.get(f"{source.url}/export", params={"room": ROOMS[3]}, timeout=30).content.splitlines()
    assert one_room == [b for b, k in zip(everything, keys, strict=True) if k[0] == ROOMS[3]]
    bad = httpx.get(f"{source.url}/export", params={"after": after}, timeout=5)
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_parameter")

    # Import in two overlapping halves, streamed: the overlap is stored once, and the digests end equal.
    half = len(everything) // 2
    for part in (everything[: half + 100], everything[half:]):
        body = iter([b"\n".join(part[i:i + 300]) + b"\n" for i in range(0, len(part), 300)])
        answer = httpx.post(f"{target.url}/import", content=body, timeout=30).json()
        assert answer["received"] == len(part)
    assert digest(target.url) == digest(source.url)
    again = httpx.post(f"{target.url}/import", content=b"\n".join(everything), timeout=30).json()
    assert again == {"received": len(everything), "stored": 0}
    # A body written with spaces (json.dumps) is stored compact, so pages over it still resume by id.
    spaced = old_messages(3, age_s=300)[2]
    loose = json.dumps(orjson.loads(spaced.to_wire())).encode()
    assert httpx.post(f"{target.url}/import", content=loose, timeout=10).json() == {"received": 1, "stored": 1}
    pages = httpx.get(f"{target.url}/rooms/{spaced.room}/messages", params={"limit": "1"}, timeout=10)
    assert pages.status_code == 200 and pages.json()[0]["id"] == spaced.id
    broken = httpx.post(f"{target.url}/import", content=everything[0] + b"\nnot json\n", timeout=10)
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "bad_message")
    assert "line 2" in broken.json()["error"]["detail"]


@pytest.mark.slow
def test_a_copy_whose_peer_is_killed_midway_resumes_from_another_peer(
    amqp_url: str, tmp_path: Path, stopper: list[ServiceProcess]
) -> None:
    replicas = history_replicas(amqp_url, tmp_path, 3)
    start_all(replicas, stopper)
    messages = old_messages(20000)
    asyncio.run(publish(amqp_url, 3, messages))
    total = expected_count(messages)
    wait_for(lambda: all(stored_count(r.url) == total for r in replicas), timeout=120, what="all store")

    # Replica 0 loses its data; replica 1, the first peer it asks, exports slowly and is killed midway.
    replicas[0].kill()
    shutil.rmtree(tmp_path / "history-db-0")
    replicas[1].kill()
    replicas[1].env["DURABLE_CHAT_TEST_FAULTS"] = "history.export.delay_s=0.5"
    replicas[1].start()
    replicas[0].start(wait_ready=False)
    wait_for(lambda: readyz(replicas[0].url)[1].get("copy", {}).get("messages", 0) > 0, what="the copy starts")
    assert readyz(replicas[0].url)[1]["copy"]["peer"] == 1
    replicas[1].kill()
    replicas[0].wait_ready(timeout=120)
    status, body = readyz(replicas[0].url)
    assert body["copy"]["state"] == "done" and body["copy"]["peer"] == 2
    assert digest(replicas[0].url) == digest(replicas[2].url)
    assert stored_count(replicas[0].url) == total
    log = (tmp_path / "history-0.log").read_text()
    assert '"copy from peer failed; resuming"' in log
    # It resumed where it stopped: far fewer than two full copies went over the wire.
    assert body["copy"]["messages"] < 1.5 * total
