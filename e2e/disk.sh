# shellcheck shell=bash
# Sourced by .ci/run and e2e/test.sh: the free disk space at each step of a
# run, so a run that fills the disk says where, and, under CI (a clean
# clone on a machine whose disk may be small), the removal of what the
# steps before used and the steps after do not, so the run's peak stays
# low. Everything removed is built again by the next `cargo test` or lane.

# disk_report STEP: one line with the free space and the size of target/.
disk_report() {
  local avail used
  # Never fails the run: target/ may not exist yet, or lose files while du reads it.
  avail=$({ df -BM --output=avail . 2>/dev/null || true; } | tail -1 | tr -dc '0-9')
  used=$({ du -sm target 2>/dev/null || true; } | cut -f1)
  echo "disk: ${avail:-?} MiB free, ${used:-0} MiB in target/ ($1)"
}

# disk_free_test_executables [KEEP]: removes the test executables (in
# deps/, named without an extension; the binaries under target/debug/ are
# other links to their files and stay) but those named KEEP-<hash>, and the
# incremental caches.
disk_free_test_executables() {
  local keep=${1:-}
  find target/debug/deps -maxdepth 1 -type f -perm -u+x ! -name '*.*' ${keep:+! -name "$keep-*"} -delete 2>/dev/null || true
  rm -rf --one-file-system target/debug/incremental
}

# disk_free_lanes: the VM and kube lanes' files (the kube cluster's image
# store is 1.7 GB), once their results were read.
disk_free_lanes() {
  rm -rf --one-file-system target/vm target/kube/cluster target/bench-short
}
