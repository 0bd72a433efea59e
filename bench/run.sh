#!/usr/bin/env bash
# `make bench`: run the benchmarks side by side with their baselines; tables on stdout, JSON in bench/results/.
# Usage: bench/run.sh [fanout|publish|ingest|read|connections|seam ...] [--quick] [--repeats N] [--shared-broker]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m bench "$@"
