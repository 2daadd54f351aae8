#!/usr/bin/env bash
# Installs what Swell's local demo and the local backend's tests need on a
# fresh Debian machine: filesystem tools for mkfs/grow, util-linux (blkid;
# losetup and mount for the tests' own checks), and libclang for the build
# (the loop-device crate generates its ioctl bindings from <linux/loop.h>
# with bindgen). Nothing from Ceph: the RBD parts install theirs
# (e2e/ceph/install.sh, called by e2e/test.sh and `demo.sh --backend rbd`).
# Rust comes from the machine's toolchain; protoc is vendored.
set -euo pipefail

# fonts-dejavu-core: the font swell-bench draws its chart's text with.
packages=(xfsprogs btrfs-progs e2fsprogs util-linux mount libclang-dev fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for tool in mkfs.xfs xfs_growfs mkfs.btrfs btrfs mkfs.ext4 resize2fs e2fsck losetup blkid mount umount; do
  command -v "$tool" >/dev/null || { echo "missing $tool after install" >&2; exit 1; }
done
