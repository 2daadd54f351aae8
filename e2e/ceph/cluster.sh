#!/usr/bin/env bash
# Throwaway single-host Ceph 16.2 cluster for Swell's tests: 1 mon, 1 mgr, 3 bluestore OSDs on
# sparse files, no systemd. Everything (config, keyrings, data, block files, logs, pid files,
# sockets) lives in one directory; every daemon and client gets `-c DIR/ceph.conf`, so parallel
# clusters in different directories with different ports never meet.
#
#   cluster.sh up DIR [PORT]           create (or restart from disk) and wait until all PGs are active+clean
#   cluster.sh down DIR [--purge]      unmount rbd-fuse users, stop the daemons; --purge removes DIR
#   cluster.sh kill-osd DIR N          SIGKILL osd.N
#   cluster.sh start-osd DIR N         start osd.N from its data
#   cluster.sh stop-mon DIR            stop the monitor (SIGTERM)
#   cluster.sh start-mon DIR           start the monitor from its data and wait until it answers
#   cluster.sh freeze-mon DIR          SIGSTOP the monitor (it keeps its sockets but answers nothing)
#   cluster.sh thaw-mon DIR            SIGCONT the monitor and wait until it answers
#   cluster.sh status DIR              ceph -s
#   cluster.sh wait-clean DIR [SECS]          until every PG is active+clean (default 120 s)
#   cluster.sh wait-pgs-inactive DIR [SECS]   until some PG is settled inactive, e.g. undersized+peered (default 120 s)
#
# PORT (default 16789) is the mon's msgr2 port; daemons bind PORT+1..PORT+99, so clusters running
# side by side need ports at least 100 apart. The default sits below Linux's ephemeral range
# (32768-60999) so an outgoing connection can never hold it. The daemons listen on 127.0.0.1, or
# on SWELL_CEPH_ADDR (one of this host's addresses) for clients in other network namespaces,
# such as the kube lane's pods.
set -euo pipefail

readonly NUM_OSDS=3
readonly OSD_SIZE=$((20 * 1024 * 1024 * 1024)) # sparse; only written blocks take space
readonly DEFAULT_PORT=16789
readonly ADDR=${SWELL_CEPH_ADDR:-127.0.0.1}
if [[ $ADDR == 127.0.0.1 ]]; then NETWORK=127.0.0.0/8; else NETWORK=$ADDR/32; fi
readonly NETWORK
# Knobs for slow machines (the VM lane, under emulation): memstore OSDs skip
# bluestore's mkfs (data then lives in memory and dies with the OSD, so no
# OSD may be killed), fewer PGs peer sooner, slower polls leave the CPU to
# the daemons.
readonly OBJECTSTORE=${SWELL_CEPH_OBJECTSTORE:-bluestore}
readonly PGS=${SWELL_CEPH_PGS:-32}
readonly POLL_SECS=${SWELL_CEPH_POLL_SECS:-1}
readonly UP_SECS=${SWELL_CEPH_UP_SECS:-120} # `up`: for the monitor, then for all PGs active+clean
# The mgr imports every module it finds before it reports PG states; under
# emulation that alone takes minutes. A list here keeps those out.
readonly MGR_DISABLED_MODULES=${SWELL_CEPH_MGR_DISABLED_MODULES:-}

die() { echo "cluster.sh: $*" >&2; exit 1; }
usage() { sed -n '6,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[[ $# -ge 2 ]] || usage
readonly CMD=$1
[[ -n $2 ]] || usage
DIR=$(realpath -m -- "$2") # absolute: the paths end up in ceph.conf and in the daemons' argv
readonly DIR
readonly CONF=$DIR/ceph.conf
readonly KEYRING=$DIR/ceph.client.admin.keyring
readonly RUN=$DIR/run
START=$SECONDS

# Every CLI call is bounded: a dead or PG-less cluster must never hang the harness.
cephc() { timeout -k 5 30 ceph -c "$CONF" --connect-timeout 20 "$@"; }
need_conf() { [[ -f $CONF ]] || die "no cluster in $DIR (missing ceph.conf)"; }
elapsed() { echo $((SECONDS - START)); }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
# Ceph's CLI reports success on stderr; show its output only when it fails.
quiet() {
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; return 1; }
}

# --- processes --------------------------------------------------------------------------------

# read_line, alive, wait_gone, terminate, bounded.
# shellcheck source=e2e/processes.sh
source "$(dirname "${BASH_SOURCE[0]}")/../processes.sh"

