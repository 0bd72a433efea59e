"""Profile a service under bench load with py-spy: `python -m bench.profile NAME [SECONDS]`.

NAME is fanout, fanout-window (the closed loop of issue 14), publish or ingest. py-spy (pip install py-spy into
the venv; not a project dependency) samples a replica (fanout, fanout-window, publish) or the
history service (ingest) while the matching load runs; the collapsed stacks go to bench/results/profile-<name>.txt
and the top functions by own and total time are printed.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import RESULTS, Broker, log, topology, workdir
from bench.fanout import WINDOW_POINT
from bench.ingest import fill_backlog, history_process


def _summarize(collapsed: Path, top: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        samples += n
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")" for f in stack.split(";")
        ]
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    out = [f"{samples} samples", f"-- own time (top {top})"]
    out += [f"{100 * n / samples:5.1f}%  {name}" for name, n in own.most_common(top)]
    out += [f"-- total time (top {top})"]
    out += [f"{100 * n / samples:5.1f}%  {name}" for name, n in total.most_common(top)]
    return "\n".join(out)


def _record(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "--nonblocking", "-f", "raw", "-o", str(out)],
        process_group=0,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "fanout"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    out = RESULTS / f"profile-{name}.txt"
    raw = RESULTS / f"profile-{name}.collapsed"
    broker = Broker()
    wd = workdir(f"profile-{name}")
    logs = wd
    spy = None
    try:
        broker.start()
        amqp = broker.vhost(name)
        if name in ("fanout", "fanout-window", "publish"):
            topo = topology(amqp, wd)
            try:
                topo.start()
                urls = [c.ws_url for c in topo.chats]
                if name == "fanout":
                    spec = {
                        "mode": "fanout",
                        "urls": urls,
                        "clients": 200,
                        "senders": 8,
                        "rate": 250,
                        "room": "prof",
                        "coalesce": False,
                        "warmup": 2,
                        "duration": seconds + 2,
                    }
                elif name == "fanout-window":  # the closed loop of issue 14 (bench/fanout.py WINDOW_POINT)
                    spec = {
                        "mode": "fanout",
                        "urls": urls,
                        **WINDOW_POINT,
                        "room": "prof",
                        "coalesce": False,
                        "warmup": 2,
                        "duration": seconds + 2,
                    }
                else:
                    spec = {
                        "mode": "publish",
                        "urls": urls,
                        "senders": 100,
                        "inflight": 2,
                        "room": "prof",
                        "warmup": 2,
                        "duration": seconds + 2,
                    }
                loadgen = subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "import sys,json;from bench.common import "
                        "run_loadgen;from pathlib import Path;print(json.dumps(run_loadgen("
                        "json.loads(sys.argv[1]), Path(sys.argv[2]), 120)))",
                        __import__("json").dumps(spec),
                        str(logs / "loadgen.log"),
                    ],
                    process_group=0,
                    stdout=subprocess.PIPE,
                )
                time.sleep(4)
                spy = _record(topo.chats[0].pid, seconds, raw)
                spy.wait(timeout=seconds + 60)
                result, _ = loadgen.communicate(timeout=120)
                log(f"load: {result.decode().strip()[:400]}")
            finally:
                topo.stop()
        else:
            service = history_process(amqp, str(wd / "db-boot"), logs / "h.log", {})
            service.start()
            service.kill()

            class Ctx:
                pass

            ctx = Ctx()
            ctx.logs = logs  # type: ignore[attr-defined]
            fill_backlog(ctx, amqp, 100_000)
            service = history_process(amqp, str(wd / "db"), logs / "h.log", {})
            service.start(wait_ready=False)
            try:
                time.sleep(1.5)
                spy = _record(service.pid, seconds, raw)
                spy.wait(timeout=seconds + 60)
            finally:
                service.kill()
        summary = _summarize(raw)
        out.write_text(summary + "\n")
        print(summary)
    finally:
        if spy is not None and spy.poll() is None:
            os.killpg(spy.pid, signal.SIGKILL)
        broker.stop()


if __name__ == "__main__":
    main()
