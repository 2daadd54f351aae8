#!/usr/bin/env bash
# The kube lane: Swell deployed from deploy/ on a throwaway one-node
# Kubernetes, and the scenarios of e2e/tests/kube run against it under a real
# kubelet (e2e/kube/README.md). Run by e2e/test.sh; prints cargo's "test
# result:" lines, which its closing line counts.
#
#   e2e/kube/lane.sh
#   SWELL_KUBE_ONLY=rbd::steady::snapshot e2e/kube/lane.sh   # some scenarios, then the cleanup check
#
# Needs the Kubernetes binaries in ../shared/kube (SWELL_KUBE_SOURCE): without
# them the scenarios are counted as skipped, and under CI=true that is a
# failure. Builds the image (deploy/image/build.sh, dev profile) unless
# SWELL_IMAGE_BUILT=1 says the caller just did (=failed: that it failed).
# Leaves the machine as it found it, whatever fails, and fails itself if it
# cannot.
set -euo pipefail
# One kube lane a machine at a time: two would share kubelet's root,
# containerd and the node's ports, and each one's teardown and cleanliness
# check would take or flag the other's mounts and processes (seen when two
# worktrees ran the lane at once). flock keeps the lock, not the cluster's
# processes (-o).
if [[ -z ${SWELL_KUBE_LANE_LOCKED:-} ]]; then
  lock=/run/lock/swell-kube-lane.lock
  flock -n "$lock" true || echo "kube lane: waiting (at most 30 minutes) for the kube lane already running on this machine"
  SWELL_KUBE_LANE_LOCKED=1 exec flock -o -w 1800 -E 75 "$lock" "$(realpath "$0")" "$@"
fi
cd "$(dirname "$0")/../.."
root=$PWD
started=$SECONDS
source=${SWELL_KUBE_SOURCE:-$root/../shared/kube}
say() { echo "kube lane: $* ($((SECONDS - started)) s)"; }
# Waits for a swell-system workload to be ready; when it is not, prints why
# (pods, events, each pod's last log lines) where CI shows it, and fails.
rollout() {
  kubectl -n swell-system rollout status "$1" --timeout=180s && return
  say "$1 is not ready"
  kubectl -n swell-system get pods -o wide
  kubectl -n swell-system get events --sort-by=.lastTimestamp
  for pod in $(kubectl -n swell-system get pods -o name); do
    echo "--- logs of $pod"
    timeout 30 kubectl -n swell-system logs "$pod" --all-containers --prefix --tail=15
  done
  return 1
}

# The scenario binary (e2e/tests/kube), built once: later edits of the tree
# cannot change what one run tests.
build_scenarios() {
  scenario_binary=$(cargo test -q -p swell-e2e --test kube --no-run --message-format=json | grep '"kind":\["test"\],[^}]*"name":"kube"' |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)
  [[ -x $scenario_binary ]] || { echo "kube lane: the scenario binary was not built" >&2; exit 1; }
}
scenarios() {
  # Filtered; its "test result:" lines are the lane's result.
  "$scenario_binary" --show-output "$@"
}

if [[ ! -d $source ]]; then
  if [[ ${CI:-} == true ]]; then
    echo "kube lane: $source is missing: under CI=true the Kubernetes binaries must be there" >&2
    exit 1
  fi
  echo "kube lane: skipped: no Kubernetes binaries in $source; its scenarios are counted as skipped (to run them on your own cluster: e2e/kube/README.md)"
  build_scenarios
  SWELL_KUBE_SKIP="no Kubernetes binaries in $source (the kube lane's cluster)" scenarios --test-threads=8
  exit 0
fi

e2e/kube/install.sh
say "packages present"

# The binaries, unpacked once into target/kube/bin and checked every time.
bin=$root/target/kube/bin
if ! cmp -s "$source/SHA256SUMS" "$bin/SHA256SUMS" 2>/dev/null || ! (cd "$bin" && sha256sum --quiet -c SHA256SUMS); then
  rm -rf "$bin"
  mkdir -p "$bin"
  cat "$source"/kube-bin.tar.xz.part* | xz -dc | tar -x -C "$bin"
  cp "$source/SHA256SUMS" "$bin/SHA256SUMS"
  (cd "$bin" && sha256sum --quiet -c SHA256SUMS)
fi
say "Kubernetes binaries checked in $bin"

case ${SWELL_IMAGE_BUILT:-} in
  1) ;;
  failed) echo "kube lane: the image build failed before the lane; nothing to deploy" >&2; exit 1 ;;
  *) SWELL_IMAGE_PROFILE=${SWELL_IMAGE_PROFILE:-dev} deploy/image/build.sh ;;
esac
[[ -d target/image/swell ]] || { echo "kube lane: no image in target/image/swell" >&2; exit 1; }
build_scenarios
say "image and scenarios built"

