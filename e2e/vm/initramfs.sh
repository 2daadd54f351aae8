#!/usr/bin/env bash
# Builds the lane's initramfs from the unpacked kernel TREE into OUT (a
# gzipped cpio): busybox-static, e2e/vm/init, and the modules that mount a
# 9p root under an overlay, in the order insmod needs them. Under a second.
set -euo pipefail
[[ $# == 2 ]] || { echo "usage: initramfs.sh TREE OUT" >&2; exit 2; }
tree=$1 out=$2
kver=$(ls "$tree/lib/modules")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,dev,proc,sys,lib/modules}
cp /bin/busybox "$work/bin/busybox"
install -m 0755 "$(dirname "$0")/init" "$work/init"
declare -A seen=()
for module in virtio_pci 9pnet_virtio 9p overlay; do
  while read -r verb path _; do
    [[ $verb == insmod && -z ${seen[$path]:-} ]] || continue
    seen[$path]=1
    cp "$path" "$work/lib/modules/"
    basename "$path" >>"$work/modules"
  done < <(modprobe -d "$tree" -S "$kver" --show-depends "$module")
done
(cd "$work" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null) | gzip -1 >"$out"
