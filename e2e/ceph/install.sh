#!/usr/bin/env bash
# Installs Debian's Ceph 16.2 packages for the throwaway test cluster (e2e/ceph/cluster.sh):
# daemons (mon, mgr, osd), the CLIs, rbd-fuse for the data path without kernel rbd/nbd,
# and the librbd/librados headers Swell's FFI layer builds against. Idempotent.
set -euo pipefail

packages=(ceph-mon ceph-mgr ceph-osd ceph-common rbd-fuse librbd-dev librados-dev fuse3 xfsprogs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # No systemd here, but keep maintainer scripts from starting any daemon regardless.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
  fi
  trap 'if ((created_policy)); then rm -f "$policy"; fi' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

for tool in ceph-mon ceph-mgr ceph-osd ceph ceph-authtool monmaptool rbd rbd-fuse fusermount losetup; do
  command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
done
[[ -f /usr/include/rbd/librbd.h ]] || { echo "missing librbd.h after install" >&2; exit 1; }

# The packages must not leave daemons behind (there is no systemd, but check anyway).
for d in ceph-mon ceph-mgr ceph-osd ceph-mds; do
  if pgrep -x "$d" >/dev/null; then
    echo "warning: $d running after install:" >&2
    pgrep -a -x "$d" >&2 || true
  fi
done
echo "ceph $(ceph --version | awk '{print $3}') ready"
