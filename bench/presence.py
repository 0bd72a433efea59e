"""Presence: what presence for 1,000 connections in 100 rooms costs the fan-out (issue 15: at most 5 %).

Two topologies run side by side, the same except `CHAT_PRESENCE_ENABLED` (on: heartbeats every `HEARTBEAT_S`, a
short interval so that several fall inside every window). Each measurement holds 1,000 named connections in 100
rooms on the measured topology (a helper process, `python -m bench.presence hold`) and runs the fan-out load
generator as bench/fanout.py does on top (2 x 100 clients in one room, 16 senders, 500 msg/s: saturated, where a
cost shows in deliveries/s). Three conditions, alternated in the same run, medians of the repetitions: presence off
(the baseline; its connections send typing frames, which the replicas drop), presence on with the connections
only joined (joins, heartbeats), and presence on with every connection sending `typing` every `TYPING_EVERY_S`
(about 33 typing events/s, each shown to the 9 others of its room: a busy chat).

    python -m bench presence [--quick] [--repeats N]
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from bench.common import Helper, Report, Row, cpu_seconds, log, median, run_loadgen, topology, workdir

CONNECTIONS, ROOMS = 1000, 100
HEARTBEAT_S = 3
TYPING_EVERY_S = 30.0
READY_TIMEOUT_S = 120
IDLE_S = 5.0  # replica CPU measured with only the presence load, before each fan-out run


# (condition, topology, typing interval per connection in s or None): the baseline first.
CONDITIONS = [
    ("presence off", "off", TYPING_EVERY_S),
    ("presence on, no typing", "on", None),
    (f"presence on, typing every {TYPING_EVERY_S:g} s", "on", TYPING_EVERY_S),
]


def run(ctx: Any) -> Report:
    per_replica = 50 if ctx.quick else 100
    rates = [250] if ctx.quick else [500]
    n = 2 * per_replica
    report = Report("presence", ctx.command)
    report.params = {
        "presence_connections": CONNECTIONS, "presence_rooms": ROOMS, "typing_every_s": TYPING_EVERY_S,
        "presence_heartbeat_s": HEARTBEAT_S, "fanout_clients": n, "rates": rates, "repeats": ctx.repeats,
        "conditions": [name for name, _, _ in CONDITIONS],
    }
    env = {"CHAT_PRESENCE_HEARTBEAT_S": str(HEARTBEAT_S), "CHAT_PRESENCE_TTL_S": str(HEARTBEAT_S * 3)}
    topologies = {
        "on": topology(ctx.broker.vhost("presence-on"), workdir("presence-on"), env=env),
        "off": topology(
            ctx.broker.vhost("presence-off"), workdir("presence-off"), env={**env, "CHAT_PRESENCE_ENABLED": "false"}
        ),
    }
    try:
        for topo in topologies.values():
            topo.start()
        broker = [ctx.broker.pgid] if ctx.broker.pgid else []
        results: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for rate in rates:
            for rep in range(ctx.repeats):
                order = CONDITIONS if rep % 2 == 0 else list(reversed(CONDITIONS))
                for name, which, typing_every_s in order:
                    topo = topologies[which]
                    urls = [c.ws_url for c in topo.chats]
                    groups = {"replicas": [c.pid for c in topo.chats], "broker": broker, "history": [topo.history.pid]}
                    log(f"presence: {name}, fan-out {rate} msg/s x {n}, rep {rep + 1}")
                    with _held(urls, ctx.logs / "presence-hold.log", f"{which}-{rate}-{rep}", typing_every_s):
                        idle = _cores(groups["replicas"], IDLE_S)
                        res = run_loadgen(_fanout(urls, n, rate, groups, ctx.quick), ctx.logs / "loadgen.log", 180)
                    res.update(system=name, rate=rate, rep=rep, idle_replica_cores=idle)
                    log(
                        f"  {res['deliveries_per_s']:.0f} deliveries/s ({res['delivered_fraction']:.3f} of offered), "
                        f"p99 {res['p99_ms']:.1f} ms, cpu us/delivery {res['cpu_us_per_delivery']}"
                    )
                    report.runs.append(res)
                    results.setdefault((rate, name), []).append(res)
        for rate in rates:
            off = results[(rate, CONDITIONS[0][0])]
            for name, _, _ in CONDITIONS[1:]:
                on = results[(rate, name)]
                tag = f"{rate} msg/s x {n}, {name}"
                dps_on = median([r["deliveries_per_s"] for r in on])
                dps_off = median([r["deliveries_per_s"] for r in off])
                report.rows.append(
                    Row(f"{tag}: deliveries/s", dps_on, dps_off, "deliveries/s", ">= 0.95x", dps_on >= 0.95 * dps_off)
                )
                report.rows.append(
                    Row(
                        f"{tag}: CPU/delivery, replicas",
                        median([r["cpu_us_per_delivery"]["replicas"] for r in on]),
                        median([r["cpu_us_per_delivery"]["replicas"] for r in off]),
                        "us", higher_is_better=False,
                    )
                )
                report.rows.append(
                    Row(f"{tag}: latency p99", median([r["p99_ms"] for r in on]), median([r["p99_ms"] for r in off]),
                        "ms", higher_is_better=False)
                )
                report.rows.append(
                    Row(
                        f"{name}: replica CPU, no fan-out",
                        median([r["idle_replica_cores"] for r in on]),
                        median([r["idle_replica_cores"] for r in off]),
                        "cores", higher_is_better=False,
                        note=f"{IDLE_S:g} s with only the {CONNECTIONS} connections, before each fan-out run",
                    )
                )
        report.notes.append(
            f"baseline: presence off (CHAT_PRESENCE_ENABLED=false) with the same {CONNECTIONS} named connections in "
            f"{ROOMS} rooms, typing every {TYPING_EVERY_S:g} s (the replicas drop those frames); same run, alternated"
        )
        report.notes.append("medians of alternated repetitions; the load generators share the 2 cores")
        return report
    finally:
        for topo in topologies.values():
            topo.stop()


def _cores(pids: list[int], seconds: float) -> float:
    """CPU the processes used over ``seconds`` of wall time, in cores."""
    start, began = cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pids) - start) / (time.monotonic() - began)


def _fanout(urls: list[str], n: int, rate: int, groups: dict[str, list[int]], quick: bool) -> dict[str, Any]:
    """The load generator's fan-out mode, as bench/fanout.py runs it (one JSON object per frame)."""
    return {
        "mode": "fanout", "urls": urls, "clients": n, "senders": 16, "rate": rate, "room": "fanout",
        "coalesce": False, "warmup": 1.5 if quick else 2.0, "duration": 4.0 if quick else 8.0,
        "cpu_groups": groups, "timeout_s": 120,
    }


