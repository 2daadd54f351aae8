#!/usr/bin/env bash
# Runs every Swell test: unit tests, the conformance suite and the lifecycle
# tests on real loop devices, filesystems and mounts, the RBD suites, the
# local-only build (no Ceph linked) and the offline checks of deploy/. Tests
# that cannot run on this machine are listed at the end with their reason.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $(id -u) == 0 ]] || { echo "run as root: the tests attach loop devices and mount filesystems" >&2; exit 1; }
e2e/install-deps.sh
e2e/ceph/install.sh
e2e/deploy/install.sh

export SWELL_SKIP_LOG="${SWELL_SKIP_LOG:-$(mktemp /tmp/swell-skips.XXXXXX)}"
: > "$SWELL_SKIP_LOG"
status=0
# Before the default build: it shares target/debug/swell-controller, which the next line restores.
e2e/local-only.sh || status=1
# The chaos test runs swell-controller as a real process: build the binaries first.
cargo build --workspace --bins
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/swell-test.log || status=$?
# deploy/ renders, validates and holds what Swell needs (it reads the binaries' --help).
target/deploy-venv/bin/python e2e/deploy/check_manifests.py || status=1

if [[ -s $SWELL_SKIP_LOG ]]; then
  echo
  echo "Not run on this machine ($(wc -l < "$SWELL_SKIP_LOG")), with the reason:"
  sed 's/^/  - /' "$SWELL_SKIP_LOG"
fi
passed=$(grep -Eo '^test result: .*' /tmp/swell-test.log | awk '{p+=$4; f+=$6; i+=$8} END {print p+0, f+0, i+0}')
read -r p f i <<<"$passed"
skipped=$(wc -l < "$SWELL_SKIP_LOG")
# A test that skipped itself returned early and cargo counted it as passed.
echo
echo "swell: $((p - skipped)) passed, $f failed, $((i + skipped)) skipped"
exit "$status"
