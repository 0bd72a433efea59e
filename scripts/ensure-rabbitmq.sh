#!/usr/bin/env bash
# Make sure a RabbitMQ answers on AMQP_URL's host:port. Use the one there if it answers; otherwise install
# rabbitmq-server with apt (where missing) and start the machine's node. Idempotent.
set -euo pipefail
url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/}"
hostport="${url#*://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$host" ] && port=5672

answers() { timeout 1 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; }

if answers; then echo "RabbitMQ answers on $host:$port"; exit 0; fi
case "$host" in 127.0.0.1|localhost) ;; *) echo "RabbitMQ at $host:$port does not answer" >&2; exit 1;; esac
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "installing rabbitmq-server with apt"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
fi
echo "starting RabbitMQ"
if [ "$(id -u)" -eq 0 ] || [ -n "${SUDO_USER:-}" ]; then rabbitmq-server -detached >/dev/null 2>&1 || true
else sudo rabbitmq-server -detached >/dev/null 2>&1 || true; fi
for _ in $(seq 1 60); do answers && { echo "RabbitMQ answers on $host:$port"; exit 0; }; sleep 1; done
echo "RabbitMQ did not start on $host:$port within 60 s" >&2; exit 1
