#!/usr/bin/env bash
# Installs what the browser and live-dashboard tests need, and nothing that is already there:
#   - Debian's chromium (driven by Playwright; never `playwright install`, which downloads a browser build),
#   - Debian's prometheus (without recommends, so no node-exporter),
#   - Playwright for Python into the project's venv.
# Idempotent: a second run does nothing. Usage: scripts/install-browser-tools.sh [VENV_DIR]
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${1:-${VENV:-.venv}}"
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=""
apt_install() {  # apt_install [apt-get options] PACKAGE...
  if [ -z "$apt_updated" ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

if ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium
fi
if ! command -v prometheus >/dev/null 2>&1; then
  apt_install --no-install-recommends prometheus
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "install-browser-tools: no virtualenv at $VENV (create it first: python3 -m venv $VENV)" >&2
  exit 1
fi
if ! "$VENV/bin/python" -c "import playwright" >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q "playwright==${PLAYWRIGHT_VERSION}"
fi

echo "install-browser-tools: $(chromium --version 2>/dev/null | head -1);" \
  "$(prometheus --version 2>&1 | head -1);" \
  "playwright $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("playwright"))')"
