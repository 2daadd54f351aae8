#!/usr/bin/env bash
# A short coverage-guided run of every fuzz target (fuzz/, swell-fuzz) under
# libFuzzer: SWELL_FUZZ_SECONDS each (default 15), starting from the
# checked-in seeds and the inputs that once failed. Prints per target the
# inputs run and the panics; any panic, timeout or out-of-memory fails the
# run, and the input is kept under target/fuzz/artifacts/<target>/.
#
# Only Swell's crates are instrumented (e2e/fuzz-rustc), on stable rustc:
# dependencies come from the test build's dev profile, so this builds little
# after `cargo test`. libFuzzer itself needs a C++ compiler, which
# e2e/install-test-tools.sh installs.
#
# A longer run of one target:
#   SWELL_FUZZ_SECONDS=600 e2e/fuzz.sh csi_controller
set -euo pipefail
cd "$(dirname "$0")/.."
# Under e2e/test.sh each target is one result of its closing line.
# shellcheck source=e2e/results.sh
source e2e/results.sh
seconds=${SWELL_FUZZ_SECONDS:-15}
command -v c++ >/dev/null || { echo "fuzz: no C++ compiler to build libFuzzer (e2e/install-test-tools.sh installs g++)" >&2; exit 1; }

out="${CARGO_TARGET_DIR:-target}/fuzz"
started=$SECONDS
fuzzer=$(RUSTC_WORKSPACE_WRAPPER="$PWD/e2e/fuzz-rustc" cargo build --quiet --locked -p swell-fuzz --features libfuzzer --bin swell-fuzz \
  --message-format=json-render-diagnostics | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
[[ -x $fuzzer ]] || { echo "fuzz: cargo built no swell-fuzz" >&2; exit 1; }
echo "fuzz: built $fuzzer in $((SECONDS - started)) s"

if (($#)); then targets=("$@"); else mapfile -t targets < <(cd fuzz/corpus && find . -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort); fi
status=0
for target in "${targets[@]}"; do
  corpus="$out/corpus/$target" artifacts="$out/artifacts/$target/" scratch="$out/tmp/$target" log="$out/$target.log"
  mkdir -p "$corpus" "$artifacts" "$scratch"
  inputs=(fuzz/corpus/"$target")
  [[ -d fuzz/regressions/$target ]] && inputs+=(fuzz/regressions/"$target")
  # New inputs go to the first directory, under target/: the checked-in
  # seeds stay as they are. TMPDIR holds the controller's scratch backend.
  result=0 began=$SECONDS
  TMPDIR="$scratch" SWELL_FUZZ_TARGET="$target" "$fuzzer" "$corpus" "${inputs[@]}" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1 || result=$?
  rm -rf "$scratch"
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  panics=$(grep -c '^thread .* panicked' "$log" || true)
  echo "fuzz $target: ${runs:-0} inputs in $((SECONDS - began)) s, $panics panics"
  if ((result != 0)); then
    status=1
    report "fuzz $target" FAILED "exit $result, input under $artifacts"
    grep -E -A3 '^thread .* panicked|ERROR: libFuzzer|^SUMMARY' "$log" | head -20 >&2 || true
    echo "fuzz $target failed (exit $result); input under $artifacts, log $log" >&2
  else
    report "fuzz $target" ok
  fi
done
echo "fuzz: ${#targets[@]} targets in $((SECONDS - started)) s"
exit "$status"
