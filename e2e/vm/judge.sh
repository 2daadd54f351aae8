#!/usr/bin/env bash
# Judges what the VM brought back (e2e/vm/run.sh): every suite of the plan
# must have answered (a missing result is a failure), and each of its tests
# passed, inside its deadline, without skipping itself (the lane exists to
# run them). Writes DIR/results.tsv, one line a test,
# "suite/test<TAB>ok|FAILED<TAB>why", the names e2e/test.sh counts in its
# closing line; prints the failures with their output, the NodeExpandVolume
# p50 lines the suites measured, and where the time went.
#
#   judge.sh DIR QEMU_STATUS
set -uo pipefail
dir=$1 qemu_status=$2
results=$dir/results.tsv
: >"$results"
fail() { printf '%s\tFAILED\t%s\n' "$1" "$2" >>"$results"; }

# Why a test's process failed, in a line: the panic, else the exit.
reason() {
  local out=$1 rc=$2 panic
  case $rc in
    124 | 137) echo "timed out (output: $out)"; return ;;
  esac
  panic=$(grep -A1 -m1 "panicked at" "$out" 2>/dev/null | tail -1 | cut -c1-300)
  echo "${panic:-exit $rc} (output: $out)"
}

if [[ ! -s $dir/plan ]]; then
  fail "vm" "the VM never reached its script (console: $dir/console.log)"
fi
while IFS=$'\t' read -r suite _ _ command; do
  [[ -n $suite ]] || continue
  read -r _ planned <<<"$command"
  if [[ ! -d $dir/$suite ]]; then
    why="no result: the VM stopped (qemu exit $qemu_status) before the suite started"
    grep -q "ceph cluster failed" "$dir/timeline" 2>/dev/null && why="not run: the Ceph cluster did not start (log: $dir/ceph-up.log)"
    fail "$suite" "$why"
    continue
  fi
  ran=0
  for out in "$dir/$suite"/*.out; do
    [[ -f $out ]] || continue
    test=$(basename "$out" .out)
    ran=$((ran + 1))
    if [[ ! -f $dir/$suite/$test.rc ]]; then
      fail "$suite/$test" "did not finish: the VM stopped (qemu exit $qemu_status) during it (output: $out)"
    elif [[ -s $dir/$suite/$test.skips ]]; then
      fail "$suite/$test" "skipped itself inside the VM, where it must run: $(cut -f2 "$dir/$suite/$test.skips" | head -1)"
    elif [[ $(<"$dir/$suite/$test.rc") != 0 ]]; then
      fail "$suite/$test" "$(reason "$out" "$(<"$dir/$suite/$test.rc")")"
    elif ! grep -q "^test result: ok. 1 passed" "$out"; then
      fail "$suite/$test" "no such test ran (output: $out)"
    else
      printf '%s/%s\tok\t\n' "$suite" "$test" >>"$results"
    fi
  done
  for test in $planned; do
    [[ -f $dir/$suite/$test.out ]] || fail "$suite/$test" "did not run: the VM stopped (qemu exit $qemu_status) before it"
  done
  ((ran > 0)) || fail "$suite" "ran no test"
done <"$dir/plan"

passed=$(awk -F'\t' '$2 == "ok"' "$results" | wc -l)
failures=$(awk -F'\t' '$2 != "ok"' "$results" | wc -l)
echo "vm: where the time went (seconds since boot):"
sed 's/^/  /' "$dir/timeline" 2>/dev/null
grep -rh "NodeExpandVolume p50" "$dir" --include=*.out 2>/dev/null | sed 's/^/vm: /' | sort -u
if ((failures)); then
  echo "vm: failed:"
  awk -F'\t' '$2 != "ok" {print "  - " $1 ": " $3}' "$results"
fi
echo "vm: $passed passed, $failures failed"
((failures == 0))
