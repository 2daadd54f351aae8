#!/usr/bin/env bash
# Runs every Swell test: unit tests, the conformance suite and the lifecycle
# tests on real loop devices, filesystems and mounts, the RBD suites, the
# local-only build (no Ceph linked), the offline checks of deploy/ and the
# kube lane (deploy/ on a one-node Kubernetes, where its binaries are). Tests
# that cannot run on this machine (no root, loop devices or FUSE) are listed
# at the end with their reason and counted as skipped, not passed; with
# CI=true a program the install step provides is required. A Ceph cluster
# that does not start fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "run as root: the tests attach loop devices and mount filesystems" >&2; exit 1; }
e2e/install-deps.sh
e2e/ceph/install.sh
e2e/install-test-tools.sh

export SWELL_SKIP_LOG="${SWELL_SKIP_LOG:-$(mktemp /tmp/swell-skips.XXXXXX)}"
: > "$SWELL_SKIP_LOG"
status=0
# Before the default build: it shares target/debug/swell-controller, which the next line restores.
e2e/local-only.sh || status=1
# The chaos test runs swell-controller as a real process: build the binaries first.
cargo build --workspace --bins
log=$(mktemp /tmp/swell-test.XXXXXX)
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# deploy/ renders, validates and holds what Swell needs (it reads the binaries' --help).
target/test-venv/bin/python e2e/deploy/check_manifests.py || status=1
# The benchmark's short mode (a few runs, 100 volumes, both backends), so it
# never rots: every figure must still be measurable; no timing is judged.
target/debug/swell-bench --short --out target/bench-short >target/bench-short.log 2>&1 ||
  { tail -40 target/bench-short.log; echo "swell-bench --short failed (log: target/bench-short.log)" >&2; status=1; }

# The kube lane (e2e/kube/README.md): Swell deployed from deploy/ on a
# one-node Kubernetes, the user's scenarios under a real kubelet; its
# "test result:" lines count below.
e2e/kube/lane.sh 2>&1 | tee -a "$log" || status=1

# Each line: test<TAB>reason. A skipped test returned at once, and cargo
# counted it as passed: take it out of the passed and into the skipped.
skipped=$(cut -f1 "$SWELL_SKIP_LOG" | sort -u | wc -l)
if ((skipped)); then
  echo
  echo "Not run on this machine ($skipped), with the reason:"
  sed 's/\t/: /; s/^/  - /' "$SWELL_SKIP_LOG" | sort -u
fi
passed=$(grep -Eo '^test result: .*' "$log" | awk '{p+=$4; f+=$6; i+=$8} END {print p+0, f+0, i+0}')
read -r p f i <<<"$passed"
echo
echo "swell: $((p - skipped)) passed, $f failed, $((i + skipped)) skipped"
exit "$status"
