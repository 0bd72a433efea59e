"""6. Seam cost: connect latency (connect to `synced`) for a client that receives 100 messages of history while
the room is busy (a sender publishing at R msg/s into it).

Each probe opens a WebSocket without a cursor, receives the newest 100 messages (from the history service,
merged with the replica's ring, then the live messages held aside), then `synced`; probes alternate between the
2 replicas, one at a time. Baseline, same run, same client and load: the bare server sending its newest 100 from
memory then `synced`.
"""

from __future__ import annotations

from typing import Any

from bench.common import Helper, Report, Row, free_port, log, median, run_loadgen, topology, workdir


def run(ctx: Any) -> Report:
    probes = 50 if ctx.quick else 200
    rate = 50
    wd = workdir("seam")
    amqp = ctx.broker.vhost("seam")
    topo = topology(amqp, wd)
    bare_port = free_port()
    bare = Helper(["-m", "bench.bare_server", str(bare_port)], ctx.logs / "bare-seam.log")
    report = Report("seam", ctx.command)
    report.params = {"probes": probes, "busy_rate_msgs_per_s": rate, "history": 100, "repeats": ctx.repeats}
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "durable-chat": []}
    try:
        topo.start()
        bare.start()
        bare.wait_port(bare_port)
        for rep in range(ctx.repeats):
            for name in ["bare", "durable-chat"] if rep % 2 == 0 else ["durable-chat", "bare"]:
                urls = [f"ws://127.0.0.1:{bare_port}/ws"] if name == "bare" else [c.ws_url for c in topo.chats]
                spec = {
                    "mode": "seam",
                    "urls": urls,
                    "room": f"seam{rep}",
                    "rate": rate,
                    "history": 150,
                    "probes": probes,
                    "max_s": 120,
                }
                if name != "bare":
                    spec["history_url"] = topo.history.url
                res = run_loadgen(spec, ctx.logs / "loadgen.log", 300)
                res.update(system=name, rep=rep)
                log(
                    f"seam {name} rep={rep + 1}: p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms, "
                    f"backlog {res['backlog_min']}..(median {res['backlog_median']})"
                )
                report.runs.append(res)
                results[name].append(res)
        d, b = results["durable-chat"], results["bare"]
        for q in ("p50_ms", "p99_ms"):
            report.rows.append(
                Row(
                    f"connect to synced, 100 history, room at {rate} msg/s: {q[:3]}",
                    median([r[q] for r in d]),
                    median([r[q] for r in b]),
                    "ms",
                    higher_is_better=False,
                )
            )
        report.notes.append("no numeric target in the issue; ratio is baseline/figure")
        return report
    finally:
        bare.kill()
        topo.stop()
