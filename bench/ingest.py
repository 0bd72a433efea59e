"""3. History ingest: messages/s the history service stores durably (synced LevelDB batch, then ack) while
draining a backlog of 200,000 messages from `chat.history`.

Baseline, same run, same queue and prefetch: a bare aio-pika consumer that acks each delivery without storing.
Rate = the middle 90 % of the backlog (5 % to 95 %) over the time it took, so process start-up is excluded.
"""

from __future__ import annotations

import time
import urllib.request
from typing import Any

from bench.common import Report, Row, ServiceProcess, free_port, log, median, run_loadgen, workdir

PREFETCH = 256


def _stored(url: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("durable_chat_messages_stored_total "):
                return float(line.split()[1])
    return 0.0


def fill_backlog(ctx: Any, amqp: str, count: int) -> dict[str, Any]:
    spec = {
        "mode": "amqp_publish",
        "amqp_url": amqp,
        "exchange": "chat",
        "inflight": 500,
        "room": "ingest",
        "count": count,
        "max_s": 600,
        "warmup": 0,
        "duration": 0,
    }
    res = run_loadgen(spec, ctx.logs / "loadgen.log", 700)
    log(f"  backlog of {count} published at {res['msgs_per_s']:.0f} msg/s")
    return res


def history_process(amqp: str, data_dir: str, log_path: Any, env: dict[str, str]) -> ServiceProcess:
    port = free_port()
    return ServiceProcess(
        "history",
        {
            "AMQP_URL": amqp,
            "AMQP_PREFETCH": str(PREFETCH),
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
            "HISTORY_HOST": "127.0.0.1",
            "HISTORY_PORT": str(port),
            "HISTORY_DATA_DIR": data_dir,
            **env,
        },
        port,
        log_path,
    )


def drain_with_history(ctx: Any, amqp: str, count: int, wd: Any, rep: int, env: dict[str, str]) -> dict[str, Any]:
    service = history_process(amqp, str(wd / f"db-{rep}"), ctx.logs / "history-ingest.log", env)
    lo, hi = count * 0.05, count * 0.95
    marks: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        service.start(wait_ready=False)
        deadline = t0 + 600
        while time.monotonic() < deadline:
            try:
                stored = _stored(service.url)
            except OSError:
                stored = 0.0
            now = time.monotonic()
            if stored >= lo and "lo" not in marks:
                marks["lo"], marks["lo_n"] = now, stored
            if stored >= hi:
                marks["hi"], marks["hi_n"] = now, stored
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("history service did not drain the backlog in 600 s")
        # settle the rest so the next fill starts from an empty queue
        while _stored(service.url) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return {
            "consumed": count,
            "wall_s": time.monotonic() - t0,
            "msgs_per_s": (marks["hi_n"] - marks["lo_n"]) / (marks["hi"] - marks["lo"]),
            "method": "5%..95% of the backlog, /metrics polled every 50 ms",
        }
    finally:
        service.kill()


def run(ctx: Any) -> Report:
    count = 20_000 if ctx.quick else 200_000
    repeats = ctx.repeats if ctx.quick else min(ctx.repeats, 2)
    wd = workdir("ingest")
    amqp = ctx.broker.vhost("ingest")
    report = Report("ingest", ctx.command)
    report.params = {
        "backlog": count,
        "prefetch": PREFETCH,
        "repeats": repeats,
        "history_batch_max": "service default (256)",
        "queue": "chat.history, quorum",
    }
    # declare the topology once (the service does it at start): start and stop a history service
    boot = history_process(amqp, str(wd / "db-boot"), ctx.logs / "history-ingest.log", {})
    boot.start()
    boot.kill()
    results: dict[str, list[dict[str, Any]]] = {"bare consumer": [], "history service": []}
    for rep in range(repeats):
        for name in list(results) if rep % 2 == 0 else list(reversed(results)):
            log(f"ingest {name} rep={rep + 1}: filling")
            fill_backlog(ctx, amqp, count)
            log(f"ingest {name} rep={rep + 1}: draining")
            if name == "bare consumer":
                res = run_loadgen(
                    {
                        "mode": "consume",
                        "amqp_url": amqp,
                        "queue": "chat.history",
                        "prefetch": PREFETCH,
                        "expected": count,
                        "max_s": 600,
                    },
                    ctx.logs / "loadgen.log",
                    700,
                )
            else:
                res = drain_with_history(ctx, amqp, count, wd, rep, {})
            res.update(system=name, rep=rep)
            log(f"  {res['msgs_per_s']:.0f} msg/s")
            report.runs.append(res)
            results[name].append(res)
    figure = median([r["msgs_per_s"] for r in results["history service"]])
    base = median([r["msgs_per_s"] for r in results["bare consumer"]])
    report.rows.append(
        Row(f"stored durably, backlog {count:,}", figure, base, "msg/s", ">= 0.8x", figure >= 0.8 * base)
    )
    return report
