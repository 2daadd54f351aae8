#!/usr/bin/env bash
# Installs Debian's Ceph 16.2 packages for the throwaway test cluster (e2e/ceph/cluster.sh):
# daemons (mon, mgr, osd), the CLIs, rbd-fuse for the data path without kernel rbd/nbd,
# and the librbd/librados headers Swell's FFI layer builds against. Idempotent.
set -euo pipefail
source "$(dirname "$0")/../apt.sh"

install_missing ceph-mon ceph-mgr ceph-osd ceph-common rbd-fuse librbd-dev librados-dev fuse3 xfsprogs
require_programs ceph-mon ceph-mgr ceph-osd ceph ceph-authtool monmaptool rbd rbd-fuse fusermount losetup
[[ -f /usr/include/rbd/librbd.h ]] || { echo "missing librbd.h after install" >&2; exit 1; }

# The packages must not leave daemons behind (there is no systemd, but check anyway).
for d in ceph-mon ceph-mgr ceph-osd ceph-mds; do
  if pgrep -x "$d" >/dev/null; then
    echo "warning: $d running after install:" >&2
    pgrep -a -x "$d" >&2 || true
  fi
done
echo "ceph $(ceph --version | awk '{print $3}') ready"
