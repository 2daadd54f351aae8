#!/usr/bin/env bash
# Runs every Swell test: unit tests, the conformance suite and the lifecycle
# tests on real loop devices, filesystems and mounts, the RBD suites, the
# local-only build (no Ceph linked), the offline checks of deploy/, the VM
# lane (krbd, rbd-nbd and ext4 online under Debian's kernel) and the kube
# lane (deploy/ on a one-node Kubernetes, where its binaries are). Tests
# that cannot run on this machine (no root, loop devices or FUSE) are listed
# at the end with their reason and counted as skipped, not passed; with
# CI=true a program the install step provides is required, and a skip for a
# reason not on e2e/allowed-skips.txt fails. A test of
# e2e/expected-tests.tsv missing from the results fails, by name. A Ceph
# cluster that does not start fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "run as root: the tests attach loop devices and mount filesystems" >&2; exit 1; }
e2e/install-deps.sh
e2e/ceph/install.sh
e2e/install-test-tools.sh

export SWELL_SKIP_LOG="${SWELL_SKIP_LOG:-$(mktemp /tmp/swell-skips.XXXXXX)}"
: > "$SWELL_SKIP_LOG"
# What is not a cargo test reports into the closing line through
# $SWELL_RESULTS (e2e/results.sh: `report` from inside a script, `check`
# around it). A new lane or script is one `check` line below.
export SWELL_RESULTS="${SWELL_RESULTS:-$(mktemp /tmp/swell-results.XXXXXX)}"
: > "$SWELL_RESULTS"
# shellcheck source=e2e/results.sh
source e2e/results.sh
# shellcheck source=e2e/disk.sh
source e2e/disk.sh
status=0
# Before the default build: they share target/debug/swell-controller, which the next line restores.
check "local-only build (e2e/local-only.sh)" e2e/local-only.sh || status=1
check "failpoints build (e2e/failpoints-build.sh)" e2e/failpoints-build.sh || status=1
# The chaos test runs swell-controller as a real process: build the binaries first.
cargo build --workspace --bins
log=$(mktemp /tmp/swell-test.XXXXXX)
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# Every test the binaries list is in e2e/expected-tests.tsv, whose tests the closing line expects.
disk_report "after cargo test"
check "e2e/expected-tests.tsv matches cargo test -- --list" e2e/expected-tests.sh --check || status=1
# deploy/ renders, validates and holds what Swell needs (it reads the
# binaries' --help); each of its checks reports by name.
check "deploy manifests (e2e/deploy/check_manifests.py)" target/test-venv/bin/python e2e/deploy/check_manifests.py || status=1
# The benchmark's short mode (a few runs, 100 volumes, both backends), so it
# never rots: every figure must still be measurable; no timing is judged.
# shellcheck disable=SC2317 # run by check
bench_short() {
  target/debug/swell-bench --short --out target/bench-short >target/bench-short.log 2>&1 ||
    { tail -40 target/bench-short.log; echo "swell-bench --short failed (log: target/bench-short.log)" >&2; return 1; }
}
check "swell-bench --short" bench_short || status=1
# Each fuzz target briefly (fuzz/, e2e/fuzz.sh), one result a target.
check "fuzz (e2e/fuzz.sh)" e2e/fuzz.sh || status=1
# The VM lane (e2e/vm/): krbd, rbd-nbd and ext4 grown online, under Debian's
# own kernel in qemu; after the host suites, as it needs both cores. It
# judges its tests by name (target/vm/results.tsv); a lane that cannot
# start off CI notes its reason in the skip log instead: one skipped test.
vm_results=target/vm/results.tsv
disk_report "before the vm lane"
# shellcheck disable=SC2317 # run by check
vm_lane() {
  local rc=0
  e2e/vm/run.sh || rc=$?
  mkdir -p target/vm && touch "$vm_results"
  cat "$vm_results" >>"$SWELL_RESULTS"
  if ((rc == 0)) && [[ ! -s $vm_results ]]; then
    report "vm lane" skipped "$(awk -F'\t' '$1 == "vm lane" {why = $2} END {print why}' "$SWELL_SKIP_LOG")"
  fi
  return "$rc"
}
check "vm lane" vm_lane || status=1

# The kube lane (e2e/kube/README.md): Swell deployed from deploy/ on a
# one-node Kubernetes, the user's scenarios under a real kubelet; its
# "test result:" lines count below.
disk_report "before the kube lane"
# The test executables are done with (the kube lane builds its scenarios):
# under CI, on a possibly small disk, they make room for the lane's cluster.
if [[ ${CI:-} == true ]]; then
  disk_free_test_executables kube
  disk_report "test executables removed"
fi
kube_log=$(mktemp /tmp/swell-kube.XXXXXX)
kube_status=0
e2e/kube/lane.sh 2>&1 | tee "$kube_log" || kube_status=$?
((kube_status == 0)) || status=1

# The closing line (e2e/closing_line.py): a test of e2e/expected-tests.tsv
# missing from the results, or a skip under CI=true for a reason not on
# e2e/allowed-skips.txt, counts as failed, by name.
python3 e2e/closing_line.py tally --cargo-log "$log" --expected e2e/expected-tests.tsv \
  --results "$SWELL_RESULTS" --vm-results "$vm_results" --skips "$SWELL_SKIP_LOG" --allowed-skips e2e/allowed-skips.txt \
  --kube-log "$kube_log" --kube-status "$kube_status" || status=1
exit "$status"
