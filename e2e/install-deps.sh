#!/usr/bin/env bash
# Installs what Swell's local demo and the local backend's tests need on a
# fresh Debian machine: filesystem tools for mkfs/grow, util-linux (blkid;
# losetup and mount for the tests' own checks), and libclang for the build
# (the loop-device crate generates its ioctl bindings from <linux/loop.h>
# with bindgen). Nothing from Ceph: the RBD parts install theirs
# (e2e/ceph/install.sh, called by e2e/test.sh and `demo.sh --backend rbd`).
# Rust comes from the machine's toolchain; protoc is vendored.
set -euo pipefail
source "$(dirname "$0")/apt.sh"

# fonts-dejavu-core: the font swell-bench draws its chart's text with.
install_missing xfsprogs btrfs-progs e2fsprogs util-linux mount libclang-dev fonts-dejavu-core
require_programs mkfs.xfs xfs_growfs mkfs.btrfs btrfs mkfs.ext4 resize2fs e2fsck losetup blkid mount umount
