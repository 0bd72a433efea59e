# Sourced by scripts/install-*.sh: one line per tool installed, the package manager's own output kept in a log.
# The caller sets TAG (its name in messages) and ROOT (the repository); VENV defaults to $ROOT/.venv.
VENV="${VENV:-$ROOT/.venv}"
INSTALL_LOG="$ROOT/.tools/install.log"
mkdir -p "$ROOT/.tools"

log() { printf '%s: %s\n' "$TAG" "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# quietly LABEL COMMAND...: run COMMAND with its output appended to the install log; print one line naming LABEL
# and how long it took, or, when it fails, the last lines of its output.
quietly() {
  local label="$1" started=$SECONDS
  shift
  printf '\n== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$INSTALL_LOG"
  if ! "$@" >>"$INSTALL_LOG" 2>&1; then
    log "FAILED: $label; the end of its output (all of it in $INSTALL_LOG):"
    tail -n 20 "$INSTALL_LOG" >&2
    return 1
  fi
  log "$label: done in $((SECONDS - started)) s"
}

apt_updated=""
# apt_install LABEL [apt-get options] PACKAGE...: waits for another apt run's dpkg lock instead of failing.
apt_install() {
  local label="$1"
  shift
  if [ -z "$apt_updated" ]; then
    quietly "apt-get update" as_root apt-get -o DPkg::Lock::Timeout=300 update
    apt_updated=1
  fi
  quietly "$label" as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=300 install -y "$@"
}

# pip_tools: the Python tools of requirements/tools.txt (pinned, hashed), when any is missing from the venv.
pip_tools() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "no virtualenv at $VENV (\`make deps\` creates it)"
    return 1
  fi
  local missing
  missing="$("$VENV/bin/python" "$ROOT/scripts/lock_digest.py" --missing "$ROOT/requirements/tools.txt")"
  [ -z "$missing" ] && return
  quietly "pip install from requirements/tools.txt: $missing" \
    "$VENV/bin/python" -m pip install --disable-pip-version-check --require-hashes -r "$ROOT/requirements/tools.txt"
}
