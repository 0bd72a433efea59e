"""Shared bench machinery: the broker, service processes, CPU/RSS from /proc, statistics, tables, JSON.

Everything here targets 127.0.0.1 only. Every process started runs in its own process group and is killed,
with its group, in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port, port_open
from tests.support.procs import LocalTopology, ServiceProcess
from tests.support.rabbit import PrivateRabbit, SharedVhost

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- /proc
def group_pids(pgid: int) -> list[int]:
    """Every live process whose process group is ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU of these processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class CpuMeter:
    """CPU used by groups of processes between ``start`` and ``stop``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.wall = 0.0
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: cpu_seconds(pids) for name, pids in self.groups.items()}

    def stop(self) -> dict[str, float]:
        self.wall = time.monotonic() - self._t0
        self.used = {name: cpu_seconds(pids) - self._start[name] for name, pids in self.groups.items()}
        return self.used


def load_average() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------- stats
def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def ratio(figure: float, baseline: float) -> float:
    return figure / baseline if baseline else float("nan")


# ---------------------------------------------------------------- output
@dataclass
class Row:
    name: str
    figure: float
    baseline: float
    unit: str
    target: str = ""
    met: bool | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return ratio(self.figure, self.baseline)
        return ratio(self.baseline, self.figure)


@dataclass
class Report:
    bench: str
    command: str
    rows: list[Row] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load_before: float = field(default_factory=load_average)

    def table(self) -> str:
        head = f"{'measure':<46} {'figure':>12} {'baseline':>12} {'ratio':>7}  {'unit':<16} {'target':<14} met"
        lines = [f"== {self.bench}  ({self.command})", head, "-" * len(head)]
        for row in self.rows:
            met = "" if row.met is None else ("yes" if row.met else "NO")
            base = "" if row.baseline != row.baseline else _fmt(row.baseline)
            rat = "" if row.ratio != row.ratio else f"{row.ratio:.2f}"
            lines.append(
                f"{row.name:<46} {_fmt(row.figure):>12} {base:>12} {rat:>7}  {row.unit:<16} {row.target:<14} {met}"
            )
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

    def save(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.bench}.json"
        data = {
            "bench": self.bench,
            "command": self.command,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
            "load_before": self.load_before,
            "load_after": load_average(),
            "params": self.params,
            "results": [
                {
                    "name": r.name,
                    "figure": r.figure,
                    "baseline": r.baseline,
                    "ratio": r.ratio,
                    "unit": r.unit,
                    "target": r.target,
                    "met": r.met,
                    "note": r.note,
                }
                for r in self.rows
            ],
            "notes": self.notes,
            "runs": self.runs,
        }
        path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
        return path


def _fmt(value: float) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _json_default(value: object) -> object:
    if isinstance(value, float) and value != value:
        return None
    return str(value)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- broker and services
class Broker:
    """Where the bench's AMQP traffic goes: fresh vhosts on a private node (default) or on the machine's node.

    A private RabbitMQ node on free ports lets the bench charge the broker's CPU to the system under test and
    keeps other engineers' traffic off it. ``shared=True`` uses throwaway vhosts on the machine's node
    (never ``/``); the broker's CPU is then not counted.
    """

    def __init__(self, shared: bool = False) -> None:
        self.shared = shared
        self.node: PrivateRabbit | None = None
        self.vhosts: list[str] = []
        self._shared_vhosts: list[SharedVhost] = []

    @property
    def pgid(self) -> int | None:
        if self.node is None or self.node._process is None:
            return None
        return self.node._process.pid

    def start(self) -> None:
        if not self.shared:
            self.node = PrivateRabbit()
            log(f"starting a private RabbitMQ node {self.node.node} on 127.0.0.1:{self.node.port}")
            self.node.start()

    def vhost(self, tag: str) -> str:
        if self.node is None:
            vhost = SharedVhost()
            vhost.create()
            self._shared_vhosts.append(vhost)
            return vhost.url
        name = f"bench-{tag}-{os.urandom(3).hex()}"
        self.node.ctl("add_vhost", name)
        self.node.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return f"amqp://guest:guest@127.0.0.1:{self.node.port}/{name}"

    def stop(self) -> None:
        for vhost in self._shared_vhosts:
            vhost.delete()
        if self.node is not None:
            self.node.destroy()


def topology(amqp_url: str, workdir: Path, replicas: int = 2, env: dict[str, str] | None = None) -> LocalTopology:
    base = {"LOG_LEVEL": "WARNING", "AMQP_HEARTBEAT_S": "30"}
    return LocalTopology(amqp_url, workdir, extra_env={**base, **(env or {})}, replicas=replicas)


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"dc-bench-{prefix}-"))


class Helper:
    """A bench helper process (bare server, load generator) in its own process group."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Helper:
        out = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *self.args],
            env={**os.environ, **(self.env or {})},
            process_group=0,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        out.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_port(self, port: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.args} exited: {self.log_path.read_text()[-2000:]}")
            if port_open(port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.args} did not listen on {port}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def run_loadgen(spec: dict[str, Any], log_path: Path, timeout: float) -> dict[str, Any]:
    """Run bench/loadgen.py with a JSON spec in its own process group; return its JSON result."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.loadgen", json.dumps(spec)],
        process_group=0,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log_path.open("ab"),
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    if process.returncode != 0:
        raise RuntimeError(f"loadgen failed rc={process.returncode}: {log_path.read_text()[-3000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


__all__ = ["ServiceProcess", "free_port", "LocalTopology"]  # re-exported for the bench modules
