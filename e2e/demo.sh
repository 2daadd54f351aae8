#!/usr/bin/env bash
# Swell's main job in one command: a volume created, mounted, written, grown
# online and torn down on the embedded local backend, over real gRPC.
# Extra arguments go to swell-demo (try --fs btrfs, or --help).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "run as root: the demo attaches loop devices and mounts filesystems" >&2; exit 1; }
e2e/install-deps.sh
cargo build --quiet -p swell-e2e --bin swell-demo
exec target/debug/swell-demo "$@"
