#!/usr/bin/env bash
# Build, once, everything a kind cluster needs on a machine that reaches only Debian's apt repositories (and PyPI):
# Debian's docker engine, kind 0.27, Kubernetes v1.20.2 built from Debian 12's source package, the node image, a
# Python base root (Debian 12's Python 3.11) and a RabbitMQ root (Debian 13's rabbitmq-server), all under
# $KIND_CACHE (default ~/.cache/durable-chat/kind). Each step leaves a stamp: a second run does nothing.
# Why each step is the way it is: README.md next to this file.
#
# Usage: toolchain.sh [step...]   steps: packages fetch build roots docker images (default: all, in order)
#        toolchain.sh status       exit 0 when all is cached (what .ci/run checks before `make e2e-kind`)
set -euo pipefail

HERE="${KIND_OFFLINE_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
C="${KIND_CACHE:-$HOME/.cache/durable-chat/kind}"
K8S_VERSION=v1.20.2
K8S_SRC="kubernetes-1.20.2"
K8S_DEB="1.20.5+really1.20.2-1.1+deb12u1"
KIND_DEB="0.27.0-1"  # source version; the trixie binary is a rebuild of it (0.27.0-1+b2)
NODE_IMAGE="local/kind-node:$K8S_VERSION"
PYTHON_IMAGE="local/python-base:3.11-bookworm"
RABBITMQ_BASE_IMAGE="local/rabbitmq-base:trixie"
mkdir -p "$C"
cd "$C"
T0=$(date +%s)
step() { printf '[toolchain +%ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
done_() { touch "$C/.done-$1"; }
is_done() { [[ -f "$C/.done-$1" ]]; }

APT=(-o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$C/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$C/apt/lists" -o "Dir::Cache=$C/apt/cache"
     -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=)

step_packages() {  # host packages, all from Debian 12
  local pkgs=(docker.io containerd runc iptables debootstrap jq rsync make gcc libc6-dev patch)
  dpkg -s "${pkgs[@]}" >/dev/null 2>&1 && return
  step "host packages: ${pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # Debian's package starts its own dockerd on /run/docker.sock with iptables and a bridge, which this sandbox
  # refuses; the project's daemon (dockerd.sh) runs on its own socket instead.
  systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
}

step_fetch() {  # a private apt configuration (its own lists and cache; /etc/apt untouched) reading 3 releases
  is_done fetch && return
  step "downloads: kind $KIND_DEB (trixie), go 1.15 (bullseye), etcd (bookworm), kubernetes $K8S_DEB source"
  mkdir -p apt/lists/partial apt/cache/archives/partial dl
  cat >apt/sources.list <<'S'
deb http://deb.debian.org/debian trixie main
deb-src http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main
S
  apt-get "${APT[@]}" update -qq
  (
    cd dl
    apt-get "${APT[@]}" download kind/trixie golang-1.15-go golang-1.15-src etcd-server/bookworm >/dev/null
    apt-get "${APT[@]}" source --download-only "kubernetes=$K8S_DEB" >/dev/null 2>&1
    # Only kind's upstream tarball is needed (images/base/files); the mirror may lack the .dsc: tolerate that.
    apt-get "${APT[@]}" source --download-only "kind=$KIND_DEB" >/dev/null 2>&1 || test -f kind_0.27.0.orig.tar.gz
  )
  rm -rf x go115 bin src && mkdir -p x go115 bin src
  for f in dl/kind_*.deb dl/etcd-server_*.deb; do dpkg-deb -x "$f" x; done
  cp x/usr/bin/kind x/usr/bin/etcd bin/
  for f in dl/golang-1.15-*.deb; do dpkg-deb -x "$f" go115; done
  tar -C src -xzf dl/kind_0.27.0.orig.tar.gz
  tar -C src -xzf "dl/kubernetes_${K8S_DEB%%-*}.orig.tar.gz"
  mkdir -p src/debsrc && tar -xJf dl/kubernetes_*.debian.tar.xz -C src/debsrc
  (cd "src/$K8S_SRC" && while read -r p; do [[ -n "$p" ]] && patch -p1 -s <"../debsrc/debian/patches/$p"; done <../debsrc/debian/patches/series)
  done_ fetch
}

step_build() {  # Kubernetes server binaries + minidns with Go 1.15 (GOPATH mode, vendored dependencies)
  is_done build && return
  step "build kubernetes $K8S_VERSION + minidns with go 1.15 (5-7 min on 2 cores; log: $C/k8s-build.log)"
  mkdir -p "src/$K8S_SRC/cmd/minidns" && cp "$HERE/minidns.go" "src/$K8S_SRC/cmd/minidns/main.go"
  (
    cd "src/$K8S_SRC"
    env PATH="$C/go115/usr/lib/go-1.15/bin:$PATH" GOROOT="$C/go115/usr/lib/go-1.15" HOME="$C" GOPROXY=off CGO_ENABLED=0 \
      KUBE_GIT_VERSION=$K8S_VERSION KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56 KUBE_GIT_TREE_STATE=clean \
      KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 \
      make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy cmd/kubeadm cmd/kubectl cmd/minidns"
  ) >"$C/k8s-build.log" 2>&1
  # Keep the binaries and pause.c; the 3 GB tree and Go build cache are not needed again.
  rm -rf k8s-bin && mkdir -p k8s-bin
  cp "src/$K8S_SRC"/_output/bin/* k8s-bin/
  cp "src/$K8S_SRC/build/pause/linux/pause.c" k8s-bin/
  cp k8s-bin/kubectl bin/kubectl
  rm -rf "src/$K8S_SRC" src/debsrc .cache go
  done_ build
}

debootstrap_root() {  # name suite packages
  local name=$1 suite=$2 include=$3
  is_done "root-$name" && return
  rm -rf "roots/$name" && mkdir -p roots
  debootstrap --variant=minbase --include="$include" "$suite" "roots/$name" http://deb.debian.org/debian \
    >"$C/debootstrap-$name.log" 2>&1
  rm -rf "roots/$name"/var/cache/apt/archives/*.deb "roots/$name"/var/lib/apt/lists/*
  done_ "root-$name"
}

step_roots() {  # four minbase roots; they download in parallel (network-bound, unlike the build)
  is_done root-node && is_done root-proxy && is_done root-python && is_done root-rabbitmq && return
  step "debootstrap roots: node, kube-proxy, python (bookworm), rabbitmq (trixie)"
  local pids=()
  debootstrap_root node bookworm systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,fuse-overlayfs,bash,ca-certificates,jq,procps,socat,iputils-ping,curl & pids+=($!)
  debootstrap_root proxy bookworm iptables,conntrack,ipset & pids+=($!)
  debootstrap_root python bookworm python3,python3-venv,python-is-python3,ca-certificates & pids+=($!)
  debootstrap_root rabbitmq trixie rabbitmq-server,ca-certificates & pids+=($!)
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  ((rc == 0)) || { step "a debootstrap failed: see $C/debootstrap-*.log"; return 1; }
}

step_docker() { "$HERE/dockerd.sh" >/dev/null; }

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

step_images() {  # every image a node needs, kind's base image, the node image, and the two project bases
  export DOCKER_HOST="unix://$C/docker.sock"
  if ! have_image "$NODE_IMAGE"; then
    step "node images, kind base image, node image $NODE_IMAGE"
    "$HERE/mk-images.sh" "$C/k8s-bin" "$C/bin/etcd" "$C/roots/proxy" "$C/artifacts" >/dev/null
    "$HERE/mk-base-image.sh" "$C/roots/node" "$C/src/kind-0.27.0" "$C/artifacts/preload" >/dev/null
    "$C/bin/kind" build node-image --type file --base-image local/kind-base:bookworm --image "$NODE_IMAGE-raw" \
      "$C/artifacts/kubernetes-server-linux-amd64.tar.gz" >"$C/node-image.log" 2>&1
    local d
    d=$(mktemp -d) && cp "$HERE/default-storage.yaml" "$d/"
    printf 'FROM %s-raw\nCOPY default-storage.yaml /kind/manifests/default-storage.yaml\n' "$NODE_IMAGE" >"$d/Dockerfile"
    docker build -q -t "$NODE_IMAGE" "$d" >/dev/null && rm -rf "$d"
  fi
  import_root python "$PYTHON_IMAGE"
  import_root rabbitmq "$RABBITMQ_BASE_IMAGE"
  # What run.sh (mode.sh) passes to kind and to the Dockerfiles.
  echo "$NODE_IMAGE" >"$C/node-image"
  echo "$PYTHON_IMAGE" >"$C/python-image"
  echo "$RABBITMQ_BASE_IMAGE" >"$C/rabbitmq-image"
  done_ images
}

step_status() {  # exit 0 when everything is cached (no build, no download needed), else name what is missing
  local missing=()
  for s in fetch build root-node root-proxy root-python root-rabbitmq images; do is_done "$s" || missing+=("$s"); done
  if ((${#missing[@]})); then
    echo "offline kind toolchain not cached in $C (missing: ${missing[*]})"
    return 1
  fi
  echo "offline kind toolchain cached in $C"
}

import_root() {  # root image
  have_image "$2" && return
  step "docker import roots/$1 as $2"
  trust_host_cas "$C/roots/$1"
  tar -C "$C/roots/$1" -c . | docker import - "$2" >/dev/null
}

trust_host_cas() {  # root
  # Builds on this base fetch from PyPI / Debian through whatever the host trusts (e.g. a TLS-inspecting egress
  # proxy's CA in /usr/local/share/ca-certificates): the same CAs, and pip told to use the system bundle instead
  # of its own certifi copy.
  local root=$1
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1
  fi
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
}

if [[ "${1:-}" == status ]]; then step_status; exit; fi
all=(packages fetch build roots docker images)
for s in "${@:-${all[@]}}"; do "step_$s"; done
