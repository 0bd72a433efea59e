#!/usr/bin/env bash
# The e2e suite against a real Kubernetes: a kind cluster, the image built and loaded, a single-node RabbitMQ,
# the Helm chart with ci/kind-values.yaml, `helm test`, then
#   1. pytest tests/e2e (the same suite as against local processes) through port-forwards to each chat pod and
#      to the history Service (DURABLE_CHAT_E2E_CHAT_URLS / DURABLE_CHAT_E2E_HISTORY_URL);
#   2. pytest tests/e2e/kind (delete a chat pod and the history pod mid-stream: nothing lost).
# Needs docker (a running engine), kind and kubectl on PATH; helm comes from scripts/install-deploy-tools.sh.
#
# Environment: KIND_CLUSTER (durable-chat-e2e), E2E_NAMESPACE (durable-chat), KEEP_CLUSTER=1 keeps the cluster
# (and reuses an existing one), SKIP_BUILD=1 reuses the loaded image, PYTEST_ARGS extra pytest arguments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
CLUSTER="${KIND_CLUSTER:-durable-chat-e2e}"
NAMESPACE="${E2E_NAMESPACE:-durable-chat}"
RELEASE=dc
IMAGE=durable-chat:kind
CONTEXT="kind-$CLUSTER"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
HELM="$ROOT/.tools/bin/helm"
LOGS="$ROOT/test-artifacts/kind"
PIDS=()

log() { printf '\n== %s\n' "$*" >&2; }
missing() { printf 'kind e2e: %s\n' "$*" >&2; exit 2; }

command -v docker >/dev/null || missing "docker is not installed (needed to build the image)"
docker info >/dev/null 2>&1 || missing "the docker engine is not reachable (docker info failed): start it or set DOCKER_HOST"
command -v kind >/dev/null || missing "kind is not installed: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
command -v kubectl >/dev/null || [[ -x "$ROOT/.venv/bin/kubectl" ]] || missing "kubectl is not installed"
KUBECTL="$(command -v kubectl || echo "$ROOT/.venv/bin/kubectl")"
bash scripts/install-deploy-tools.sh
k() { "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" "$@"; }

cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if ((rc != 0)) && kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    mkdir -p "$LOGS"
    k get pods -o wide >"$LOGS/pods.txt" 2>&1 || true
    k get events --sort-by=.lastTimestamp >"$LOGS/events.txt" 2>&1 || true
    for pod in $(k get pods -o name 2>/dev/null); do
      k logs --all-containers --prefix "$pod" >"$LOGS/${pod#pod/}.log" 2>&1 || true
      k logs --all-containers --previous "$pod" >"$LOGS/${pod#pod/}.previous.log" 2>&1 || true
    done
    echo "kind e2e failed (rc $rc): logs in $LOGS" >&2
  fi
  if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  exit "$rc"
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port_forward() {  # target local_port remote_port
  "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" port-forward "$1" "$2:$3" --address 127.0.0.1 \
    >"$LOGS/port-forward-$2.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do
    if "$PYTHON" -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$2/readyz', timeout=2).status_code != 200)" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  echo "port-forward to $1 did not answer /readyz" >&2
  return 1
}

mkdir -p "$LOGS"
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 180s
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building $IMAGE"
  docker build -t "$IMAGE" "$ROOT"
fi
log "loading $IMAGE into kind"
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "RabbitMQ (single node) in namespace $NAMESPACE"
"$KUBECTL" --context "$CONTEXT" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" --context "$CONTEXT" apply -f -
k apply -f tests/e2e/kind/rabbitmq.yaml
k rollout status statefulset/rabbitmq --timeout=300s

log "helm install $RELEASE"
"$HELM" upgrade --install "$RELEASE" deploy/helm/durable-chat --kube-context "$CONTEXT" -n "$NAMESPACE" \
  -f deploy/helm/durable-chat/ci/kind-values.yaml --wait --timeout 5m
"$HELM" test "$RELEASE" --kube-context "$CONTEXT" -n "$NAMESPACE" --logs --timeout 3m

log "port-forwards"
mapfile -t CHAT_PODS < <(k get pods -l app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=chat \
  --field-selector=status.phase=Running -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
((${#CHAT_PODS[@]} >= 2)) || { echo "expected 2 running chat pods, got: ${CHAT_PODS[*]}" >&2; exit 1; }
P1=$(free_port); P2=$(free_port); P3=$(free_port)
port_forward "pod/${CHAT_PODS[0]}" "$P1" 8000
port_forward "pod/${CHAT_PODS[1]}" "$P2" 8000
port_forward "svc/$RELEASE-durable-chat-history" "$P3" 8001

log "pytest tests/e2e against the cluster"
# shellcheck disable=SC2086
DURABLE_CHAT_E2E_CHAT_URLS="http://127.0.0.1:$P1,http://127.0.0.1:$P2" \
DURABLE_CHAT_E2E_HISTORY_URL="http://127.0.0.1:$P3" \
  "$PYTHON" -m pytest tests/e2e --ignore=tests/e2e/kind -p no:cacheprovider ${PYTEST_ARGS:-}

# The pod-kill test deletes pods: it makes its own port-forwards, so stop ours first.
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
PIDS=()

log "pytest tests/e2e/kind (pod kill)"
# shellcheck disable=SC2086
DURABLE_CHAT_KIND_CONTEXT="$CONTEXT" DURABLE_CHAT_KIND_NAMESPACE="$NAMESPACE" DURABLE_CHAT_KIND_RELEASE="$RELEASE" \
KUBECTL="$KUBECTL" \
  "$PYTHON" -m pytest tests/e2e/kind -p no:cacheprovider ${PYTEST_ARGS:-}

log "kind e2e passed"
