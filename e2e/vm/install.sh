#!/usr/bin/env bash
# Installs what the VM lane needs on the host, whose root filesystem the
# guest runs on: qemu from bookworm-backports (bookworm's own qemu-system
# would replace the preinstalled backports qemu-utils), the guest's tools
# (busybox-static for the initramfs, kmod, udev, rbd-nbd, cryptsetup), and
# Debian's kernel, unpacked under a cache directory instead of installed:
# an installed linux-image spends minutes writing an initrd the lane does
# not use, and the host never boots it. Prints the kernel tree's path.
# Idempotent.
set -euo pipefail
source "$(dirname "$0")/../apt.sh"

CACHE=${SWELL_VM_CACHE:-/var/cache/swell-vm}

# bookworm-backports from the same mirror as the machine's bookworm entry.
backports_source() {
  local list=/etc/apt/sources.list.d/swell-bookworm-backports.sources uris
  [[ -f $list ]] && return 0
  uris=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [[ -z $uris && -f /etc/apt/sources.list ]]; then
    uris=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list)
  fi
  [[ -n $uris ]] || { echo "vm: no bookworm entry in apt's sources to take the mirror from" >&2; return 1; }
  printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$uris" >"$list"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
}

if ! command -v qemu-system-x86_64 >/dev/null; then
  backports_source
  echo "installing qemu-system-x86 from bookworm-backports"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
fi
install_missing busybox-static kmod udev rbd-nbd cryptsetup e2fsprogs xfsprogs btrfs-progs
require_programs qemu-system-x86_64 busybox depmod modprobe rbd-nbd cryptsetup
[[ -x /lib/systemd/systemd-udevd ]] || { echo "vm: missing /lib/systemd/systemd-udevd after install" >&2; exit 1; }

# The kernel linux-image-amd64 points at, unpacked once per version.
package=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [[ -z $package ]]; then
  install_missing linux-image-amd64 >/dev/null 2>&1 || true # only to refresh the lists
  package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
fi
[[ -n $package ]] || { echo "vm: apt knows no linux-image-amd64" >&2; exit 1; }
version=$(apt-cache policy "$package" | awk '/Candidate:/ {print $2}')
tree=$CACHE/$package-$version
if [[ ! -f $tree/ready ]]; then
  echo "unpacking $package $version into $tree"
  rm -rf "$tree" && mkdir -p "$tree/deb"
  (cd "$tree/deb" && apt-get download -qq -o APT::Sandbox::User=root "$package=$version")
  dpkg-deb -x "$tree"/deb/*.deb "$tree/root"
  rm -rf "$tree/deb"
  kver=$(ls "$tree/root/lib/modules")
  depmod -b "$tree/root" "$kver"
  touch "$tree/ready"
fi
echo "$tree/root"
