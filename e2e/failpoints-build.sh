#!/usr/bin/env bash
# The failpoint build: swell-controller with the cargo feature `failpoints`,
# which honours the FAILPOINTS environment variable (the fail crate) at the
# fault-injection points of the RBD backend. Only the tests that kill or
# stall a controller at such a point run it (e2e/src/process.rs picks it when
# a test sets FAILPOINTS); no other build enables the feature, so no binary a
# user runs has the points (.ci/no-failpoints checks that).
#
# It is copied to target/failpoints/swell-controller at once: built in the
# same target directory, it shares every dependency's compile with the normal
# build, which then writes target/debug/swell-controller back.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${CARGO_TARGET_DIR:-target}/failpoints"
executable=$(cargo build --quiet -p swell-controller --features failpoints --bin swell-controller --message-format=json |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
[[ -x $executable ]] || { echo "failpoints-build: cargo built no swell-controller" >&2; exit 1; }
mkdir -p "$out"
cp "$executable" "$out/swell-controller.partial"
mv "$out/swell-controller.partial" "$out/swell-controller"
echo "failpoints-build: $out/swell-controller (cargo feature failpoints)"
