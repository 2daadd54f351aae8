#!/usr/bin/env bash
# Installs what the kube lane runs beside the Kubernetes binaries (which come
# from ../shared/kube, not from a package): Debian's etcd, containerd, runc,
# CNI plugins (bridge, host-local, loopback), busybox-static (the workload
# image), skopeo and umoci (images without a registry), gcc (the pause
# image), openssl (the cluster's certificates). Maintainer scripts start no
# daemon (see e2e/apt.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
source e2e/apt.sh
install_missing etcd-server containerd runc containernetworking-plugins busybox-static skopeo umoci gcc libc6-dev openssl iptables
require_programs etcd containerd containerd-shim-runc-v2 runc ctr busybox skopeo umoci gcc openssl iptables kubectl
for plugin in bridge host-local loopback; do
  [[ -x /usr/lib/cni/$plugin ]] || { echo "missing /usr/lib/cni/$plugin after install" >&2; exit 1; }
done
