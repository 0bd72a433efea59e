#!/usr/bin/env bash
# Installs what the browser and live-dashboard tests need, and nothing that is already there:
#   - Debian's chromium (driven by Playwright; never `playwright install`, which downloads a browser build),
#   - Debian's prometheus (without recommends, so no node-exporter),
#   - Playwright for Python (pinned in requirements/tools.txt) into the project's venv.
# One line per tool installed; apt's and pip's output go to .tools/install.log.
# Idempotent: a second run does nothing. Usage: scripts/install-browser-tools.sh [VENV_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG=install-browser-tools
VENV="${1:-${VENV:-$ROOT/.venv}}"
# shellcheck source=scripts/_install_lib.sh
. "$ROOT/scripts/_install_lib.sh"

if ! command -v chromium >/dev/null 2>&1; then
  apt_install "apt-get install chromium (~115 MB download, 125 packages)" chromium
fi
if ! command -v prometheus >/dev/null 2>&1; then
  apt_install "apt-get install prometheus (~23 MB download)" --no-install-recommends prometheus
fi
pip_tools

log "$(chromium --version 2>/dev/null | head -1);" \
  "$(prometheus --version 2>&1 | head -1);" \
  "playwright $("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("playwright"))')"
