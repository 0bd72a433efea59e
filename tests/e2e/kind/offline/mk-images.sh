#!/bin/bash
# Build every container image a kind v1.20.2 node needs, from locally built/packaged binaries.
# Output: $OUT/kubernetes/server/bin/{kubeadm,kubelet,kubectl,kube-*.tar,*.docker_tag} (kind --type file layout)
#         $OUT/preload/*.tar (images kind would otherwise pull), and a tarball kubernetes-server-linux-amd64.tar.gz
set -euo pipefail
B=${1:?dir with the built kubernetes binaries and pause.c}; ETCD_BIN=${2:?etcd 3.4 binary}; ROOTFS_MIN=${3:?minbase rootfs for kube-proxy}; OUT=${4:?out dir}
VER=v1.20.2
W=$(mktemp -d); trap 'rm -rf $W' EXIT
mkdir -p $OUT/kubernetes/server/bin $OUT/preload
cp $B/kubeadm $B/kubelet $B/kubectl $OUT/kubernetes/server/bin/
mkimg() { # tag dir
  docker build -q -t "$1" "$2" >/dev/null
}
# --- control plane images: static binaries on scratch
for c in kube-apiserver kube-controller-manager kube-scheduler; do
  mkdir -p $W/$c; cp $B/$c $W/$c/
  printf 'FROM scratch\nCOPY %s /usr/local/bin/%s\nENTRYPOINT ["/usr/local/bin/%s"]\n' $c $c $c > $W/$c/Dockerfile
  mkimg k8s.gcr.io/$c:$VER $W/$c
  docker save k8s.gcr.io/$c:$VER -o $OUT/kubernetes/server/bin/$c.tar
  echo $VER > $OUT/kubernetes/server/bin/$c.docker_tag
done
# --- kube-proxy: needs iptables/conntrack userland -> minbase rootfs + those packages already in it
mkdir -p $W/kp/rootfs; tar -C $ROOTFS_MIN -c . | tar -C $W/kp/rootfs -x
cp $B/kube-proxy $W/kp/rootfs/usr/local/bin/kube-proxy.real
cat > $W/kp/rootfs/usr/local/bin/kube-proxy <<'S'
#!/bin/sh
# pick the iptables backend the node uses (like upstream iptables-wrapper)
l=$( (iptables-legacy-save; ip6tables-legacy-save) 2>/dev/null | grep -c '^-' ); n=$( (iptables-nft-save; ip6tables-nft-save) 2>/dev/null | grep -c '^-' )
if [ "${l:-0}" -ge "${n:-0}" ]; then m=legacy; else m=nft; fi
for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do update-alternatives --set ${t%%-*} /usr/sbin/${t%%-*}-$m >/dev/null 2>&1 || true; done
exec /usr/local/bin/kube-proxy.real "$@"
S
chmod 755 $W/kp/rootfs/usr/local/bin/kube-proxy
tar -C $W/kp/rootfs -c . | docker import - k8s.gcr.io/kube-proxy:$VER >/dev/null
docker save k8s.gcr.io/kube-proxy:$VER -o $OUT/kubernetes/server/bin/kube-proxy.tar
echo $VER > $OUT/kubernetes/server/bin/kube-proxy.docker_tag
echo $VER > $OUT/kubernetes/version
# --- pause (from the Kubernetes tree), also used as a do-nothing stand-in for kindnetd / local-path images
mkdir -p $W/pause; gcc -Os -static -o $W/pause/pause $B/pause.c; strip $W/pause/pause
printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' > $W/pause/Dockerfile
mkimg registry.k8s.io/pause:3.10 $W/pause
# --- etcd (Debian etcd-server 3.4.x binary, tagged as the version kubeadm 1.20 expects)
mkdir -p $W/etcd/lib/x86_64-linux-gnu $W/etcd/lib64; cp $ETCD_BIN $W/etcd/etcd
cp -L /lib/x86_64-linux-gnu/libc.so.6 $W/etcd/lib/x86_64-linux-gnu/; cp -L /lib64/ld-linux-x86-64.so.2 $W/etcd/lib64/
printf 'FROM scratch\nCOPY lib /lib\nCOPY lib64 /lib64\nCOPY etcd /usr/local/bin/etcd\nENTRYPOINT ["/usr/local/bin/etcd"]\n' > $W/etcd/Dockerfile
mkimg k8s.gcr.io/etcd:3.4.13-0 $W/etcd
# --- CoreDNS stand-in (minidns, built from the Kubernetes vendor tree)
mkdir -p $W/dns; cp $B/minidns $W/dns/coredns
printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' > $W/dns/Dockerfile
mkimg k8s.gcr.io/coredns:1.7.0 $W/dns
for alias in docker.io/kindest/kindnetd:v20250214-acbabc1a docker.io/kindest/local-path-provisioner:v20250214-acbabc1a docker.io/kindest/local-path-helper:v20241212-8ac705d0; do
  docker tag registry.k8s.io/pause:3.10 $alias
done
for img in registry.k8s.io/pause:3.10 k8s.gcr.io/etcd:3.4.13-0 k8s.gcr.io/coredns:1.7.0 docker.io/kindest/kindnetd:v20250214-acbabc1a docker.io/kindest/local-path-provisioner:v20250214-acbabc1a docker.io/kindest/local-path-helper:v20241212-8ac705d0; do
  docker save $img -o $OUT/preload/$(echo $img | tr '/:@' '___').tar
done
tar -C $OUT -czf $OUT/kubernetes-server-linux-amd64.tar.gz kubernetes
ls -la $OUT/kubernetes/server/bin $OUT/preload