class _held:
    """The presence load on a topology for the length of one measurement: a helper process, killed after it."""

    def __init__(self, urls: list[str], log_path: Path, tag: str, typing_every_s: float | None) -> None:
        self._ready = workdir(f"presence-ready-{tag}") / "ready"
        spec = {"urls": urls, "connections": CONNECTIONS, "rooms": ROOMS, "typing_every_s": typing_every_s,
                "ready_file": str(self._ready)}
        self._helper = Helper(["-m", "bench.presence", "hold", json.dumps(spec)], log_path)

    def __enter__(self) -> None:
        self._helper.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._ready.exists():
            assert self._helper.process is not None
            if self._helper.process.poll() is not None or time.monotonic() > deadline:
                self._helper.kill()
                raise RuntimeError(f"presence load not ready: {self._helper.log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self._helper.kill()


async def hold(spec: dict[str, Any]) -> None:
    """Open the named connections (presence on by default), then keep them typing until killed."""
    from bench.loadgen import _check_local, _default_line, _open

    urls, count, rooms = spec["urls"], spec["connections"], spec["rooms"]
    for url in urls:
        _check_local(url)
    gate = asyncio.Semaphore(100)

    async def member(room: int, i: int) -> Any:
        # Named, so that each is a member; a room's connections are spread over both replicas.
        query = urlencode({"room": f"presence-{room}", "name": f"user-{room}-{i}"})
        async with gate:
            client = await _open(f"{urls[i % len(urls)]}?{query}", _default_line)
            await asyncio.wait_for(asyncio.shield(client.synced), 60)
            return client

    clients = await asyncio.gather(*(member(r, i) for r in range(rooms) for i in range(count // rooms)))
    await asyncio.to_thread(Path(spec["ready_file"]).touch)
    typing = orjson.dumps({"type": "typing"})
    every = spec["typing_every_s"]
    if every is None:  # only hold the connections (joins, heartbeats)
        await asyncio.Event().wait()
    next_at = [time.monotonic() + random.uniform(0, every) for _ in clients]
    while True:
        now = time.monotonic()
        for index, client in enumerate(clients):
            if next_at[index] <= now and client.ws is not None:
                client.ws.send_text(typing)
                next_at[index] = now + every
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    if sys.argv[1:2] != ["hold"]:
        raise SystemExit("usage: python -m bench.presence hold '<json spec>'")
    asyncio.run(hold(json.loads(sys.argv[2])))
