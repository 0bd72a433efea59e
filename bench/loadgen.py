"""Load generators and baselines, one mode per run: ``python -m bench.loadgen '<json spec>'``.

Each mode is bounded in count and time, targets 127.0.0.1 only, and prints one JSON line with its result.
The orchestrator (``python -m bench``) runs it in its own process group, so that the clients never share a
process (or an event loop) with the server they measure.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import os
import sys
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

from bench.common import cpu_seconds, group_pids, percentile, rss_bytes
from bench.wsclient import WsClient

Spec = dict[str, Any]
now_ns = time.monotonic_ns
RUN = os.urandom(4).hex()  # client_ids are unique per run: a repeated key is (rightly) answered, not published


# A bench may also reach the private network of its own test hosts (bench/cluster.py: RabbitMQ nodes in network
# namespaces on a bridge it created); nothing else.
PRIVATE_NET_ENV = "DCT_BENCH_PRIVATE_NET"


def _check_local(url: str) -> None:
    host = urlsplit(url).hostname
    private = os.environ.get(PRIVATE_NET_ENV)
    if host == "127.0.0.1" or (private and host and ipaddress.ip_address(host) in ipaddress.ip_network(private)):
        return
    raise SystemExit(f"refusing to target {host}: load generators target 127.0.0.1 (or {PRIVATE_NET_ENV}) only")


def _lat_summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values_ms, 50),
        "p95_ms": percentile(values_ms, 95),
        "p99_ms": percentile(values_ms, 99),
        "n": len(values_ms),
    }


class _Client:
    """A WsClient with the chat bits: synced, per-origin cursor, counters."""

    __slots__ = ("ws", "synced", "newest", "messages", "acks", "errors", "before_sync")

    def __init__(self) -> None:
        self.ws: WsClient | None = None
        self.synced: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.newest: dict[str, str] = {}
        self.messages = 0
        self.before_sync = 0
        self.acks = 0
        self.errors = 0

    def cursor(self) -> str:
        return ",".join(list(self.newest.values())[-32:])


async def _open(url: str, on_line: Any, deadline_s: float = 30) -> _Client:
    client = _Client()

    def on_text(ws: WsClient, payload: bytes) -> None:
        for line in payload.split(b"\n") if b"\n" in payload else (payload,):
            on_line(client, line)

    client.ws = await WsClient.connect(url, on_text, timeout=deadline_s)
    return client


def _default_line(client: _Client, line: bytes) -> dict[str, Any] | None:
    """Handle control frames; return a decoded message frame, or None."""
    if line.startswith(b'{"type":"message"'):
        frame: dict[str, Any] = orjson.loads(line)
        client.messages += 1
        if not client.synced.done():
            client.before_sync += 1
        origin = frame["origin"]
        if frame["id"] > client.newest.get(origin, ""):
            client.newest.pop(origin, None)
            client.newest[origin] = frame["id"]
        return frame
    if line.startswith(b'{"type":"synced"'):
        if not client.synced.done():
            client.synced.set_result(time.monotonic())
    elif line.startswith(b'{"type":"ack"'):
        client.acks += 1
    elif line.startswith(b'{"type":"error"'):
        client.errors += 1
    return None


def _close_all(clients: list[_Client]) -> None:
    for c in clients:
        assert c.ws is not None
        c.ws.close()


async def _connect_all(
    urls: list[str],
    n: int,
    query: dict[str, str],
    on_line: Any,
    concurrency: int = 100,
    cursors: list[str] | None = None,
) -> list[_Client]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> _Client:
        params = dict(query)
        if cursors is not None and cursors[i]:
            params["after"] = cursors[i]
        async with sem:
            client = await _open(f"{urls[i % len(urls)]}?{urlencode(params)}", on_line)
            await asyncio.wait_for(asyncio.shield(client.synced), 60)
            return client

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def _cpu_groups(spec: Spec) -> dict[str, list[int]]:
    return {name: [p for g in pgids for p in group_pids(g)] for name, pgids in spec.get("cpu_groups", {}).items()}


# ---------------------------------------------------------------- fan-out
async def fanout(spec: Spec) -> dict[str, Any]:
    urls, n, rate = spec["urls"], spec["clients"], spec["rate"]
    for url in urls:
        _check_local(url)
    query = {"room": spec["room"], "name": "bench"}
    if spec.get("coalesce"):
        query["coalesce"] = "1"
    window = {"on": False, "count": 0}
    latencies: list[int] = []

    # Closed loop (``window``: messages in flight per sender): a sender sends its next message when one of its
    # own comes back, so the rate is whatever the system sustains. Open loop (``rate``): a fixed offered rate.
    in_flight = spec.get("window", 0)
    sender_index: dict[int, int] = {}
    seq = 0

    def send_next(sender: _Client) -> None:
        nonlocal seq
        assert sender.ws is not None
        text = f"{sender_index[id(sender)]}:{seq}|{now_ns()}"
        sender.ws.send_text(orjson.dumps({"type": "send", "text": text, "client_id": f"f{RUN}-{seq}"}))
        seq += 1

    def on_line(client: _Client, line: bytes) -> None:
        if line.startswith(b'{"type":"message"'):
            if window["on"] or in_flight:
                frame = orjson.loads(line)
                text = frame["text"]
                if window["on"]:
                    window["count"] += 1
                    latencies.append(now_ns() - int(text.split("|", 1)[1]))
                mine = sender_index.get(id(client))
                if in_flight and mine is not None and text.startswith(f"{mine}:"):
                    send_next(client)
            elif not client.synced.done():
                client.before_sync += 1
        else:
            _default_line(client, line)

    clients = await _connect_all(urls, n, query, on_line)
    senders = [clients[i] for i in range(min(spec["senders"], n))]
    sender_index.update((id(sender), i) for i, sender in enumerate(senders))
    for sender in senders if in_flight else []:
        for _ in range(in_flight):
            send_next(sender)
    groups = _cpu_groups(spec)
    warmup, duration = spec["warmup"], spec["duration"]
    t_start = time.monotonic()
    t_window, t_end = t_start + warmup, t_start + warmup + duration
    sent_in_window = 0
    cpu0: dict[str, float] = {}
    cpu1: dict[str, float] = {}
    seq_at_window = 0
    while True:
        now = time.monotonic()
        if not window["on"] and now >= t_window and not cpu0:
            cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
            window["on"], t_window_real, seq_at_window = True, now, seq
        if now >= t_end:
            window["on"] = False
            cpu1 = {k: cpu_seconds(v) for k, v in groups.items()}
            wall = now - t_window_real
            if in_flight:
                sent_in_window = seq - seq_at_window
            break
        due = 0 if in_flight else int((now - t_start) * rate)
        while seq < due:
            send_next(senders[seq % len(senders)])
            if window["on"]:
                sent_in_window += 1
        await asyncio.sleep(0.002)
    in_flight = 0  # stop the closed loop
    await asyncio.sleep(1.0)
    closed = sum(1 for c in clients if c.ws is not None and c.ws.closed.done())
    errors = sum(c.errors for c in clients)
    _close_all(clients)
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    deliveries = window["count"]
    result = {
        "deliveries": deliveries,
        "wall_s": wall,
        "deliveries_per_s": deliveries / wall,
        "offered_msgs_per_s": rate if not spec.get("window") else sent_in_window / wall,
        "offered_deliveries_per_s": (rate if not spec.get("window") else sent_in_window / wall) * n,
        "sent_in_window": sent_in_window,
        "delivered_fraction": deliveries / max(1, sent_in_window * n),
        "closed_clients": closed,
        "errors": errors,
        **_lat_summary([v / 1e6 for v in latencies]),
        "cpu_s": cpu,
        "cpu_us_per_delivery": {k: v / max(1, deliveries) * 1e6 for k, v in cpu.items()},
    }
    return result


# ---------------------------------------------------------------- publish path (WebSocket senders)
async def publish(spec: Spec) -> dict[str, Any]:
    urls, n, inflight = spec["urls"], spec["senders"], spec["inflight"]
    for url in urls:
        _check_local(url)
    window = {"on": False, "acks": 0}
    latencies: list[int] = []
    sent_at: dict[str, int] = {}
    seqs = [0] * n

    def send_one(i: int, client: _Client) -> None:
        client_id = f"p{RUN}-{i}-{seqs[i]}"
        seqs[i] += 1
        sent_at[client_id] = now_ns()
        assert client.ws is not None
        client.ws.send_text(
            orjson.dumps({"type": "send", "text": f"publish bench {client_id}", "client_id": client_id})
        )

    index: dict[int, int] = {}

    def on_line(client: _Client, line: bytes) -> None:
        if line.startswith(b'{"type":"ack"'):
            frame = orjson.loads(line)
            started = sent_at.pop(frame["client_id"], None)
            if window["on"]:
                window["acks"] += 1
                if started is not None:
                    latencies.append(now_ns() - started)
            if running["on"]:
                send_one(index[id(client)], client)
        else:
            _default_line(client, line)

    running = {"on": False}
    clients = []
    for i in range(n):
        query = {"room": f"{spec['room']}-{i}", "name": f"s{i}"}
        client = await _open(f"{urls[i % len(urls)]}?{urlencode(query)}", on_line)
        index[id(client)] = i
        await asyncio.wait_for(asyncio.shield(client.synced), 30)
        clients.append(client)
    groups = _cpu_groups(spec)
    running["on"] = True
    for i, client in enumerate(clients):
        for _ in range(inflight):
            send_one(i, client)
    await asyncio.sleep(spec["warmup"])
    cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
    window["on"], t0 = True, time.monotonic()
    await asyncio.sleep(spec["duration"])
    window["on"], wall = False, time.monotonic() - t0
    cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
    running["on"] = False
    await asyncio.sleep(1.0)
    errors = sum(c.errors for c in clients)
    _close_all(clients)
    acks = window["acks"]
    return {
        "acked": acks,
        "wall_s": wall,
        "msgs_per_s": acks / wall,
        "errors": errors,
        "in_flight": n * inflight,
        **_lat_summary([v / 1e6 for v in latencies]),
        "cpu_s": cpu,
        "cpu_us_per_msg": {k: v / max(1, acks) * 1e6 for k, v in cpu.items()},
    }


def _wire(ids: Any, room: str, text: str, client_id: str | None = None) -> bytes:
    from services.common.schema import ChatMessage

    msg_id, ts = ids.mint()
    return ChatMessage(
        id=msg_id, origin="BENCHPUB", room=room, author="bench", text=text, ts=ts, client_id=client_id
    ).to_wire()


async def amqp_publish(spec: Spec) -> dict[str, Any]:
    """Baseline: aio-pika publishing with confirms, pipelined (``inflight`` awaited publishes at a time)."""
    import aio_pika

    from services.common.ids import UlidGenerator

    _check_local(spec["amqp_url"].replace("amqp://guest:guest@", "amqp://"))
    connection = await aio_pika.connect(spec["amqp_url"])
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(spec["exchange"], ensure=False)
        ids = UlidGenerator()
        window = {"on": False, "acks": 0}
        latencies: list[int] = []
        running = True
        count = spec.get("count")
        published = 0

        async def worker(w: int) -> None:
            nonlocal published
            k = 0
            while running and (count is None or published < count):
                published += 1
                body = _wire(ids, spec["room"], f"publish bench {w}-{k}", f"b{RUN}-{w}-{k}")
                k += 1
                started = now_ns()
                await exchange.publish(
                    aio_pika.Message(
                        body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json"
                    ),
                    routing_key="",
                    mandatory=True,
                    timeout=spec.get("timeout", 30),
                )
                if window["on"]:
                    window["acks"] += 1
                    latencies.append(now_ns() - started)

        groups = _cpu_groups(spec)
        tasks = [asyncio.create_task(worker(w)) for w in range(spec["inflight"])]
        if count is not None:  # fill mode: publish `count` messages as fast as confirms allow
            t0 = time.monotonic()
            window["on"] = True
            await asyncio.wait_for(asyncio.gather(*tasks), spec.get("max_s", 600))
            wall = time.monotonic() - t0
            return {"published": window["acks"], "wall_s": wall, "msgs_per_s": window["acks"] / wall}
        await asyncio.sleep(spec["warmup"])
        cpu0 = {k: cpu_seconds(v) for k, v in groups.items()}
        window["on"], t0 = True, time.monotonic()
        await asyncio.sleep(spec["duration"])
        window["on"], wall = False, time.monotonic() - t0
        cpu = {k: cpu_seconds(v) - cpu0[k] for k, v in groups.items()}
        running = False
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
        acks = window["acks"]
        return {
            "acked": acks,
            "wall_s": wall,
            "msgs_per_s": acks / wall,
            "errors": 0,
            "in_flight": spec["inflight"],
            **_lat_summary([v / 1e6 for v in latencies]),
            "cpu_s": cpu,
            "cpu_us_per_msg": {k: v / max(1, acks) * 1e6 for k, v in cpu.items()},
        }
    finally:
        await connection.close()


# ---------------------------------------------------------------- history ingest baseline
async def consume(spec: Spec) -> dict[str, Any]:
    """Baseline: a bare aio-pika consumer of the queue, same prefetch, acking each delivery without storing."""
    import aio_pika

    connection = await aio_pika.connect(spec["amqp_url"])
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=spec["prefetch"])
        queue = await channel.get_queue(spec["queue"], ensure=False)
        expected = spec["expected"]
        lo, hi = int(expected * 0.05), int(expected * 0.95)
        marks: dict[str, float] = {}
        done = asyncio.get_running_loop().create_future()
        count = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            await message.ack()
            count += 1
            if count == lo:
                marks["lo"] = time.monotonic()
            elif count == hi:
                marks["hi"] = time.monotonic()
            if count >= expected and not done.done():
                done.set_result(None)

        t0 = time.monotonic()
        await queue.consume(on_message)
        await asyncio.wait_for(done, spec.get("max_s", 600))
        wall = time.monotonic() - t0
        return {
            "consumed": count,
            "wall_s": wall,
            "msgs_per_s": (hi - lo) / (marks["hi"] - marks["lo"]),
            "method": "5%..95% of the backlog",
        }
    finally:
        await connection.close()


# ---------------------------------------------------------------- connections
async def connect_idle(spec: Spec) -> dict[str, Any]:
    url, n, pid = spec["url"], spec["clients"], spec["server_pid"]
    _check_local(url)
    query = {"room": spec["room"], **spec.get("query", {})}
    warm = await _connect_all([url], min(50, n), query, _default_line)
    _close_all(warm)
    await asyncio.sleep(spec.get("settle", 2.0))
    rss0 = rss_bytes(pid)
    t0 = time.monotonic()
    clients = await _connect_all([url], n, query, _default_line, concurrency=spec.get("concurrency", 100))
    connect_s = time.monotonic() - t0
    await asyncio.sleep(spec.get("settle", 2.0))
    rss1 = rss_bytes(pid)
    open_now = sum(1 for c in clients if c.ws is not None and not c.ws.closed.done())
    _close_all(clients)
    await asyncio.sleep(0.5)
    return {
        "clients": n,
        "open": open_now,
        "rss_before": rss0,
        "rss_after": rss1,
        "bytes_per_connection": (rss1 - rss0) / n,
        "connect_s": connect_s,
    }


async def _send_and_wait(url: str, room: str, count: int, prefix: str) -> list[str]:
    acked: list[str] = []

    def on_line(client: _Client, line: bytes) -> None:
        if line.startswith(b'{"type":"ack"'):
            acked.append(orjson.loads(line)["id"])
        else:
            _default_line(client, line)

    sender = await _open(f"{url}?{urlencode({'room': room, 'name': 'sender'})}", on_line)
    await asyncio.wait_for(asyncio.shield(sender.synced), 30)
    assert sender.ws is not None
    for i in range(count):
        sender.ws.send_text(orjson.dumps({"type": "send", "text": f"{prefix} {i}", "client_id": f"{prefix}{RUN}-{i}"}))
    deadline = time.monotonic() + 60
    while len(acked) < count and time.monotonic() < deadline:  # noqa: ASYNC110 (bounded poll)
        await asyncio.sleep(0.01)
    sender.ws.close()
    if len(acked) < count:
        raise RuntimeError(f"only {len(acked)} of {count} sends acked")
    return acked


def _history_has(history_url: str, room: str, last_id: str, timeout: float = 30) -> None:
    _check_local(history_url)
    parts = urlsplit(history_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=5)
        conn.request("GET", f"/rooms/{room}/messages?latest=1&limit=1")
        body = conn.getresponse().read()
        conn.close()
        page = orjson.loads(body)
        if page and page[-1]["id"] >= last_id:
            return
        time.sleep(0.05)
    raise RuntimeError("history did not store the gap in time")


async def reconnect(spec: Spec) -> dict[str, Any]:
    urls, n, gap, room = spec["urls"], spec["clients"], spec["gap"], spec["room"]
    for url in urls:
        _check_local(url)
    await _send_and_wait(urls[0], room, 1, "seed")
    clients = await _connect_all(urls, n, {"room": room}, _default_line)
    cursors = [c.cursor() for c in clients]
    _close_all(clients)
    await asyncio.sleep(0.5)
    acked = await _send_and_wait(urls[0], room, gap, "gap")
    if spec.get("history_url"):
        _history_has(spec["history_url"], room, max(acked))
    t0 = time.monotonic()
    clients = await _connect_all(urls, n, {"room": room}, _default_line, concurrency=n, cursors=cursors)
    total = time.monotonic() - t0
    per_client = [(c.synced.result() - t0) * 1000 for c in clients]
    recovered = [c.before_sync for c in clients]
    _close_all(clients)
    await asyncio.sleep(0.5)
    return {
        "clients": n,
        "gap": gap,
        "total_s": total,
        **_lat_summary(per_client),
        "all_recovered": all(r >= gap for r in recovered),
        "min_recovered": min(recovered),
        "max_recovered": max(recovered),
    }


async def seam(spec: Spec) -> dict[str, Any]:
    """Connect latency (connect to `synced`) for a client getting 100 messages of history in a busy room."""
    urls, room, rate = spec["urls"], spec["room"], spec["rate"]
    for url in urls:
        _check_local(url)
    acked = await _send_and_wait(urls[0], room, spec["history"], "hist")
    if spec.get("history_url"):
        _history_has(spec["history_url"], room, max(acked))
    busy = await _open(f"{urls[0]}?{urlencode({'room': room, 'name': 'busy'})}", _default_line)
    await asyncio.wait_for(asyncio.shield(busy.synced), 30)
    running = True

    async def keep_busy() -> None:
        seq = 0
        t0 = time.monotonic()
        while running:
            due = int((time.monotonic() - t0) * rate)
            while seq < due:
                assert busy.ws is not None
                busy.ws.send_text(
                    orjson.dumps({"type": "send", "text": f"busy {seq}", "client_id": f"busy{RUN}-{seq}"})
                )
                seq += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(keep_busy())
    await asyncio.sleep(1.0)
    latencies, backlog = [], []
    deadline = time.monotonic() + spec.get("max_s", 120)
    for i in range(spec["probes"]):
        if time.monotonic() > deadline:
            break
        t0 = time.monotonic()
        client = await _open(f"{urls[i % len(urls)]}?{urlencode({'room': room})}", _default_line)
        synced_at = await asyncio.wait_for(asyncio.shield(client.synced), 30)
        latencies.append((synced_at - t0) * 1000)
        backlog.append(client.before_sync)
        assert client.ws is not None
        client.ws.close()
        await asyncio.sleep(spec.get("pause_s", 0.02))
    running = False
    await task
    assert busy.ws is not None
    busy.ws.close()
    return {
        "probes": len(latencies),
        "busy_rate": rate,
        **_lat_summary(latencies),
        "backlog_min": min(backlog),
        "backlog_median": sorted(backlog)[len(backlog) // 2],
    }


# ---------------------------------------------------------------- history read
def http_read(spec: Spec) -> dict[str, Any]:
    """Page through a room over HTTP with after=<last id> until a short page; count messages and bytes."""
    base = spec["base_url"]
    _check_local(base)
    port = urlsplit(base).port
    ndjson, limit, room = spec["ndjson"], spec["limit"], spec["room"]
    headers = {"Accept": "application/x-ndjson" if ndjson else "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    after, count, nbytes, requests = "", 0, 0, 0
    t0 = time.monotonic()
    while True:
        path = f"/rooms/{room}/messages?limit={limit}" + (f"&after={after}" if after else "")
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        requests += 1
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
        nbytes += len(body)
        if ndjson:
            page = body.count(b"\n")
        else:
            page = body.count(b'{"v":')
        if page == 0:
            break
        count += page
        tail = body.rindex(b'"id":"') + 6
        after = body[tail : tail + 26].decode()
        if page < limit or count >= spec.get("max_messages", 10**9):
            break
    wall = time.monotonic() - t0
    conn.close()
    return {"messages": count, "bytes": nbytes, "requests": requests, "wall_s": wall, "msgs_per_s": count / wall}


def leveldb_read(spec: Spec) -> dict[str, Any]:
    """Baseline: plyvel iteration of the room plus JSON encoding, in one process (no HTTP)."""
    import plyvel

    db = plyvel.DB(spec["path"])
    prefix = b"m\x00" + spec["room"].encode() + b"\x00"
    count, nbytes, chunk = 0, 0, []
    t0 = time.monotonic()
    decode = spec["format"] == "json"
    for value in db.iterator(prefix=prefix, include_key=False):
        chunk.append(orjson.dumps(orjson.loads(value)) if decode else value)
        if len(chunk) == 1000:
            out = b"[" + b",".join(chunk) + b"]"
            nbytes += len(out)
            count += len(chunk)
            chunk = []
    if chunk:
        out = b"[" + b",".join(chunk) + b"]"
        nbytes += len(out)
        count += len(chunk)
    wall = time.monotonic() - t0
    db.close()
    return {"messages": count, "bytes": nbytes, "wall_s": wall, "msgs_per_s": count / wall, "format": spec["format"]}


MODES = {
    "fanout": fanout,
    "publish": publish,
    "amqp_publish": amqp_publish,
    "consume": consume,
    "connect_idle": connect_idle,
    "reconnect": reconnect,
    "seam": seam,
}
SYNC_MODES = {"http_read": http_read, "leveldb_read": leveldb_read}


def main() -> None:
    spec: Spec = json.loads(sys.argv[1])
    mode = spec["mode"]
    if mode in SYNC_MODES:
        result = SYNC_MODES[mode](spec)
    else:
        runner = asyncio.run
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:
            pass
        result = runner(asyncio.wait_for(MODES[mode](spec), spec.get("timeout_s", 600)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
