# shellcheck shell=bash
# Sourced by e2e/ceph/cluster.sh and e2e/kube/cluster.sh: processes stopped
# by pid with deadlines, and calls that may block in the kernel bounded.

# Reads the first line of FILE into variable VAR; false if the file is gone. (Never `x=$(<file)`:
# under set -e a missing file kills the script even behind `||`.)
read_line() {
  local -n _line=$1
  _line=
  { read -r _line <"$2" || [[ -n $_line ]]; } 2>/dev/null
}

# True while PID exists and is not a zombie (our own background jobs stay zombies until reaped).
alive() {
  local stat
  read_line stat "/proc/$1/stat" || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# Waits up to SECS for all PIDS to exit; returns 1 if some are still alive.
wait_gone() {
  local secs=$1 deadline pid any
  shift
  deadline=$((SECONDS + secs))
  while :; do
    any=0
    for pid in "$@"; do alive "$pid" && any=1; done
    ((any)) || return 0
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# SIGTERM, then SIGKILL for whatever is still there after SECS. Returns 1 if something survives
# (a process in D state, e.g. blocked on I/O to PGs that are not active).
terminate() {
  local secs=$1
  shift
  (($#)) || return 0
  kill -TERM "$@" 2>/dev/null || true
  if ! wait_gone "$secs" "$@"; then
    echo "still running after ${secs}s, sending SIGKILL: $*" >&2
    kill -KILL "$@" 2>/dev/null || true
    wait_gone 10 "$@" || { echo "processes survived SIGKILL: $*" >&2; return 1; }
  fi
}

# Runs a command that may block in the kernel (umount, losetup, fusermount on a stuck FUSE) in the
# background and waits at most SECS: `timeout` cannot help there, as no signal reaches D state.
# Returns the command's status, or 124 if it is still running.
bounded() {
  local secs=$1 pid
  shift
  "$@" </dev/null >/dev/null 2>&1 &
  pid=$!
  wait_gone "$secs" "$pid" || return 124
  wait "$pid"
}
