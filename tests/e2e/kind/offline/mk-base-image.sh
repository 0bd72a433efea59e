#!/usr/bin/env bash
# A debootstrapped node root -> the docker image local/kind-base:bookworm (kind's "base" image, see mk-base.sh),
# with the archives of the images kind would pull preloaded under /kind/preload.
set -euo pipefail
ROOTFS_NODE=${1:?node root}; KIND_SRC=${2:?kind source dir}; PRELOAD=${3:?preload dir}
D=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT
cp -a "$ROOTFS_NODE" "$W/rootfs"
"$D/mk-base.sh" "$W/rootfs" "$KIND_SRC" >/dev/null
mkdir -p "$W/rootfs/kind/preload"; cp "$PRELOAD"/*.tar "$W/rootfs/kind/preload/"
tar -C "$W/rootfs" -c . | docker import --change 'ENV container=docker' \
  --change 'ENTRYPOINT ["/usr/local/bin/entrypoint","/sbin/init"]' - local/kind-base:bookworm-raw >/dev/null
# docker import cannot set STOPSIGNAL; systemd as PID 1 stops cleanly on SIGRTMIN+3
mkdir -p "$W/b"; printf 'FROM local/kind-base:bookworm-raw\nSTOPSIGNAL SIGRTMIN+3\n' >"$W/b/Dockerfile"
docker build -q -t local/kind-base:bookworm "$W/b" >/dev/null
