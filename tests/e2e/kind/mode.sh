# Sourced by run.sh (and .ci/run through `offline/toolchain.sh status`): which way to get a kind cluster.
#   KIND_OFFLINE=0     upstream: the user's docker engine and kind, kindest/node, pulled base images.
#   KIND_OFFLINE=1     offline: everything from Debian's archive, built once into $KIND_CACHE (offline/README.md).
#   KIND_OFFLINE=auto  upstream when docker runs, kind is installed and Docker Hub answers; offline otherwise.
# choose_mode sets MODE, MODE_REASON, KIND, KUBECTL, NODE_ARGS (kind create cluster), BUILD_ARGS (the project's
# Dockerfile) and RABBITMQ_BUILD_ARGS (rabbitmq.Dockerfile); offline it also exports DOCKER_HOST and KUBECONFIG.
# shellcheck shell=bash

KIND_CACHE="${KIND_CACHE:-$HOME/.cache/durable-chat/kind}"
OFFLINE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/offline" && pwd)"

registry_reachable() {
  # Any HTTP answer (401 without a token) means images can be pulled; a timeout or DNS failure means not.
  local code
  code="$(curl -s -o /dev/null -m 5 -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null || true)"
  [[ "$code" =~ ^[1-5][0-9][0-9]$ ]]
}

upstream_blocker() {  # prints why the upstream path cannot run, nothing when it can
  if ! command -v docker >/dev/null; then echo "docker is not installed"
  elif ! docker info >/dev/null 2>&1; then echo "no docker engine answers (docker info failed)"
  elif ! command -v kind >/dev/null; then echo "kind is not installed"
  elif ! registry_reachable; then echo "Docker Hub (registry-1.docker.io) does not answer: no image can be pulled"
  fi
}

choose_mode() {
  local want="${KIND_OFFLINE:-auto}" blocker=""
  case "$want" in
    0) MODE=upstream; MODE_REASON="KIND_OFFLINE=0" ;;
    1) MODE=offline; MODE_REASON="KIND_OFFLINE=1" ;;
    auto)
      blocker="$(upstream_blocker)"
      if [[ -z "$blocker" ]]; then MODE=upstream; MODE_REASON="images can be pulled"
      else MODE=offline; MODE_REASON="$blocker"; fi ;;
    *) missing "KIND_OFFLINE must be auto, 0 or 1 (got $want)" ;;
  esac
  if [[ "$MODE" == upstream ]]; then
    blocker="${blocker:-$(upstream_blocker)}"
    [[ -z "$blocker" ]] || missing "upstream mode: $blocker (KIND_OFFLINE=1 builds everything from Debian instead)"
    KIND="$(command -v kind)"
    KUBECTL="$(command -v kubectl || echo "$ROOT/.venv/bin/kubectl")"
    NODE_ARGS=()
    BUILD_ARGS=()
    RABBITMQ_BUILD_ARGS=()
    return
  fi
  # Offline: build what is missing (a no-op when cached), then our own engine.
  "$OFFLINE_DIR/toolchain.sh"
  DOCKER_HOST="$("$OFFLINE_DIR/dockerd.sh")"
  KUBECONFIG="$KIND_CACHE/kubeconfig"
  export DOCKER_HOST KUBECONFIG
  KIND="$KIND_CACHE/bin/kind"
  KUBECTL="$KIND_CACHE/bin/kubectl"  # 1.20, the cluster's own version
  NODE_ARGS=(--image "$(cat "$KIND_CACHE/node-image")" --config "$OFFLINE_DIR/kind-config.yaml")
  # The engine has no default bridge (offline/README.md): builds use the host's network to reach PyPI / Debian.
  BUILD_ARGS=(--network host --build-arg "PYTHON_IMAGE=$(cat "$KIND_CACHE/python-image")")
  RABBITMQ_BUILD_ARGS=(--network host --build-arg "RABBITMQ_BASE=$(cat "$KIND_CACHE/rabbitmq-image")")
}