# True when PID is alive and was started with this cluster's ceph.conf (guards against pid reuse
# and against touching another cluster's daemons).
ours() {
  local pid=$1 arg
  [[ -r /proc/$pid/cmdline ]] || return 1
  while IFS= read -r -d '' arg; do
    [[ $arg == "$CONF" ]] && return 0
  done <"/proc/$pid/cmdline" 2>/dev/null
  return 1
}

# Pid of daemon NAME (mon.a, mgr.x, osd.0) if it is running, else nothing.
daemon_pid() {
  local f=$RUN/$1.pid pid
  [[ -f $f ]] || return 0
  read_line pid "$f" || return 0
  is_uint "$pid" && ours "$pid" && echo "$pid"
  return 0
}

# Starts a daemon; without -f it daemonizes itself and writes $RUN/$name.pid. Its stdio goes to a
# file so it never holds the caller's pipes open (a Rust Command::output() would wait forever).
start_daemon() {
  local type=$1 id=$2 pid
  pid=$(daemon_pid "$type.$id")
  if [[ -n $pid ]]; then
    echo "$type.$id already running (pid $pid)"
    return 0
  fi
  "ceph-$type" -c "$CONF" -i "$id" </dev/null >>"$DIR/log/$type.$id.stdio" 2>&1 ||
    die "ceph-$type -i $id failed to start; see $DIR/log/$type.$id.log and $type.$id.stdio"
}

stop_daemon() {
  local pid
  pid=$(daemon_pid "$1")
  [[ -z $pid ]] || terminate 20 "$pid" || die "$1 (pid $pid) does not stop"
}

# --- waits ------------------------------------------------------------------------------------

# Prints "<total> <clean> <inactive>" from `ceph pg stat`, e.g.
# "33 pgs: 10 active+undersized+degraded, 23 active+clean; 1.2 MiB data, ...".
pg_counts() {
  local out states total clean=0 inactive=0 part n state
  out=$(timeout -k 5 15 ceph -c "$CONF" --connect-timeout 10 pg stat 2>/dev/null) || return 1
  [[ $out =~ ^([0-9]+)\ pgs:\ ([^;]*) ]] || return 1
  total=${BASH_REMATCH[1]}
  states=${BASH_REMATCH[2]}
  IFS=',' read -ra parts <<<"$states"
  for part in "${parts[@]}"; do
    read -r n state <<<"$part"
    [[ -n ${n:-} ]] || continue
    [[ $state == active+clean ]] && clean=$((clean + n))
    # Not active, and not merely on the way (peering, unknown, creating happen after any change).
    case $state in
      *active* | *peering* | *unknown* | *creating*) ;;
      *) inactive=$((inactive + n)) ;;
    esac
  done
  echo "$total $clean $inactive"
}

# Waits up to SECS until `pg_counts` satisfies CHECK (called with total, clean and inactive; it
# prints what it saw and succeeds when done); dies with WHAT and `ceph pg stat` otherwise.
wait_pgs() {
  local secs=$1 what=$2 check=$3 deadline counts total clean inactive
  is_uint "$secs" || die "SECS must be a number: $secs"
  deadline=$((SECONDS + secs))
  while :; do
    if counts=$(pg_counts); then
      read -r total clean inactive <<<"$counts"
      "$check" "$total" "$clean" "$inactive" && return 0
    fi
    ((SECONDS < deadline)) || die "$what after ${secs}s: $(cephc pg stat 2>&1 || true)"
    sleep "$POLL_SECS"
  done
}

all_clean() { (($1 > 0 && $2 == $1)) && echo "all $1 PGs active+clean after $(elapsed) s"; }
some_inactive() { (($3 > 0)) && echo "$3 of $1 PGs inactive after $(elapsed) s"; }
wait_clean() { wait_pgs "${1:-120}" "PGs not all active+clean" all_clean; }
wait_pgs_inactive() { wait_pgs "${1:-120}" "no inactive PGs" some_inactive; }

# Until the monitor answers (after a start or restart).
wait_mon() {
  local secs=${1:-60} deadline
  deadline=$((SECONDS + secs))
  until timeout -k 5 10 ceph -c "$CONF" --connect-timeout 5 mon stat >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "monitor does not answer after ${secs}s; see $DIR/log/mon.a.log"
    sleep 0.5
  done
}

# --- up ---------------------------------------------------------------------------------------

