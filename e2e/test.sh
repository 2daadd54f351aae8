#!/usr/bin/env bash
# Runs every Swell test: unit tests, the conformance suite and the lifecycle
# tests on real loop devices, filesystems and mounts, the RBD suites, the
# local-only build (no Ceph linked), the offline checks of deploy/, the VM
# lane (krbd, rbd-nbd and ext4 online under Debian's kernel) and the kube
# lane (deploy/ on a one-node Kubernetes, where its binaries are). Tests
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
# Before the default build: they share target/debug/swell-controller, which the next line restores.
e2e/local-only.sh || status=1
e2e/failpoints-build.sh || status=1
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
e2e/fuzz.sh || status=1
# The VM lane (e2e/vm/): krbd, rbd-nbd and ext4 grown online, under Debian's
# own kernel in qemu; after the host suites, as it needs both cores. Its
# tests join the count below by name (target/vm/results.tsv).
vm_status=0
e2e/vm/run.sh || vm_status=$?
((vm_status == 0)) || status=1

# The kube lane (e2e/kube/README.md): Swell deployed from deploy/ on a
# one-node Kubernetes, the user's scenarios under a real kubelet; its
# "test result:" lines count below.
kube_log=$(mktemp /tmp/swell-kube.XXXXXX)
kube_status=0
e2e/kube/lane.sh 2>&1 | tee "$kube_log" || kube_status=$?
((kube_status == 0)) || status=1
cat "$kube_log" >>"$log"

# Each line: test<TAB>reason. A skipped test returned at once, and cargo
# counted it as passed: take it out of the passed and into the skipped,
# unless the VM lane ran it (then it counts once, as the lane judged it).
vm_results=target/vm/results.tsv
mkdir -p target/vm && touch "$vm_results"
host_skips=$(cut -f1 "$SWELL_SKIP_LOG" | sort -u)
vm_tests=$(cut -f1 "$vm_results" | sed 's|.*/||' | sort -u)
not_run=$(comm -23 <(echo "$host_skips" | sed '/^$/d') <(echo "$vm_tests"))
in_vm=$(comm -12 <(echo "$host_skips" | sed '/^$/d') <(echo "$vm_tests"))
# Skips of cargo tests ("vm lane" is the lane's own, when it cannot start).
skipped_here=$(echo "$host_skips" | sed '/^$/d' | { grep -cvx 'vm lane' || true; })
skipped=$(echo "$not_run" | sed '/^$/d' | wc -l)
if [[ -n $in_vm ]]; then
  echo
  echo "Not run on this machine but in the VM lane ($(echo "$in_vm" | wc -l)):"
  echo "$in_vm" | sed 's/^/  - /'
fi
if ((skipped)); then
  echo
  echo "Not run on this machine ($skipped), with the reason:"
  awk -F'\t' 'NR == FNR {want[$0] = 1; next} $1 in want' <(echo "$not_run") "$SWELL_SKIP_LOG" | sed 's/\t/: /; s/^/  - /' | sort -u
fi
passed=$(grep -Eo '^test result: .*' "$log" | awk '{p+=$4; f+=$6; i+=$8} END {print p+0, f+0, i+0}')
read -r p f i <<<"$passed"
vm_passed=$(awk -F'\t' '$2 == "ok"' "$vm_results" | wc -l)
vm_failed=$(awk -F'\t' '$2 != "ok"' "$vm_results" | wc -l)
# A lane that failed without judging anything (its cluster did not start)
# still fails a test.
((vm_status == 0 || vm_failed > 0)) || vm_failed=1
kube_failed=$(grep -Eo '^test result: .*' "$kube_log" | awk '{f+=$6} END {print f+0}')
((kube_status == 0 || kube_failed > 0)) || f=$((f + 1))
echo
echo "swell: $((p - skipped_here + vm_passed)) passed, $((f + vm_failed)) failed, $((i + skipped)) skipped"
exit "$status"
