#!/usr/bin/env bash
# Turns the lane's plan (e2e/vm/plan: suite, whether it needs the Ceph
# cluster, environment, the cargo test target of swell-e2e, and optionally
# the exact tests to run) into the lines the guest runs:
# "suite<TAB>needs<TAB>environment<TAB>binary tests...", the binary being the
# one built here (cargo test --no-run); the guest runs each test on its own.
set -euo pipefail
[[ $# == 1 ]] || { echo "usage: plan.sh PLAN" >&2; exit 2; }
mapfile -t lines < <(grep -v '^\s*\(#\|$\)' "$1")
declare -A targets=()
for line in "${lines[@]}"; do
  read -r _ _ _ target _ <<<"$line"
  targets[$target]=1
done
args=()
for target in "${!targets[@]}"; do args+=(--test "$target"); done
declare -A binary=()
while IFS=$'\t' read -r target path; do
  binary[$target]=$path
done < <(cargo test --no-run -q -p swell-e2e "${args[@]}" --message-format=json |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        print(m["target"]["name"] + "\t" + m["executable"])
')
for line in "${lines[@]}"; do
  read -r suite needs environment target tests <<<"$line"
  [[ -n ${binary[$target]:-} ]] || { echo "plan.sh: no test binary for $target" >&2; exit 1; }
  command="${binary[$target]} $tests"
  printf '%s\t%s\t%s\t%s\n' "$suite" "$needs" "$environment" "$command"
done
