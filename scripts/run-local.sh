#!/usr/bin/env bash
# `make run`: the history service and two chat replicas on this machine, until Ctrl-C. The supervisor
# (services/devrun) checks the ports and RabbitMQ first, then restarts any process that exits.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m services.devrun "$@"
