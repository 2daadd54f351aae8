#!/usr/bin/env bash
# The VM lane: what this host's kernel cannot run (krbd, rbd-nbd, ext4 grown
# online, later dm-crypt) runs under Debian's own kernel in a qemu VM
# (software emulation), on the host's root filesystem shared read-only, so
# the guest has every tool and the test binaries built here, at the same
# paths. See e2e/vm/README.md.
#
#   e2e/vm/run.sh [--plan FILE]
#
# Builds the test binaries, boots the VM with the plan (one suite a line:
# name, environment, command; default: e2e/vm/plan), and judges what came
# back: every suite of the plan must have answered, every test in it passed;
# a missing result is a failure. Writes one line per test (name, result) to
# target/vm/results.tsv for e2e/test.sh's closing line. The VM is always
# powered off and its files removed.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
plan_file=e2e/vm/plan
[[ ${1:-} == --plan ]] && plan_file=$2
out=target/vm
# The lane's whole budget (installs, build, VM, judging); the VM gets what
# is left when it boots and is killed past it, failing what did not finish.
budget=${SWELL_VM_BUDGET_SECS:-900}

rm -rf "$out" && mkdir -p "$out"
started=$SECONDS

# A lane that cannot start is a skip on a developer's machine and a failure
# under CI, where the install step is ours.
cannot_start() {
  echo "vm: the lane cannot start: $1" >&2
  if [[ ${CI:-} == true ]]; then
    printf 'vm\tFAILED\tthe lane could not start: %s\n' "$1" >"$out/results.tsv"
    exit 1
  fi
  printf 'vm lane\t%s\n' "$1" >>"${SWELL_SKIP_LOG:-/tmp/swell-skips.log}"
  exit 0
}
[[ $(id -u) == 0 ]] || cannot_start "needs root (packages, qemu's 9p passthrough)"
[[ ${SWELL_VM:-1} != 0 ]] || cannot_start "SWELL_VM=0"
tree=$(e2e/vm/install.sh | tail -1) || cannot_start "installing qemu, the kernel or the guest's tools failed"
kver=$(ls "$tree/lib/modules")
echo "vm: kernel $kver, packages ready after $((SECONDS - started)) s"
# The guest runs what is built here: the test binaries and the programs they start.
cargo build -q --workspace --bins

work=$(mktemp -d /var/tmp/swell-vm.XXXXXX)
qemu_pid=
# qemu runs under `timeout`, which makes itself a process group leader:
# killing that group takes qemu too (killing timeout alone orphaned qemu,
# still running, when the lane was stopped by TERM or INT). timeout's own
# pid too: stopped in the moment before timeout made its group, there is
# no group yet, and no qemu either.
cleanup() {
  if [[ -n $qemu_pid ]]; then
    kill -KILL -- "-$qemu_pid" 2>/dev/null || true
    kill -KILL "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    echo "vm: stopped; qemu killed" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$work/results"
e2e/vm/initramfs.sh "$tree" "$work/initramfs.gz"
# Sparse: the OSDs and the tests' volumes write a few hundred MB of it.
truncate -s 40G "$work/disk.raw"
# The plan with each test binary's path (built on the host, run in the guest).
e2e/vm/plan.sh "$plan_file" >"$work/results/plan"
limit=$((budget - (SECONDS - started) - 20))
((limit > 120)) || cannot_start "only ${limit} s of the ${budget} s budget left to boot"
echo "vm: booting ($(wc -l <"$work/results/plan") suites; at most ${limit} s)"
boot=$SECONDS
timeout -k 10 "$limit" qemu-system-x86_64 \
  -accel tcg,thread=multi -cpu max -smp 2 -m 4G \
  -nographic -no-reboot -nic none \
  -kernel "$tree/boot/vmlinuz-$kver" -initrd "$work/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 swell_guest=$repo/e2e/vm/guest.sh swell_repo=$repo swell_modules=$tree/lib/modules swell_ci=${CI:-}" \
  -virtfs "local,path=/,mount_tag=root,readonly=on,security_model=passthrough,multidevs=remap" \
  -virtfs "local,path=$work/results,mount_tag=results,security_model=passthrough" \
  -drive "file=$work/disk.raw,if=virtio,format=raw,cache=unsafe,discard=unmap" \
  >"$out/console.log" 2>&1 </dev/null &
qemu_pid=$!
vm_status=0
wait "$qemu_pid" || vm_status=$?
qemu_pid=
echo "vm: powered off after $((SECONDS - boot)) s (qemu exit $vm_status)"
cp -r "$work/results/." "$out/"
e2e/vm/judge.sh "$out" "$vm_status"
