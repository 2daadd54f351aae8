#!/usr/bin/env bash
# Installs what Swell's demo and tests need on a fresh Debian machine:
# filesystem tools for mkfs/grow, util-linux (blkid; losetup and mount for the
# tests' own checks), libclang for the build (the loop-device crate generates
# its ioctl bindings from <linux/loop.h> with bindgen), and Ceph
# 16.2 (librados/librbd to build the controller, daemons and rbd-fuse for the
# RBD tests). Rust comes from the machine's toolchain; protoc is vendored.
set -euo pipefail

packages=(xfsprogs btrfs-progs e2fsprogs util-linux mount libclang-dev python3 python3-venv)
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

# grpcio from PyPI, for the test that calls the sockets as grpc-python does
# (e2e/tests/grpc_clients.rs); a virtualenv keeps it off the system Python.
python_env=/var/lib/swell-test/python
if ! "$python_env/bin/python" -c 'import grpc' 2>/dev/null; then
  echo "installing grpcio into $python_env"
  /usr/bin/python3 -m venv "$python_env"
  "$python_env/bin/pip" install -q grpcio
fi

"$(dirname "$0")/ceph/install.sh"