write_conf() {
  local fsid=$1 port=$2 mgr_modules=
  [[ -z $MGR_DISABLED_MODULES ]] || mgr_modules="mgr disabled modules = $MGR_DISABLED_MODULES"
  cat >"$CONF" <<EOF
# Generated by e2e/ceph/cluster.sh: throwaway single-host test cluster, not for production.
[global]
fsid = $fsid
mon host = v2:$ADDR:$port
public network = $NETWORK
public addr = $ADDR
cluster addr = $ADDR
# msgr2 only, and only inside this cluster's private port range.
ms bind msgr1 = false
ms bind port min = $((port + 1))
ms bind port max = $((port + 99))
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
# Nothing outside $DIR.
run dir = $RUN
pid file = $RUN/\$name.pid
admin socket = $RUN/\$name.asok
log file = $DIR/log/\$name.log
mon cluster log file = $DIR/log/cluster.\$channel.log
crash dir = $DIR/crash
# One host: replicas go to different OSDs, and an OSD's peers may report it down.
osd crush chooseleaf type = 0
mon osd reporter subtree level = osd
mon osd min down reporters = 1
osd pool default size = 3
osd pool default min size = 2
osd pool default pg num = $PGS
osd pool default pgp num = $PGS
osd pool default pg autoscale mode = off
mon allow pool delete = true
mon warn on pool no redundancy = false
# The block files share the machine's disk with everything else; don't warn about it, and
# don't refuse to start (the default 5 %) on a shared disk that others have nearly filled.
mon data avail warn = 5
mon data avail crit = 1
$mgr_modules

[mon]
mon data = $DIR/mon/\$id
keyring = $DIR/mon/\$id/keyring

[mgr]
mgr data = $DIR/mgr/\$id
keyring = $DIR/mgr/\$id/keyring

[osd]
osd data = $DIR/osd/\$id
keyring = $DIR/osd/\$id/keyring
osd objectstore = $OBJECTSTORE
# What a memstore OSD reports as its size (its data lives in memory).
memstore device bytes = $OSD_SIZE
# Outside the data dir: a block path inside it makes mkfs fail with ELOOP.
bluestore block path = $DIR/block/\$name
bluestore block create = true
bluestore block size = $OSD_SIZE
# Low memory: fixed small caches instead of autotuning towards 4 GiB per OSD.
osd memory target = 1073741824
bluestore cache autotune = false
bluestore cache size = 67108864

[client]
keyring = $KEYRING
# Every client process would otherwise fight over one client.admin.asok.
admin socket =
EOF
}

up() {
  local port=${1:-$DEFAULT_PORT} fsid i uuid id
  if [[ -f $CONF && -d $DIR/mon/a ]]; then
    echo "restarting the existing cluster in $DIR"
    start_daemon mon a
    start_daemon mgr x
    for ((i = 0; i < NUM_OSDS; i++)); do start_daemon osd "$i"; done
    wait_clean "$UP_SECS"
    return 0
  fi
  is_uint "$port" && ((port >= 1024 && port <= 65435)) || die "PORT must be 1024..65435: $port"
  if [[ -d $DIR ]] && [[ -n $(ls -A "$DIR") ]]; then die "$DIR exists and is not empty"; fi
  mkdir -p "$DIR"/{mon/a,mgr/x,osd,block,log,run,crash}
  fsid=$(uuidgen)
  write_conf "$fsid" "$port"

  # Keys: admin for clients; mgr and OSD keys go into the mon's initial keyring, so the mon
  # knows them from mkfs on and no `ceph auth add` round trips are needed.
  local monkr=$DIR/mon.keyring
  authtool() { ceph-authtool "$@" >/dev/null; }
  authtool --create-keyring "$KEYRING" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
  authtool --create-keyring "$monkr" --gen-key -n mon. --cap mon 'allow *'
  authtool "$monkr" --import-keyring "$KEYRING"
  authtool --create-keyring "$DIR/mgr/x/keyring" --gen-key -n mgr.x \
    --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
  authtool "$monkr" --import-keyring "$DIR/mgr/x/keyring"
  for ((i = 0; i < NUM_OSDS; i++)); do
    mkdir -p "$DIR/osd/$i"
    authtool --create-keyring "$DIR/osd/$i/keyring" --gen-key -n "osd.$i" \
      --cap mon 'allow profile osd' --cap mgr 'allow profile osd' --cap osd 'allow *'
    authtool "$monkr" --import-keyring "$DIR/osd/$i/keyring"
  done

  monmaptool --create --fsid "$fsid" --addv a "[v2:$ADDR:$port]" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$monkr" \
    >>"$DIR/log/mon.a.stdio" 2>&1 || die "ceph-mon --mkfs failed; see $DIR/log/mon.a.stdio"
  start_daemon mon a
  wait_mon "$UP_SECS"
  echo "mon up after $(elapsed) s"
  start_daemon mgr x

  # Register the OSDs, then mkfs them in parallel (each takes a few seconds).
  local pids=()
  for ((i = 0; i < NUM_OSDS; i++)); do
    uuid=$(uuidgen)
    id=$(cephc osd new "$uuid" "$i") || die "ceph osd new failed for osd.$i"
    [[ $id == "$i" ]] || die "ceph osd new gave id $id, expected $i"
    ceph-osd -c "$CONF" -i "$i" --mkfs --osd-uuid "$uuid" </dev/null >>"$DIR/log/osd.$i.stdio" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || die "ceph-osd --mkfs failed for osd.$i; see $DIR/log/osd.$i.log"
  done
  echo "osds created after $(elapsed) s"

  # The pool can exist before its OSDs; its PGs get created as they boot.
  quiet cephc osd pool create rbd "$PGS" "$PGS" replicated
  quiet cephc osd pool set rbd size 3
  quiet cephc osd pool set rbd min_size 2
  # Each ceph-osd returns only once it is initialised (~3 s); start them side by side.
  pids=()
  for ((i = 0; i < NUM_OSDS; i++)); do start_daemon osd "$i" & pids+=($!); done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || die "osd.$i failed to start"; done
  echo "osds started after $(elapsed) s"
  timeout -k 5 60 rbd -c "$CONF" pool init rbd || die "rbd pool init timed out or failed"

  cat >"$DIR/env" <<EOF
export CEPH_CONF=$CONF
export CEPH_KEYRING=$KEYRING
export CEPH_MON_HOST=v2:$ADDR:$port
EOF
  wait_clean "$UP_SECS"
}

