"""4. History read: stream 1,000,000 stored messages over HTTP (JSON and NDJSON), paging with `after=<last id>`.

Figure: messages/s received by an HTTP client in another process, and the history service's peak RSS growth
during the read (VmHWM after resetting it through /proc/PID/clear_refs, minus RSS before), after one warm-up
read (the first read after start maps LevelDB's table files, which RSS counts); heap (RssAnon) growth too.
Baseline, same run, same data (a copy of the LevelDB directory, since LevelDB allows one process): plyvel
iteration of the room plus JSON encoding (decode and re-encode each message, joined into 1000-message arrays),
in one process.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

from bench.common import Report, Row, ServiceProcess, free_port, log, median, rss_bytes, run_loadgen, workdir
from services.common.ids import UlidGenerator
from services.common.schema import ChatMessage
from services.history.store import MessageStore

ROOM = "read"


def fill_store(path: str, count: int, rooms: tuple[str, ...] = (ROOM,)) -> None:
    """``count`` messages (~170 bytes each) spread over ``rooms`` in turn, written in synced 20,000-message batches."""
    store = MessageStore(path)
    ids = UlidGenerator()
    try:
        batch: list[tuple[ChatMessage, bytes]] = []
        for i in range(count):
            msg_id, ts = ids.mint()
            message = ChatMessage(
                id=msg_id,
                origin="BENCHRD0",
                room=rooms[i % len(rooms)],
                author=f"user{i % 97}",
                text=f"history message number {i} " + "x" * 60,
                ts=ts,
                client_id=f"c{i}",
            )
            batch.append((message, message.to_wire()))
            if len(batch) == 20_000:
                store.write(batch)
                batch = []
        if batch:
            store.write(batch)
    finally:
        store.close()


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


class _AnonPeak:
    """Peak anonymous RSS (heap, not LevelDB's mmapped table files) of a process, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = _rss_anon(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_anon(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak - self.start


def _http(ctx: Any, service: Any, fmt: str, limit: int) -> dict[str, Any]:
    with open(f"/proc/{service.pid}/clear_refs", "w") as fh:
        fh.write("5")
    rss0 = rss_bytes(service.pid)
    anon = _AnonPeak(service.pid)
    try:
        res = run_loadgen(
            {"mode": "http_read", "base_url": service.url, "room": ROOM, "ndjson": fmt == "ndjson", "limit": limit},
            ctx.logs / "loadgen.log",
            600,
        )
    finally:
        res_anon = anon.stop()
    res["rss_before"], res["rss_peak"] = rss0, _hwm(service.pid)
    res["rss_growth"] = res["rss_peak"] - rss0
    res["anon_growth"] = res_anon
    return res


def run(ctx: Any) -> Report:
    count = 100_000 if ctx.quick else 1_000_000
    wd = workdir("read")
    db, copy = wd / "history-db", wd / "baseline-db"
    t0 = time.monotonic()
    fill_store(str(db), count)
    shutil.copytree(db, copy)
    log(f"read: {count:,} messages stored in {time.monotonic() - t0:.1f} s")
    amqp = ctx.broker.vhost("read")
    port = free_port()
    service = ServiceProcess(
        "history",
        {
            "AMQP_URL": amqp,
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
            "HISTORY_HOST": "127.0.0.1",
            "HISTORY_PORT": str(port),
            "HISTORY_DATA_DIR": str(db),
            "HISTORY_MAX_PAGE": "100000",
        },
        port,
        ctx.logs / "history-read.log",
    )
    report = Report("read", ctx.command)
    variants = [("json", 1000), ("ndjson", 1000), ("json", 100_000), ("ndjson", 100_000)]
    report.params = {
        "messages": count,
        "message_bytes": None,
        "variants": variants,
        "repeats": ctx.repeats,
        "client": "http.client in another process, keep-alive, paging with after=",
    }
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        service.start()
        cold = _http(ctx, service, "ndjson", 1000)  # the first read maps LevelDB's table files: not counted
        report.params["cold_first_read"] = cold
        log(
            f"read: cold first read {cold['msgs_per_s']:.0f} msg/s, RSS growth {cold['rss_growth'] / 2**20:.1f} MiB "
            f"(heap {cold['anon_growth'] / 2**20:.1f} MiB)"
        )
        for rep in range(ctx.repeats):
            runs = [("baseline", ("json", 0)), *[("http", v) for v in variants], ("baseline-raw", ("raw", 0))]
            if rep % 2:
                runs.reverse()
            for kind, (fmt, limit) in runs:
                if kind.startswith("baseline"):
                    res = run_loadgen(
                        {"mode": "leveldb_read", "path": str(copy), "room": ROOM, "format": fmt},
                        ctx.logs / "loadgen.log",
                        600,
                    )
                    key = "baseline" if fmt == "json" else "baseline-raw"
                else:
                    res = _http(ctx, service, fmt, limit)
                    key = f"{fmt} limit={limit}"
                res.update(system=key, rep=rep)
                log(
                    f"read {key} rep={rep + 1}: {res['msgs_per_s']:.0f} msg/s"
                    + (f", RSS growth {res['rss_growth'] / 2**20:.1f} MiB" if "rss_growth" in res else "")
                )
                if res["messages"] != count:
                    raise RuntimeError(f"{key} read {res['messages']} of {count} messages")
                report.runs.append(res)
                results.setdefault(key, []).append(res)
        base = median([r["msgs_per_s"] for r in results["baseline"]])
        raw = median([r["msgs_per_s"] for r in results["baseline-raw"]])
        for fmt, limit in variants:
            rs = results[f"{fmt} limit={limit}"]
            mps = median([r["msgs_per_s"] for r in rs])
            growth = max(r["rss_growth"] for r in rs) / 2**20
            heap = max(r["anon_growth"] for r in rs) / 2**20
            report.rows.append(
                Row(f"{fmt}, pages of {limit:,}: messages/s", mps, base, "msg/s", ">= 0.5x", mps >= 0.5 * base)
            )
            report.rows.append(Row(f"{fmt}, pages of {limit:,}: vs raw iteration", mps, raw, "msg/s"))
            report.rows.append(
                Row(
                    f"{fmt}, pages of {limit:,}: peak RSS growth",
                    growth,
                    float("nan"),
                    "MiB",
                    "< 50 MB",
                    growth * 2**20 < 50e6,
                    higher_is_better=False,
                    note="max over repetitions, after a warm-up read",
                )
            )
            report.rows.append(
                Row(
                    f"{fmt}, pages of {limit:,}: peak heap (RssAnon) growth",
                    heap,
                    float("nan"),
                    "MiB",
                    higher_is_better=False,
                )
            )
        report.notes.append(
            "'vs raw iteration' rows: baseline is plyvel iteration + join of the stored bytes, no re-encoding"
        )
        report.notes.append(
            f"cold first read after start (not counted): RSS growth {cold['rss_growth'] / 2**20:.1f} MiB, of which "
            f"heap {cold['anon_growth'] / 2**20:.1f} MiB; the rest is LevelDB's mmapped table files (page cache)"
        )
        report.notes.append("the contract's page limit is HISTORY_MAX_PAGE (default 1000); the 100,000 rows raise it")
        return report
    finally:
        service.kill()
        shutil.rmtree(wd, ignore_errors=True)
