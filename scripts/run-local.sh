#!/usr/bin/env bash
# `make run`: the history service and two chat replicas on this machine, until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
export HISTORY_DATA_DIR="${HISTORY_DATA_DIR:-./data/history}"
export CHAT_HISTORY_URL="${CHAT_HISTORY_URL:-http://127.0.0.1:${HISTORY_PORT:-8001}}"
mkdir -p .run
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait || true; }
trap cleanup EXIT INT TERM
.venv/bin/history-service & pids+=($!)
CHAT_PORT=8000 .venv/bin/chat-service & pids+=($!)
CHAT_PORT=8010 .venv/bin/chat-service & pids+=($!)
for port in 8000 8010; do
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
done
cat <<MSG

  durable-chat is running.
    chat page      http://127.0.0.1:8000/   (second replica: http://127.0.0.1:8010/)
    WebSocket      ws://127.0.0.1:8000/ws?room=general&name=you
    history API    http://127.0.0.1:8001/rooms/general/messages
    metrics        http://127.0.0.1:8000/metrics  http://127.0.0.1:8001/metrics
  Ctrl-C stops all three.

MSG
wait -n "${pids[@]}"
