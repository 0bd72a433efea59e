#!/usr/bin/env bash
# Start (or find running) the project's own docker engine: Debian's dockerd on its own socket and data root under
# $KIND_CACHE, without iptables, NAT or the default bridge (this sandbox refuses them), with runc-nosysres as the
# default runtime (README.md, "Docker engine"). Prints the DOCKER_HOST to use. Idempotent.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
C="${KIND_CACHE:-$HOME/.cache/durable-chat/kind}"
export DOCKER_HOST="unix://$C/docker.sock"
if docker info >/dev/null 2>&1; then echo "$DOCKER_HOST"; exit 0; fi
mkdir -p "$C/docker" "$C/docker-exec" "$C/sbin"
# The runtime path is recorded in containers' configs: use a stable copy in the cache, not the checkout's path.
install -m755 "$HERE/runc-nosysres" "$C/sbin/runc-nosysres"
nohup dockerd --data-root "$C/docker" --exec-root "$C/docker-exec" --pidfile "$C/dockerd.pid" -H "$DOCKER_HOST" \
  --iptables=false --ip6tables=false --bridge=none --ip-forward=false --ip-masq=false \
  --add-runtime "nosr=$C/sbin/runc-nosysres" --default-runtime nosr >>"$C/dockerd.log" 2>&1 &
for _ in $(seq 60); do
  if docker info >/dev/null 2>&1; then echo "$DOCKER_HOST"; exit 0; fi
  sleep 0.5
done
echo "dockerd did not start: see $C/dockerd.log" >&2
exit 1