# --- down -------------------------------------------------------------------------------------

# Loop devices whose backing file lies under MNT. Read from sysfs, which never touches the file:
# `losetup -a`/`-j` stat it and hang for good on a FUSE whose cluster has no active PGs.
loops_under() {
  local f back
  for f in /sys/block/loop*/loop/backing_file; do
    read_line back "$f" || continue
    if [[ $back == "$1"/* ]]; then
      f=${f#/sys/block/}
      echo "/dev/${f%%/*}"
    fi
  done
}

# Mountpoints whose source is one of the given devices (from /proc/mounts, which never blocks).
mounts_of() {
  local src target rest dev
  while read -r src target rest; do
    for dev in "$@"; do
      if [[ $src == "$dev" ]]; then echo "${target//\\040/ }"; fi
    done
  done </proc/mounts
}

# SIGKILLs the rbd-fuse serving MNT: pending and future I/O on the mount then fails at once
# (the filesystem on top shuts down) instead of waiting for PGs that may never come back.
kill_fuse_server() {
  local pid arg
  for pid in $(pgrep -x rbd-fuse || true); do
    while IFS= read -r -d '' arg; do
      if [[ $arg == "$1" ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
    done <"/proc/$pid/cmdline" 2>/dev/null || true
  done
}

# Unmounts an rbd-fuse mount: first the filesystems on loop devices backed by files inside it,
# then the loop devices, then the FUSE mount. Done while the cluster still runs, so filesystems
# flush cleanly. If that cannot work (PGs inactive: umount hangs in D state; a writer stuck on
# such a mount: EBUSY), the rbd-fuse is killed, which fails the pending I/O, and we retry.
unmount_fuse() {
  local mnt=$1 target loops=() targets=() pids=()
  mapfile -t loops < <(loops_under "$mnt")
  if ((${#loops[@]})); then
    mapfile -t targets < <(mounts_of "${loops[@]}")
    for target in "${targets[@]}"; do
      umount "$target" </dev/null >/dev/null 2>&1 &
      pids+=($!)
    done
    ((${#pids[@]} == 0)) || wait_gone 20 "${pids[@]}" || true
    mapfile -t targets < <(mounts_of "${loops[@]}")
    if ((${#targets[@]})); then
      echo "cannot unmount ${targets[*]} (busy, or PGs inactive); killing the rbd-fuse of $mnt" >&2
      kill_fuse_server "$mnt"
      wait_gone 10 "${pids[@]}" || true
      sleep 1 # writers on the mount get EIO now and let go of it
      mapfile -t targets < <(mounts_of "${loops[@]}")
      for target in "${targets[@]}"; do
        bounded 10 umount "$target" || bounded 10 umount -l "$target" ||
          echo "warning: could not unmount $target" >&2
      done
    fi
    for target in "${loops[@]}"; do bounded 10 losetup -d "$target" || true; done
  fi
  if ! bounded 10 fusermount -u "$mnt"; then
    kill_fuse_server "$mnt"
    bounded 10 fusermount -u "$mnt" || bounded 10 fusermount -uz "$mnt" ||
      echo "warning: could not unmount $mnt" >&2
  fi
  echo "unmounted $mnt"
}

# rbd-fuse mounts inside DIR, plus mounts served by an rbd-fuse of this cluster elsewhere.
fuse_mounts() {
  local src target fstype rest pid arg
  local -A ours_args=()
  for pid in $(pgrep -x rbd-fuse || true); do
    ours "$pid" || continue
    while IFS= read -r -d '' arg; do ours_args[$arg]=1; done <"/proc/$pid/cmdline" 2>/dev/null || true
  done
  while read -r src target fstype rest; do
    [[ $fstype == fuse* ]] || continue
    target=${target//\\040/ } # /proc/mounts escapes spaces as \040
    if [[ $target == "$DIR"/* || -n ${ours_args[$target]:-} ]]; then echo "$target"; fi
  done </proc/mounts
}

down() {
  local purge=0 failed=0 mnt pid pids=() f
  [[ ${1:-} == --purge ]] && purge=1
  [[ -z ${1:-} || $purge == 1 ]] || die "unknown option: $1"
  if [[ ! -d $DIR ]]; then echo "nothing at $DIR"; return 0; fi

  while IFS= read -r mnt; do [[ -n $mnt ]] && unmount_fuse "$mnt"; done < <(fuse_mounts)

  # Daemons by pid file; monitor last so the others can still say goodbye.
  for f in "$RUN"/osd.*.pid "$RUN"/mgr.*.pid; do
    [[ -f $f ]] || continue
    pid=$(daemon_pid "$(basename "$f" .pid)")
    [[ -n $pid ]] && pids+=("$pid")
  done
  terminate 20 ${pids[@]+"${pids[@]}"} || failed=1
  pid=$(daemon_pid mon.a)
  [[ -z $pid ]] || terminate 20 "$pid" || failed=1

  # Left-over clients of this cluster (rbd-fuse, a hung rbd): anything with our ceph.conf in argv.
  pids=()
  for pid in $(ls /proc | grep -E '^[0-9]+$'); do
    [[ $pid != "$$" ]] && ours "$pid" && pids+=("$pid")
  done
  if ((${#pids[@]})); then
    echo "stopping left-over clients: ${pids[*]}"
    terminate 10 "${pids[@]}" || failed=1
  fi
  echo "stopped after $(elapsed) s"

  if ((purge)); then
    [[ -f $CONF || -z $(ls -A "$DIR") ]] || die "refusing to purge $DIR: no ceph.conf in it"
    # rm -rf would walk into a mount that is still there (and hang on a dead FUSE).
    if grep -qF " $DIR/" /proc/mounts; then die "refusing to purge $DIR: still mounted under it"; fi
    rm -rf -- "$DIR"
    echo "purged $DIR"
  fi
  ((failed == 0)) || die "some processes of $DIR did not stop"
}

# --- dispatch ---------------------------------------------------------------------------------

osd_id() { is_uint "${1:-}" && (($1 < NUM_OSDS)) || die "OSD id must be 0..$((NUM_OSDS - 1)): ${1:-}"; }

case $CMD in
  up) up "${3:-}" ;;
  down) down "${3:-}" ;;
  kill-osd)
    need_conf; osd_id "${3:-}"
    pid=$(daemon_pid "osd.$3")
    [[ -n $pid ]] || die "osd.$3 is not running"
    kill -KILL "$pid"
    wait_gone 10 "$pid" || die "osd.$3 (pid $pid) survived SIGKILL"
    echo "killed osd.$3 (pid $pid)"
    ;;
  start-osd) need_conf; osd_id "${3:-}"; start_daemon osd "$3"; echo "started osd.$3" ;;
  stop-mon) need_conf; stop_daemon mon.a; echo "stopped mon.a" ;;
  start-mon)
    need_conf; start_daemon mon a; wait_mon 60
    echo "mon.a answers after $(elapsed) s"
    ;;
  freeze-mon | thaw-mon)
    need_conf
    pid=$(daemon_pid mon.a)
    [[ -n $pid ]] || die "mon.a is not running"
    if [[ $CMD == freeze-mon ]]; then
      kill -STOP "$pid"; echo "froze mon.a (pid $pid)"
    else
      kill -CONT "$pid"; wait_mon 60; echo "mon.a answers again after $(elapsed) s"
    fi
    ;;
  status) need_conf; cephc -s ;;
  wait-clean) need_conf; wait_clean "${3:-120}" ;;
  wait-pgs-inactive) need_conf; wait_pgs_inactive "${3:-120}" ;;
  *) usage ;;
esac
