"""`python -m bench [NAME ...] [--quick] [--repeats N] [--shared-broker]`: run the benchmarks.

NAME is any of: fanout publish ingest read connections seam cluster presence copy (default: all, in that order).
Each prints a table (figure, baseline measured in the same run, ratio, target) and writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import RESULTS, Broker, load_average, log, workdir

NAMES = ["fanout", "publish", "ingest", "read", "connections", "seam", "cluster", "presence", "copy"]


@dataclass
class Ctx:
    broker: Broker
    quick: bool
    repeats: int
    logs: Path
    command: str


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=" ".join(NAMES))
    parser.add_argument("--quick", action="store_true", help="smaller sizes and shorter runs (a smoke test)")
    parser.add_argument("--repeats", type=int, default=0, help="alternated repetitions (default 3, quick 1)")
    parser.add_argument("--shared-broker", action="store_true", help="vhosts on the machine's node, not a private one")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop cleanly: the finally blocks kill what was started
    names = args.names or NAMES
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark(s): {' '.join(unknown)}; choose from {' '.join(NAMES)}")
    repeats = args.repeats or (1 if args.quick else 3)
    logs = workdir("logs")
    broker = Broker(shared=args.shared_broker)
    log(f"load average {load_average():.2f}; logs in {logs}")
    started = time.monotonic()
    failed = []
    try:
        broker.start()
        for name in names:
            flags = (" --quick" if args.quick else "") + (f" --repeats {args.repeats}" if args.repeats else "")
            ctx = Ctx(broker, args.quick, repeats, logs, f"python -m bench {name}{flags}")
            log(f"--- {name}")
            try:
                module = importlib.import_module(f"bench.{name}")
                report = module.run(ctx)
            except Exception as exc:  # one failing bench must not hide the others
                log(f"{name} FAILED: {exc!r}")
                failed.append(name)
                continue
            path = report.save()
            print(report.table(), flush=True)
            print(f"  -> {path.relative_to(RESULTS.parent.parent)}\n", flush=True)
    finally:
        broker.stop()
    log(f"done in {time.monotonic() - started:.0f} s; load average {load_average():.2f}")
    if failed:
        log(f"failed: {' '.join(failed)} (logs in {logs})")
        return 1
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
