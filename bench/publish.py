"""2. Publish path: messages/s the replicas accept and ack to senders (publisher confirms), many concurrent senders.

Figure: S WebSocket senders over the 2 replicas, each in its own room, each keeping 2 sends outstanding (a
replica handles one send per connection at a time, so S publishes are in flight at the broker); acks/s.
Baseline, same run, same exchange and queues (the history queue and both replica queues, all consumed):
aio-pika publishing persistent messages with confirms and `mandatory`, S publishes in flight.
"""

from __future__ import annotations

from typing import Any

from bench.common import Report, Row, log, median, run_loadgen, topology, workdir


def durable_chat_spec(
    urls: list[str], senders: int, warmup: float, duration: float, cpu_groups: dict[str, list[int]]
) -> dict[str, Any]:
    """The load generator's publish load on durable-chat: each sender keeps 2 sends unacknowledged."""
    return {
        "mode": "publish",
        "urls": urls,
        "senders": senders,
        "inflight": 2,
        "room": "pub",
        "warmup": warmup,
        "duration": duration,
        "cpu_groups": cpu_groups,
    }


def run(ctx: Any) -> Report:
    senders = 40 if ctx.quick else 100
    warmup, duration = (1.0, 3.0) if ctx.quick else (2.0, 8.0)
    wd = workdir("publish")
    amqp = ctx.broker.vhost("publish")
    topo = topology(amqp, wd)
    report = Report("publish", ctx.command)
    report.params = {
        "senders": senders,
        "replicas": 2,
        "in_flight": senders,
        "repeats": ctx.repeats,
        "queues": "chat.history (quorum) + 2 replica queues, all consumed",
    }
    try:
        topo.start()
        broker_group = [ctx.broker.pgid] if ctx.broker.pgid else []
        groups = {"replicas": [c.pid for c in topo.chats], "broker": broker_group, "history": [topo.history.pid]}
        specs = {
            "aio-pika": {
                "mode": "amqp_publish",
                "amqp_url": amqp,
                "exchange": "chat",
                "inflight": senders,
                "room": "pubbase",
                "warmup": warmup,
                "duration": duration,
                "cpu_groups": groups,
            },
            "durable-chat": durable_chat_spec([c.ws_url for c in topo.chats], senders, warmup, duration, groups),
        }
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}
        for rep in range(ctx.repeats):
            for name in list(specs) if rep % 2 == 0 else list(reversed(specs)):
                log(f"publish {name} rep={rep + 1}")
                res = run_loadgen(specs[name], ctx.logs / "loadgen.log", 120)
                res.update(system=name, rep=rep)
                log(
                    f"  {res['msgs_per_s']:.0f} msg/s acked, p50 {res['p50_ms']:.1f} ms p99 {res['p99_ms']:.1f} ms,"
                    f" errors {res['errors']}, cpu us/msg {res['cpu_us_per_msg']}"
                )
                report.runs.append(res)
                results[name].append(res)
        d, b = results["durable-chat"], results["aio-pika"]
        mps, bmps = median([r["msgs_per_s"] for r in d]), median([r["msgs_per_s"] for r in b])
        report.rows.append(
            Row(f"accepted+acked msg/s, {senders} senders", mps, bmps, "msg/s", ">= 0.8x", mps >= 0.8 * bmps)
        )
        for q in ("p50_ms", "p99_ms"):
            report.rows.append(
                Row(
                    f"send-to-ack latency {q[:3]}",
                    median([r[q] for r in d]),
                    median([r[q] for r in b]),
                    "ms",
                    higher_is_better=False,
                )
            )
        for part in ("replicas", "broker"):
            report.rows.append(
                Row(
                    f"CPU per message, {part}",
                    median([r["cpu_us_per_msg"][part] for r in d]),
                    median([r["cpu_us_per_msg"][part] for r in b]),
                    "us",
                    higher_is_better=False,
                    note="baseline: the replicas only consume (fan-out to no client)",
                )
            )
        report.notes.append("baseline publisher runs in the load-generator process; its own CPU is not counted")
        return report
    finally:
        topo.stop()