dir=$root/target/kube/cluster
overlays=$dir/overlays
# The lane's Ceph cluster, beside the e2e suites' (slot N of SWELL_TEST_SLOT
# moves it as e2e/src/ceph.rs site() moves theirs).
slot=${SWELL_TEST_SLOT:-0}
[[ $slot =~ ^[1-9]$ ]] || slot=0
ceph_dir=/var/tmp/swell-kube-ceph
ceph_port=28200
if ((slot)); then ceph_dir=$ceph_dir-slot$slot; ceph_port=$((ceph_port + 100 * slot)); fi

# shellcheck disable=SC2317 # run by the EXIT trap
teardown() {
  local status=$? clean=0
  trap - EXIT
  set +e
  say "tearing down (scenarios: $([[ $status == 0 ]] && echo passed || echo "exit $status"))"
  if [[ -f $dir/env ]] && KUBECONFIG=$dir/admin.kubeconfig timeout 10 kubectl get --raw /readyz >/dev/null 2>&1; then
    export KUBECONFIG=$dir/admin.kubeconfig
    # Swell's logs, before its pods go (kubelet removes a deleted pod's logs).
    mkdir -p "$dir/log/pods"
    for pod in $(kubectl -n swell-system get pods -o name 2>/dev/null); do
      timeout 30 kubectl -n swell-system logs "$pod" --all-containers --prefix >"$dir/log/pods/${pod#pod/}.log" 2>&1
    done
    # Claims first, while the node plugin runs to unmount them, then Swell.
    for ns in $(kubectl get ns -o jsonpath='{.items[*].metadata.name}'); do
      case $ns in default | kube-* | swell-system) ;; *) timeout 200 kubectl delete ns "$ns" --wait=true --timeout=180s ;; esac
    done
    timeout 100 kubectl delete pods,pvc --all -n default --wait=true --timeout=90s
    timeout 150 kubectl wait --for=delete pv --all --timeout=120s
    timeout 100 kubectl delete validatingwebhookconfiguration swell-resize --ignore-not-found
    timeout 150 kubectl delete ns swell-system --wait=true --timeout=120s
  fi
  e2e/kube/cluster.sh down "$dir" || clean=1
  # A Ceph cluster still starting in the background stops starting first.
  if [[ -n ${ceph_up:-} ]] && kill -0 "$ceph_up" 2>/dev/null; then
    kill "$ceph_up" 2>/dev/null
    wait "$ceph_up" 2>/dev/null
  fi
  if [[ -d $ceph_dir ]]; then
    e2e/ceph/cluster.sh down "$ceph_dir" --purge || clean=1
  fi
  e2e/kube/cluster.sh check-clean "$dir" || clean=1
  [[ ! -e $ceph_dir ]] || { echo "kube lane: $ceph_dir is left" >&2; clean=1; }
  say "done; logs in $dir/log"
  if ((clean)); then
    echo "kube lane: the machine is not clean after the lane" >&2
    exit 1
  fi
  exit "$status"
}

# A cluster of an earlier, interrupted run goes first.
if [[ -d $dir ]]; then
  e2e/kube/cluster.sh down "$dir"
  rm -rf "$dir"
fi
if [[ -d $ceph_dir ]]; then e2e/ceph/cluster.sh down "$ceph_dir" --purge; fi
trap teardown EXIT
# A signal ends the lane through the same teardown.
trap 'exit 143' TERM
trap 'exit 130' INT
mkdir -p "$dir"

node_ip=$(ip -4 -o route get 1.1.1.1 | sed -n 's/.* src \([0-9.]*\).*/\1/p')
# Ceph beside Kubernetes, on the node's address so pods reach it.
SWELL_CEPH_ADDR=$node_ip e2e/ceph/cluster.sh up "$ceph_dir" "$ceph_port" >"$dir/ceph-up.log" 2>&1 &
ceph_up=$!
e2e/kube/cluster.sh up "$dir" "$bin" "$source/crd"

# check-clean's negative control, on this run's recorded host state: a loop
# device attached since `up` whose file shows, as a dead pod's does, from
# the root of a mount that is gone must be named as left over, and no
# longer once detached.
check_clean_names_a_leftover_loop() {
  local mnt dev line out
  mnt=$(mktemp -d /tmp/swell-kube-leak.XXXXXX)
  mount -t tmpfs -o size=16m swell-kube-leak "$mnt"
  truncate -s 8M "$mnt/leftover.img"
  dev=$(losetup -f --show "$mnt/leftover.img") || { umount "$mnt"; rmdir "$mnt"; return 1; }
  umount -l "$mnt"
  rmdir "$mnt"
  line="  - loop device $dev on /leftover.img"
  out=$(e2e/kube/cluster.sh check-clean "$dir" 2>&1 || true)
  losetup -d "$dev"
  grep -qxF -- "$line" <<<"$out" || { echo "kube lane: check-clean did not name a loop device left over ($dev):" >&2; echo "$out" >&2; return 1; }
  out=$(e2e/kube/cluster.sh check-clean "$dir" 2>&1 || true)
  ! grep -qF -- "loop device $dev " <<<"$out" || { echo "kube lane: check-clean names $dev after it was detached" >&2; return 1; }
}
check_clean_names_a_leftover_loop
say "check-clean names a loop device attached since up (negative control)"
# shellcheck disable=SC1091
source "$dir/env"
say "cluster up"

