"""History replica copy: a replica with an empty store copies 1,000,000 stored messages from its ready peer.

Figures: the copy rate (messages/s written from the peer, from the copier's own count and time in ``/readyz``) and
the time to ready (from starting the empty replica's process to its first ``/readyz`` 200, process start and
broker connect included). Both replicas are real processes on the bench broker; the peer holds the messages in
100 rooms and gets no traffic meanwhile.

Baseline, same run, same data (a copy of the peer's LevelDB directory): plyvel iteration of every message key
and value, written into a fresh LevelDB in synced batches of the copier's size (2,000), in one process: the raw
cost of moving the bytes, without HTTP, JSON parsing, the idempotency checks or the digests.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import plyvel

from bench.common import Report, Row, ServiceProcess, free_port, log, median, workdir
from bench.read import fill_store
from services.history.replication import COPY_BATCH

ROOMS = tuple(f"room-{n:03d}" for n in range(100))


def _raw_copy(source: Path, target: Path) -> dict[str, Any]:
    started = time.perf_counter()
    src = plyvel.DB(str(source))
    dst = plyvel.DB(str(target), create_if_missing=True)
    count = 0
    try:
        batch = dst.write_batch(sync=True)
        for key, value in src.iterator(prefix=b"m\x00"):
            batch.put(key, value)
            count += 1
            if count % COPY_BATCH == 0:
                batch.write()
                batch = dst.write_batch(sync=True)
        batch.write()
    finally:
        src.close()
        dst.close()
    seconds = time.perf_counter() - started
    return {"system": "baseline", "messages": count, "seconds": seconds, "msgs_per_s": count / seconds}


def _replica(amqp: str, ordinal: int, ports: list[int], data: Path, logs: Path) -> ServiceProcess:
    return ServiceProcess(
        "history",
        {
            "AMQP_URL": amqp, "LOG_LEVEL": "INFO", "LOG_FORMAT": "json",
            "HISTORY_HOST": "127.0.0.1", "HISTORY_PORT": str(ports[ordinal]), "HISTORY_DATA_DIR": str(data),
            "HISTORY_REPLICA": str(ordinal), "AMQP_HISTORY_REPLICAS": "2", "HISTORY_VERIFY_INTERVAL_S": "0",
            "HISTORY_PEERS": ",".join(f"http://127.0.0.1:{port}" for port in ports),
        },
        ports[ordinal],
        logs / f"history-copy-{ordinal}.log",
    )


def _copy_once(amqp: str, ports: list[int], target: Path, logs: Path, count: int) -> dict[str, Any]:
    shutil.rmtree(target, ignore_errors=True)
    replica = _replica(amqp, 0, ports, target, logs)
    started = time.monotonic()
    replica.start(wait_ready=False)
    try:
        replica.wait_ready(timeout=1800)
        to_ready = time.monotonic() - started
        copy = httpx.get(f"{replica.url}/readyz", timeout=5).json()["copy"]
    finally:
        replica.kill()
    if copy["state"] != "done" or copy["stored"] != count:
        raise RuntimeError(f"copy incomplete: {copy}")
    return {"system": "copy", "messages": copy["messages"], "seconds": copy["seconds"],
            "msgs_per_s": copy["messages"] / copy["seconds"], "time_to_ready_s": to_ready}


def run(ctx: Any) -> Report:
    count = 100_000 if ctx.quick else 1_000_000
    wd = workdir("copy")
    peer_db, baseline_src = wd / "peer-db", wd / "baseline-src"
    t0 = time.monotonic()
    fill_store(str(peer_db), count, ROOMS)
    shutil.copytree(peer_db, baseline_src)
    log(f"copy: {count:,} messages in {len(ROOMS)} rooms stored in {time.monotonic() - t0:.1f} s")
    amqp = ctx.broker.vhost("copy")
    ports = [free_port(), free_port()]
    peer = _replica(amqp, 1, ports, peer_db, ctx.logs)
    report = Report("copy", ctx.command)
    report.params = {"messages": count, "rooms": len(ROOMS), "copy_batch": COPY_BATCH, "repeats": ctx.repeats,
                     "peer": "a second history process on the same machine, over HTTP on loopback"}
    results: dict[str, list[dict[str, Any]]] = {"copy": [], "baseline": []}
    try:
        peer.start(timeout=600)  # filled through MessageStore: its digests are there already
        for rep in range(ctx.repeats):
            order = ["copy", "baseline"] if rep % 2 == 0 else ["baseline", "copy"]
            for kind in order:
                if kind == "copy":
                    res = _copy_once(amqp, ports, wd / "replica-db", ctx.logs, count)
                else:
                    target = wd / "baseline-dst"
                    shutil.rmtree(target, ignore_errors=True)
                    res = _raw_copy(baseline_src, target)
                res["rep"] = rep
                log(f"copy {kind} rep={rep + 1}: {res['msgs_per_s']:.0f} msg/s in {res['seconds']:.1f} s"
                    + (f", ready after {res['time_to_ready_s']:.1f} s" if "time_to_ready_s" in res else ""))
                report.runs.append(res)
                results[kind].append(res)
    finally:
        peer.kill()
        shutil.rmtree(wd, ignore_errors=True)
    rate = median([r["msgs_per_s"] for r in results["copy"]])
    base = median([r["msgs_per_s"] for r in results["baseline"]])
    ready = median([r["time_to_ready_s"] for r in results["copy"]])
    report.rows.append(Row("copy from a peer: messages/s", rate, base, "msg/s",
                           note="baseline: raw plyvel iterate + synced batch write"))
    report.rows.append(Row(f"time to ready, {count:,} messages", ready, float("nan"), "s",
                           higher_is_better=False, note="process start to first /readyz 200"))
    report.notes.append("copy rate = messages received / copy time, both as the copier reports them in /readyz")
    return report
