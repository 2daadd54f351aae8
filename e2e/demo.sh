#!/usr/bin/env bash
# Swell's main job in one command: a volume created, mounted, written, grown
# online and torn down on the embedded local backend, over real gRPC.
# Extra arguments go to swell-demo (try --fs btrfs, --backend rbd, or --help).
# The local demo builds without the `rbd` feature and installs nothing from
# Ceph; `--backend rbd` installs Ceph 16.2 and builds with librados/librbd.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "run as root: the demo attaches loop devices and mounts filesystems" >&2; exit 1; }
e2e/install-deps.sh
features=(--no-default-features)
previous=
for arg in "$@"; do
  if [[ $arg == --backend=rbd || ($previous == --backend && $arg == rbd) ]]; then
    e2e/ceph/install.sh
    features=()
  fi
  previous=$arg
done
cargo build --quiet -p swell-e2e --bin swell-demo "${features[@]}"
exec target/debug/swell-demo "$@"
