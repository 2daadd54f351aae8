#!/usr/bin/env bash
# The tests e2e/test.sh expects to run, kept in e2e/expected-tests.tsv (one
# "binary<TAB>test" line a test): what `cargo test --workspace` runs and the
# kube lane's scenarios (the `test = false` target kube), from what their
# binaries list (`cargo test -- --list`), and the checks of
# e2e/deploy/check_manifests.py (read from its source). e2e/test.sh's
# closing line counts a listed test missing from the results as failed.
#
#   e2e/expected-tests.sh           # rewrite the list (after adding, renaming or removing a test)
#   e2e/expected-tests.sh --check   # fail, naming them, if the list and the binaries differ
set -euo pipefail
cd "$(dirname "$0")/.."
list=e2e/expected-tests.tsv
current=$(mktemp /tmp/swell-expected.XXXXXX)
trap 'rm -f "$current"' EXIT
{
  cargo test --workspace --locked -- --list 2>&1
  cargo test --locked -p swell-e2e --test kube -- --list 2>&1
} | python3 e2e/closing_line.py list --manifest-checks e2e/deploy/check_manifests.py >"$current"
[[ -s $current ]] || { echo "expected-tests: the test binaries listed no test" >&2; exit 1; }
if [[ ${1:-} == --check ]]; then
  if ! diff -u --label "$list" --label "cargo test -- --list" "$list" "$current"; then
    echo "expected-tests: $list differs from what the test binaries and check_manifests.py list (+: not in the list, -: gone); run e2e/expected-tests.sh" >&2
    exit 1
  fi
  echo "expected-tests: $list lists the $(wc -l <"$current") tests the binaries list"
else
  cp "$current" "$list"
  echo "expected-tests: wrote $(wc -l <"$list") tests to $list"
fi
