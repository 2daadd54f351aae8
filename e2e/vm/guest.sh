#!/bin/bash
# Runs inside the lane's VM as PID 1, on the host's root filesystem (read-only
# 9p under a tmpfs overlay). Makes the machine usable (mounts, the kernel's
# modules, udev, a scratch disk on /var/tmp), starts one Ceph cluster, runs
# the plan the host wrote, and powers off, whatever happened. Everything it
# reports goes to the results share: a suite's output, exit code and skips,
# and a timeline; the host judges them (e2e/vm/run.sh).
#
# From the kernel command line (the kernel hands unknown name=value pairs to
# init as environment): swell_repo (the checkout), swell_modules (the unpacked
# kernel's /lib/modules), swell_ci (the host's CI).
set -u
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
results=/run/swell-vm/results
started=$(cut -d' ' -f1 /proc/uptime)

poweroff() {
  sync
  umount "$results" 2>/dev/null
  echo o >/proc/sysrq-trigger
  sleep 30
}
trap poweroff EXIT

mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p "$results"

# Mounts over DIR (the other arguments are mount's) and keeps the checkout
# visible where it lies under DIR (a CI clone in /tmp, say).
mount_over() {
  local dir=$1
  shift
  [[ $swell_repo == "$dir"/* ]] || { mount "$@" "$dir"; return; }
  mkdir -p /run/swell-vm/repo && mount --bind "$swell_repo" /run/swell-vm/repo &&
    mount "$@" "$dir" &&
    mkdir -p "$swell_repo" && mount --move /run/swell-vm/repo "$swell_repo"
}
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$results" || exit 1
exec >>"$results/guest.log" 2>&1
# Seconds since boot, so the host can tell where the time went.
mark() { echo "$(cut -d' ' -f1 /proc/uptime) $*" | tee -a "$results/timeline"; }
mark "guest script started (init handed over at $started)"
[[ -n ${swell_repo:-} && -n ${swell_modules:-} ]] || { echo "swell_repo and swell_modules must be on the kernel command line"; exit 1; }

# What devtmpfs and a bare /run lack, and bash's process substitution needs.
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount_over /tmp -t tmpfs -o mode=1777 tmpfs
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /run/lock /run/udev
mkdir -p /lib/modules && mount --bind "$swell_modules" /lib/modules
hostname swell-vm
ip link set lo up

for module in virtio_blk rbd nbd dm_mod dm_crypt loop fuse xfs btrfs ext4; do
  modprobe "$module" || { echo "modprobe $module failed"; exit 1; }
done
mark "modules loaded"
# Only devices made from here on need udev (rbd map waits for its event),
# so no coldplug: replaying every boot device costs 10-20 s under emulation.
/lib/systemd/systemd-udevd --daemon --resolve-names=never
udevadm settle --timeout=60
mark "udev started"

# The OSDs' block files and the tests' directories live on the scratch disk.
mkfs.xfs -q -f /dev/vda && mount_over /var/tmp -o noatime /dev/vda || { echo "no scratch disk"; exit 1; }
mark "scratch disk mounted"

export CI=${swell_ci:-} SWELL_RBD_TEST_CLUSTER=/var/tmp/swell-vm-ceph
# Emulation is slow: memstore OSDs (no test here kills one), 8 PGs, patient
# waits, and a mgr with only the modules PG stats and the rbd CLI use.
export SWELL_CEPH_OBJECTSTORE=memstore SWELL_CEPH_PGS=8 SWELL_CEPH_POLL_SECS=4 SWELL_CEPH_UP_SECS=400
export SWELL_CEPH_MGR_DISABLED_MODULES="alerts balancer crash devicehealth diskprediction_local influx insights iostat localpool \
mirroring nfs orchestrator osd_perf_query osd_support pg_autoscaler progress prometheus restful selftest snap_schedule stats \
telegraf telemetry test_orchestrator volumes zabbix"
# One cluster for every suite that needs it, started first and alone: the
# monitor's start, measured, takes five times as long beside a test.
if bash "$swell_repo/e2e/ceph/cluster.sh" up "$SWELL_RBD_TEST_CLUSTER" 24200 >"$results/ceph-up.log" 2>&1; then
  ceph=up
  mark "ceph cluster up"
else
  ceph=failed
  mark "ceph cluster failed to start"
  mkdir -p "$results/ceph-logs" && cp "$SWELL_RBD_TEST_CLUSTER"/log/*.log "$results/ceph-logs/" 2>/dev/null
fi

# Each test in a process of its own, under a deadline, so a hung or killed
# test still leaves the others' results and its own output.
per_test=${swell_test_limit:-300}
run_suite() {
  local name=$1 environment=${2//,/ } command=$3 binary tests test
  [[ $environment == - ]] && environment=
  read -r binary tests <<<"$command"
  if [[ -z $tests ]]; then
    tests=$("$binary" --list --format terse 2>/dev/null </dev/null | sed -n 's/: test$//p' | tr '\n' ' ')
  fi
  mkdir -p "$results/$name"
  for test in $tests; do
    mark "$name/$test started"
    # shellcheck disable=SC2086 # a word list by design
    env SWELL_SKIP_LOG="$results/$name/$test.skips" $environment timeout -k 10 "$per_test" \
      "$binary" --exact "$test" --test-threads=1 --nocapture >"$results/$name/$test.out" 2>&1 </dev/null
    echo $? >"$results/$name/$test.rc"
    mark "$name/$test ended ($(cat "$results/$name/$test.rc"))"
  done
}

# The plan: one suite a line, "name<TAB>needs<TAB>environment<TAB>command"
# (environment: comma-separated NAME=VALUE, or - for none).
cd "$swell_repo"
while IFS=$'\t' read -r name needs environment command; do
  # No result: the host reports the suite as not run, with the cluster's log.
  [[ $needs != ceph || $ceph == up ]] || continue
  run_suite "$name" "$environment" "$command"
done <"$results/plan"
# The cluster goes with the machine.
mark "done"
