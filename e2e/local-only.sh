#!/usr/bin/env bash
# The local-only build (cargo feature `rbd` off), what `e2e/demo.sh` runs
# without `--backend rbd`: swell-controller and swell-demo link no Ceph
# library, the controller serves the local backend, and it refuses the RBD
# flags by name instead of starting without them.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() {
  echo "local-only: $*" >&2
  exit 1
}

work=$(mktemp -d /tmp/swell-local-only.XXXXXX)
trap 'kill "${pid-}" 2>/dev/null || true; rm -rf "$work"' EXIT
# Copied aside at once: the default build writes the same target/debug paths.
executables=$(cargo build --quiet -p swell-controller -p swell-e2e --no-default-features --bin swell-controller --bin swell-demo \
  --message-format=json | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
[[ -n $executables ]] || fail "cargo built no executable"
# shellcheck disable=SC2086 # one path per line, none with spaces
cp $executables "$work/"
controller=$work/swell-controller
[[ -x $controller ]] || fail "no swell-controller among: $executables"
for exe in $executables; do
  if ldd "$work/$(basename "$exe")" | grep -E 'librados|librbd'; then
    fail "$(basename "$exe") links Ceph without the rbd feature"
  fi
done
flags=(--endpoint "unix://$work/csi.sock" --state-dir "$work/controller" --local-state-dir "$work/local")

if refused=$(timeout 30 "$controller" "${flags[@]}" --rbd-cluster-id c --rbd-ceph-conf "$work/ceph.conf" --rbd-keyring "$work/keyring" 2>&1); then
  fail "started with RBD flags: $refused"
fi
grep -q 'built without Ceph RBD support' <<<"$refused" || fail "RBD flags refused without saying why: $refused"

"$controller" "${flags[@]}" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  [[ -S $work/csi.sock ]] && break
  kill -0 "$pid" 2>/dev/null || fail "exited at start-up: $(cat "$work/log")"
  sleep 0.1
done
[[ -S $work/csi.sock ]] || fail "no socket after 10 s: $(cat "$work/log")"
echo "local-only: swell-controller and swell-demo link no Ceph library; the controller serves local volumes and refuses --rbd-* by name"
