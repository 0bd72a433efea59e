"""1. Fan-out: N clients per replica over 2 replicas, M messages/s offered into one room.

Figure: deliveries/s and publish-to-delivery latency (send time in the payload, same clock) through the whole
system (WebSocket send -> replica -> broker with confirms -> both replicas -> every client). Baseline, same run,
same clients: a bare `websockets.broadcast` server (bench/bare_server.py). Also server CPU per delivery: with
the load generator on the same 2 cores, CPU per delivery is what decides deliveries/s at saturation.
"""

from __future__ import annotations

from typing import Any

from bench.common import Helper, Report, Row, free_port, log, median, run_loadgen, topology, workdir


def _spec(
    urls: list[str], n: int, rate: int, coalesce: bool, groups: dict[str, list[int]], quick: bool
) -> dict[str, Any]:
    return {
        "mode": "fanout",
        "urls": urls,
        "clients": n,
        "senders": 16,
        "rate": rate,
        "room": "fanout",
        "coalesce": coalesce,
        "warmup": 1.5 if quick else 2.0,
        "duration": 4.0 if quick else 8.0,
        "cpu_groups": groups,
        "timeout_s": 120,
    }


def run(ctx: Any) -> Report:
    per_replica = 50 if ctx.quick else 100
    rates = [100] if ctx.quick else [100, 250, 500]
    n = 2 * per_replica
    wd = workdir("fanout")
    amqp = ctx.broker.vhost("fanout")
    topo = topology(amqp, wd)
    bare_port = free_port()
    bare = Helper(["-m", "bench.bare_server", str(bare_port)], ctx.logs / "bare-fanout.log")
    report = Report("fanout", ctx.command)
    report.params = {
        "clients_per_replica": per_replica,
        "replicas": 2,
        "clients": n,
        "rates": rates,
        "senders": 16,
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
        results: dict[tuple[int, str], list[dict[str, Any]]] = {}
        for rate in rates:
            for rep in range(ctx.repeats):
                order = list(systems) if rep % 2 == 0 else list(reversed(systems))
                for name in order:
                    urls, coalesce, groups = systems[name]
                    log(f"fanout {name} rate={rate}/s clients={n} rep={rep + 1}")
                    res = run_loadgen(_spec(urls, n, rate, coalesce, groups, ctx.quick), ctx.logs / "loadgen.log", 180)
                    res.update(system=name, rate=rate, rep=rep)
                    log(
                        f"  {res['deliveries_per_s']:.0f} deliveries/s ({res['delivered_fraction']:.3f} of offered), "
                        f"p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, "
                        f"cpu us/delivery {res['cpu_us_per_delivery']}"
                    )
                    report.runs.append(res)
                    results.setdefault((rate, name), []).append(res)
        for rate in rates:
            b = results[(rate, "bare")]
            for name in ("durable-chat", "durable-chat coalesce=1"):
                d = results[(rate, name)]
                tag = f"{rate} msg/s x {n}: {name}"
                dps, bdps = median([r["deliveries_per_s"] for r in d]), median([r["deliveries_per_s"] for r in b])
                report.rows.append(Row(f"{tag} deliveries/s", dps, bdps, "deliveries/s", ">= 0.8x", dps >= 0.8 * bdps))
                for q in ("p50_ms", "p95_ms", "p99_ms"):
                    report.rows.append(
                        Row(
                            f"{tag} latency {q[:3]}",
                            median([r[q] for r in d]),
                            median([r[q] for r in b]),
                            "ms",
                            higher_is_better=False,
                        )
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
                        ">= 0.8x capacity",
                        bsrv >= 0.8 * srv,
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
