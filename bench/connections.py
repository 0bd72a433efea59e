"""5. Connections: memory per idle WebSocket at 5,000 connections on one replica, and the time for 1,000 clients
to reconnect with `after=` and recover a 100-message gap.

Memory: RSS of the replica process after the connections are open and idle, minus RSS before, divided by the
number of connections (50 connections are opened and closed first to warm allocators), in a freshly started
process for each measurement. Baseline, same run, same
client: the bare `websockets` server.
Reconnect: 1,000 clients connect (2 replicas), take their per-origin cursor, disconnect; 100 messages are sent
and stored; then all 1,000 reconnect at once with `after=<cursor>`. Figure: time until every client has its
`synced` (having received the 100 missed messages), and per-client p50/p99. Baseline: the bare server replaying
the same gap from an in-memory log.
"""

from __future__ import annotations

from typing import Any

from bench.common import Helper, Report, Row, ServiceProcess, free_port, log, median, run_loadgen, topology, workdir

KIB = 1024


def run(ctx: Any) -> Report:
    idle_n = 1000 if ctx.quick else 5000
    re_n = 200 if ctx.quick else 1000
    gap = 100
    wd = workdir("connections")
    amqp = ctx.broker.vhost("connections")
    topo = topology(amqp, wd, env={"CHAT_MAX_CONNECTIONS_PER_CLIENT": "0"})
    bare_port = free_port()
    bare = Helper(["-m", "bench.bare_server", str(bare_port)], ctx.logs / "bare-connections.log")
    report = Report("connections", ctx.command)
    report.params = {"idle_connections": idle_n, "reconnect_clients": re_n, "gap": gap, "repeats": ctx.repeats}
    mem: dict[str, list[dict[str, Any]]] = {"bare": [], "durable-chat": []}
    rec: dict[str, list[dict[str, Any]]] = {"bare": [], "durable-chat": []}
    try:
        topo.start()
        bare.start()
        bare.wait_port(bare_port)
        bare_url = f"ws://127.0.0.1:{bare_port}/ws"
        for rep in range(ctx.repeats):
            order = ["bare", "durable-chat"] if rep % 2 == 0 else ["durable-chat", "bare"]
            for name in order:
                # A fresh server process per measurement: freed memory stays in a process's allocator, so a
                # second batch of connections in the same process would reuse it and look free.
                port = free_port()
                if name == "bare":
                    fresh: Any = Helper(["-m", "bench.bare_server", str(port)], ctx.logs / "bare-idle.log").start()
                    fresh.wait_port(port)
                    url = f"ws://127.0.0.1:{port}/ws"
                else:
                    env = {**topo.chats[0].env, "CHAT_PORT": str(port)}
                    fresh = ServiceProcess("chat", env, port, ctx.logs / "chat-idle.log")
                    fresh.start()
                    url = fresh.ws_url
                try:
                    res = run_loadgen(
                        {
                            "mode": "connect_idle",
                            "url": url,
                            "clients": idle_n,
                            "server_pid": fresh.pid,
                            "room": f"idle{rep}",
                            "settle": 2.0,
                        },
                        ctx.logs / "loadgen.log",
                        300,
                    )
                finally:
                    fresh.kill()
                res.update(system=name, rep=rep, kind="idle")
                log(
                    f"idle {name} rep={rep + 1}: {res['bytes_per_connection'] / KIB:.1f} KiB/connection, "
                    f"{res['open']} open, connected in {res['connect_s']:.1f} s"
                )
                report.runs.append(res)
                mem[name].append(res)
            for name in order:
                urls = [bare_url] if name == "bare" else [c.ws_url for c in topo.chats]
                spec = {"mode": "reconnect", "urls": urls, "clients": re_n, "gap": gap, "room": f"gap{rep}"}
                if name != "bare":
                    spec["history_url"] = topo.history.url
                res = run_loadgen(spec, ctx.logs / "loadgen.log", 300)
                res.update(system=name, rep=rep, kind="reconnect")
                log(
                    f"reconnect {name} rep={rep + 1}: all {re_n} synced in {res['total_s']:.2f} s "
                    f"(p50 {res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms), "
                    f"recovered {res['min_recovered']}..{res['max_recovered']}"
                )
                report.runs.append(res)
                rec[name].append(res)
        per = median([r["bytes_per_connection"] for r in mem["durable-chat"]]) / KIB
        bper = median([r["bytes_per_connection"] for r in mem["bare"]]) / KIB
        report.rows.append(
            Row(
                f"memory per idle connection at {idle_n:,}",
                per,
                bper,
                "KiB",
                "<= 20 KiB",  # issue 14 (was 30 KiB)
                per <= 20,
                higher_is_better=False,
            )
        )
        tot = median([r["total_s"] for r in rec["durable-chat"]])
        btot = median([r["total_s"] for r in rec["bare"]])
        ok = all(r["all_recovered"] for r in rec["durable-chat"])
        report.rows.append(
            Row(
                f"{re_n:,} clients reconnect, recover {gap}: all synced",
                tot,
                btot,
                "s",
                "all recover",
                ok,
                higher_is_better=False,
            )
        )
        for q in ("p50_ms", "p99_ms"):
            report.rows.append(
                Row(
                    f"{re_n:,} clients reconnect: per-client {q[:3]}",
                    median([r[q] for r in rec["durable-chat"]]),
                    median([r[q] for r in rec["bare"]]),
                    "ms",
                    higher_is_better=False,
                )
            )
        return report
    finally:
        bare.kill()
        topo.stop()