# The test overlays: deploy/'s, with e2e/kube/patches (one copy of each patch
# for every overlay; Kustomize loads patches only from below its file).
overlay() {
  local name=$1 base=$2
  shift 2
  mkdir -p "$overlays/$name"
  {
    echo "# Generated by e2e/kube/lane.sh: $base with the kube lane's patches."
    echo "bases:"
    echo "  - $(realpath --relative-to="$overlays/$name" "$root/$base")"
    echo "patchesStrategicMerge:"
    for patch in "$@"; do
      cp "e2e/kube/patches/$patch" "$overlays/$name/"
      echo "  - $patch"
    done
  } >"$overlays/$name/kustomization.yaml"
}
overlay local deploy/overlays/local controller.yaml node.yaml
overlay rbd deploy/overlays/rbd controller.yaml node.yaml rbd-secret.yaml storageclass-rbd.yaml
overlay webhook deploy/webhook webhook.yaml webhook-cert-manager.yaml
overlay webhook-rbd deploy/webhook webhook.yaml webhook-cert-manager.yaml webhook-rbd.yaml
export SWELL_KUBE_OVERLAYS=$overlays SWELL_KUBE_BACKENDS=local,rbd
export SWELL_KUBE_CEPH_ADMIN_CONF=$ceph_dir/ceph.conf

# 1. README: the local overlay, then the webhook, as a reader installs them.
scenarios --test-threads=1 readme::deploy_on_kubernetes_runs_as_written
scenarios --test-threads=1 readme::webhook_without_cert_manager_runs_as_written
say "README's commands ran"

# 2. The RBD overlay on top (it keeps the local backend; swell-local stays):
# a Secret per component from the test cluster, for the cephx users
# deploy/README.md creates, with its `ceph auth` commands as written (<pool>:
# the test cluster's rbd).
wait "$ceph_up" || { cat "$dir/ceph-up.log" >&2; echo "kube lane: the Ceph cluster did not start" >&2; exit 1; }
ceph=(timeout 60 ceph -c "$ceph_dir/ceph.conf")
fsid=$("${ceph[@]}" fsid)
secret=$(mktemp -d)
for component in controller node webhook; do
  command=$(grep -E "^    ceph auth get-or-create client\.swell-$component " deploy/README.md) ||
    { echo "kube lane: deploy/README.md gives no \`ceph auth\` command for the $component's user" >&2; exit 1; }
  command=${command#    ceph }
  (
    umask 077
    printf '[global]\nfsid = %s\nmon_host = v2:%s:%s\nkeyring = /etc/swell/ceph/keyring\n' "$fsid" "$node_ip" "$ceph_port" >"$secret/ceph.conf"
    # The README's words, quotes and all.
    eval "\"\${ceph[@]}\" ${command//<pool>/rbd}" >"$secret/keyring"
  )
  kubectl -n swell-system create secret generic "swell-ceph-$component" --from-file="$secret/ceph.conf" --from-file="$secret/keyring" >/dev/null
done
rm -rf "$secret"
kubectl apply -k "$overlays/rbd" 2>&1 | { grep -v -e unchanged -e Warning || true; }
kubectl apply -k "$overlays/webhook-rbd" 2>&1 | { grep -v -e unchanged -e Warning || true; }
rollout deployment/swell-controller
rollout daemonset/swell-node
rollout deployment/swell-webhook
say "the RBD overlay and the webhook with RBD applied"

# 3. The scenarios: steady ones side by side, each disruptive one for both
# backends at once, then the check that nothing is left.
status=0
if [[ -n ${SWELL_KUBE_ONLY:-} ]]; then
  # A developer's run of some scenarios (a libtest filter), then the cleanup check.
  scenarios --test-threads=12 "$SWELL_KUBE_ONLY" || status=1
else
  scenarios --test-threads=12 ::steady:: || status=1
  # Both backends' five grows and the local auto-grow under a filling pod.
  scenarios --test-threads=3 ::timed:: || status=1
  for scenario in node_plugin_killed controller_leader_deleted kep1790 swell_volumes_shows; do
    scenarios --test-threads=2 "::disruptive::$scenario" || status=1
  done
fi
scenarios --test-threads=2 ::cleanup:: || status=1
say "scenarios done"
exit "$status"
