"""1. Fan-out: clients over 2 replicas in one room; open loop (M messages/s offered) and closed loop.

Points: the closed loop of issue 14 (100 clients, 4 senders, each keeping 10 messages in flight: a sender sends
its next message when one of its own comes back, so the rate is what the system sustains), then 200 clients with
16 senders at 100, 250 and 500 msg/s. ``BENCH_FANOUT_POINTS`` (comma-separated ``window``, ``100``, ``250``,
``500``) runs some of them.

Figure: deliveries/s and publish-to-delivery latency (send time in the payload, same clock) through the whole
system (WebSocket send -> replica -> broker with confirms -> both replicas -> every client). Baseline, same run,
same clients: a bare `websockets.broadcast` server (bench/bare_server.py). Also server CPU per delivery: with
the load generator on the same 2 cores, CPU per delivery is what decides deliveries/s at saturation.
"""

from __future__ import annotations

import os
from typing import Any

from bench.common import Helper, Report, Row, free_port, log, median, run_loadgen, topology, workdir

WINDOW_POINT = {"clients": 100, "senders": 4, "window": 10, "rate": 0}


def _points(quick: bool) -> dict[str, dict[str, int]]:
    """Name -> load: the closed loop of issue 14, then the open-loop rates."""
    rate_clients = 100 if quick else 200
    points = {"100 clients x 4 senders x window 10": dict(WINDOW_POINT)}
    for rate in [100] if quick else [100, 250, 500]:
        points[f"{rate} msg/s x {rate_clients}"] = {"clients": rate_clients, "senders": 16, "window": 0, "rate": rate}
    wanted = os.environ.get("BENCH_FANOUT_POINTS")
    if wanted:
        keys = {key.strip() for key in wanted.split(",")}
        points = {
            name: load for name, load in points.items()
            if ("window" if load["window"] else str(load["rate"])) in keys
        }
    return points


def _spec(
    urls: list[str], load: dict[str, int], coalesce: bool, groups: dict[str, list[int]], quick: bool
) -> dict[str, Any]:
    return {
        "mode": "fanout",
        "urls": urls,
        **load,
        "room": "fanout",
        "coalesce": coalesce,
        "warmup": 1.5 if quick else 2.0,
        "duration": 4.0 if quick else 8.0,
        "cpu_groups": groups,
        "timeout_s": 120,
    }


def run(ctx: Any) -> Report:
    points = _points(ctx.quick)
    wd = workdir("fanout")
    amqp = ctx.broker.vhost("fanout")
    topo = topology(amqp, wd)
    bare_port = free_port()
    bare = Helper(["-m", "bench.bare_server", str(bare_port)], ctx.logs / "bare-fanout.log")
    report = Report("fanout", ctx.command)
    report.params = {
        "replicas": 2,
        "points": points,
        "repeats": ctx.repeats,
        "frame": "one JSON object per frame unless coalesce=1",
    }
    try:
        topo.start()
        bare.start()
        bare.wait_port(bare_port)
        broker_group = [ctx.broker.pgid] if ctx.broker.pgid else []
        systems = {
            "bare": ([f"ws://127.0.0.1:{bare_port}/ws"], False, {"server": [bare.pid]}),
            "durable-chat": (
                [c.ws_url for c in topo.chats],
                False,
                {"replicas": [c.pid for c in topo.chats], "broker": broker_group, "history": [topo.history.pid]},
            ),
            "durable-chat coalesce=1": (
                [c.ws_url for c in topo.chats],
                True,
                {"replicas": [c.pid for c in topo.chats], "broker": broker_group, "history": [topo.history.pid]},
            ),
        }
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for point, load in points.items():
            for rep in range(ctx.repeats):
                order = list(systems) if rep % 2 == 0 else list(reversed(systems))
                for name in order:
                    urls, coalesce, groups = systems[name]
                    log(f"fanout {name} {point} rep={rep + 1}")
                    res = run_loadgen(_spec(urls, load, coalesce, groups, ctx.quick), ctx.logs / "loadgen.log", 180)
                    res.update(system=name, point=point, rate=load["rate"], rep=rep)
                    log(
                        f"  {res['deliveries_per_s']:.0f} deliveries/s ({res['delivered_fraction']:.3f} of offered), "
                        f"p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, "
                        f"cpu us/delivery {res['cpu_us_per_delivery']}"
                    )
                    report.runs.append(res)
                    results.setdefault((point, name), []).append(res)
        for point, load in points.items():
            b = results[(point, "bare")]
            for name in ("durable-chat", "durable-chat coalesce=1"):
                d = results[(point, name)]
                tag = f"{point}: {name}"
                dps, bdps = median([r["deliveries_per_s"] for r in d]), median([r["deliveries_per_s"] for r in b])
                report.rows.append(Row(f"{tag} deliveries/s", dps, bdps, "deliveries/s", ">= 1.0x", dps >= bdps))
                for q in ("p50_ms", "p95_ms", "p99_ms"):
                    d_q, b_q = median([r[q] for r in d]), median([r[q] for r in b])
                    # Issue 14: p50 at an unsaturated load (100 msg/s) within 1.5x the bare server's.
                    target, met = (
                        ("<= 1.5x", d_q <= 1.5 * b_q) if q == "p50_ms" and load["rate"] == 100 else ("", None)
                    )
                    report.rows.append(
                        Row(f"{tag} latency {q[:3]}", d_q, b_q, "ms", target, met, higher_is_better=False)
                    )
                srv = median([r["cpu_us_per_delivery"]["replicas"] for r in d])
                allin = median([sum(r["cpu_us_per_delivery"].values()) for r in d])
                bsrv = median([r["cpu_us_per_delivery"]["server"] for r in b])
                report.rows.append(
                    Row(
                        f"{tag} CPU/delivery, replicas",
                        srv,
                        bsrv,
                        "us",
                        "<= 1.0x bare",
                        srv <= bsrv,
                        higher_is_better=False,
                    )
                )
                report.rows.append(
                    Row(f"{tag} CPU/delivery, all incl. broker", allin, bsrv, "us", higher_is_better=False)
                )
        report.notes.append("ratio for latency and CPU rows is baseline/figure (higher is better everywhere)")
        report.notes.append("medians of alternated repetitions; the load generator shares the 2 cores")
        report.notes.append(
            "capacity = deliveries per server CPU-second (1/CPU per delivery): what decides deliveries/s at "
            "saturation; measured deliveries/s above ~100 msg/s are capped by whichever process the 2 shared "
            "cores starve (often the load generator), so both are given"
        )
        return report
    finally:
        bare.kill()
        topo.stop()
