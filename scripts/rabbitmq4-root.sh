#!/usr/bin/env bash
# Build, once, a private Debian 13 (trixie) root holding rabbitmq-server 4.x, for the tests' RabbitMQ 4 nodes.
#
# Debian 12's own rabbitmq-server (3.10) runs the machine's shared node and must stay; RabbitMQ 4 cannot be
# installed over it, so it lives in its own root under ~/.cache (outside the repository) and tests run it with
# `chroot ROOT env ... /usr/lib/rabbitmq/bin/rabbitmq-server` (tests/support/rabbit.py).
#   - never touches /etc/apt: debootstrap fetches straight from the Debian mirror;
#   - the root's policy-rc.d forbids starting services, so the install starts nothing;
#   - /proc is bind-mounted only while apt runs (Erlang's postinst needs it) and unmounted on any exit;
#   - built in a side directory and renamed into place with a stamp, so an interrupted run leaves nothing
#     that looks ready; a second run only prints the version (<1 s).
# Needs root (debootstrap, chroot). Installs debootstrap with apt when missing.
# Prints the RabbitMQ and Erlang versions and, when it built, the time each step took.
set -euo pipefail

ROOT="${DURABLE_CHAT_RABBITMQ4_ROOT:-$HOME/.cache/durable-chat/rabbitmq4}"
SUITE="${DURABLE_CHAT_RABBITMQ4_SUITE:-trixie}"
MIRROR="${DURABLE_CHAT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
STAMP="$ROOT/.durable-chat-ready"
WORK="$ROOT.partial"

log() { printf 'rabbitmq4-root: %s\n' "$*" >&2; }

report() {
  printf 'rabbitmq4-root: %s: rabbitmq-server %s, erlang %s\n' "$ROOT" \
    "$(sed -n 's/^rabbitmq=//p' "$STAMP")" "$(sed -n 's/^erlang=//p' "$STAMP")"
}

ensure_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return
  log "installing debootstrap from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends debootstrap >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }
}

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

unmount_proc() {
  if mountpoint -q "$WORK/proc" 2>/dev/null; then umount "$WORK/proc" || umount -l "$WORK/proc"; fi
}

install_broker() {
  # apt in the new root, with policy-rc.d refusing every service start (exit 101 = "action forbidden").
  printf '#!/bin/sh\nexit 101\n' >"$WORK/usr/sbin/policy-rc.d"
  chmod 755 "$WORK/usr/sbin/policy-rc.d"
  mount --bind /proc "$WORK/proc"
  local apt=(chroot "$WORK" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get -y -q -o Dpkg::Use-Pty=0)
  "${apt[@]}" install --no-install-recommends rabbitmq-server >/dev/null \
    || { "${apt[@]}" update >/dev/null && "${apt[@]}" install --no-install-recommends rabbitmq-server >/dev/null; }
  "${apt[@]}" clean
  unmount_proc
}

write_stamp() {
  local rabbit erlang
  rabbit="$(chroot "$WORK" dpkg-query -W -f '${Version}' rabbitmq-server)"
  erlang="$(chroot "$WORK" dpkg-query -W -f '${Version}' erlang-base)"
  case "$rabbit" in 4.*) ;; *) log "expected rabbitmq-server 4.x in $SUITE, got $rabbit"; return 1;; esac
  printf 'rabbitmq=%s\nerlang=%s\nsuite=%s\nbuilt=%s\n' "$rabbit" "$erlang" "$SUITE" "$(date -u +%FT%TZ)" \
    >"$WORK/.durable-chat-ready"
}

build() {
  [ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap, chroot)"; return 1; }
  ensure_debootstrap
  unmount_proc
  rm -rf "$WORK"
  mkdir -p "$WORK"
  local t0 t1 t2
  t0=$(date +%s%N)
  log "debootstrap --variant=minbase $SUITE $WORK $MIRROR"
  debootstrap --variant=minbase "$SUITE" "$WORK" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 \
    || { log "debootstrap failed; see $ROOT.debootstrap.log"; return 1; }
  t1=$(date +%s%N)
  log "apt-get install rabbitmq-server in the root"
  install_broker
  t2=$(date +%s%N)
  write_stamp
  rm -rf "$ROOT"
  mv "$WORK" "$ROOT"
  log "built in $(secs "$t0" "$t2") s (debootstrap $(secs "$t0" "$t1") s, rabbitmq-server install" \
    "$(secs "$t1" "$t2") s), $(du -sh "$ROOT" | cut -f1) on disk"
}

main() {
  mkdir -p "$(dirname "$ROOT")"
  # One builder at a time: parallel `make test` runs wait here instead of debootstrapping twice.
  exec 9>"$ROOT.lock"
  flock 9
  trap unmount_proc EXIT
  [ -f "$STAMP" ] || build
  report
}

main "$@"
