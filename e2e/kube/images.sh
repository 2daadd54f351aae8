#!/usr/bin/env bash
# Builds the kube lane's images without a registry and imports them into the
# cluster's containerd (namespace k8s.io, where the kubelet looks):
#   - one per sidecar, named as deploy/base pins it (registry.k8s.io/sig-storage/NAME:TAG),
#     holding only the static binary of that version from KUBE_BIN;
#   - swell.test/pause:1, the sandbox image (pause.c, built static);
#   - swell.test/busybox:1 and busybox:latest (Debian's busybox-static), the workload.
# Swell's own image is imported by the lane from deploy/image/build.sh's output.
#
#   images.sh DIR KUBE_BIN
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=$1
BIN=$2
sock=$DIR/containerd/containerd.sock
work=$DIR/images
rm -rf "$work"
mkdir -p "$work"

# archive NAME ENTRYPOINT TAG...: a docker-archive of $work/NAME/rootfs (one layer).
archive() {
  local name=$1 entry=$2
  local out=$work/$name
  shift 2
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$out/rootfs" -cf "$out/layer.tar" .
  local diff tags
  diff=$(sha256sum "$out/layer.tar" | cut -d' ' -f1)
  tags=$(printf '"%s",' "$@")
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":["%s"],"Env":["PATH=/bin:/"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$entry" "$diff" >"$out/config.json"
  printf '[{"Config":"config.json","RepoTags":[%s],"Layers":["layer.tar"]}]' "${tags%,}" >"$out/manifest.json"
  tar -C "$out" -cf "$out.tar" manifest.json config.json layer.tar
  timeout 120 ctr -a "$sock" -n k8s.io images import "$out.tar" >/dev/null
  rm -rf "$out"
  echo "images: imported $* ($(du -h "$out.tar" | cut -f1))"
  rm -f "$out.tar"
}

# The sidecars, at the tags deploy/base pins.
images=$(sed -n 's/^ *image: *\(registry\.k8s\.io\/sig-storage\/[^ ]*\).*/\1/p' deploy/base/*.yaml | sort -u)
[[ -n $images ]] || { echo "images: no sidecar images in deploy/base" >&2; exit 1; }
for image in $images; do
  name=${image##*/}
  name=${name%%:*}
  tag=${image##*:}
  [[ -x $BIN/$name ]] || { echo "images: no binary $BIN/$name for $image" >&2; exit 1; }
  # Those that print their version must be the pinned one.
  if version=$("$BIN/$name" --version 2>/dev/null); then
    [[ $version == *" $tag" ]] || { echo "images: $BIN/$name is '$version', deploy/ pins $tag" >&2; exit 1; }
  fi
  mkdir -p "$work/$name/rootfs/tmp"
  chmod 1777 "$work/$name/rootfs/tmp"
  cp "$BIN/$name" "$work/$name/rootfs/"
  archive "$name" "/$name" "$image"
done

mkdir -p "$work/pause/rootfs"
gcc -static -Os -o "$work/pause/rootfs/pause" e2e/kube/pause.c
archive pause /pause swell.test/pause:1

busybox=$(command -v busybox) || { echo "images: busybox-static is missing" >&2; exit 1; }
mkdir -p "$work/busybox/rootfs/bin" "$work/busybox/rootfs/tmp" "$work/busybox/rootfs/etc"
chmod 1777 "$work/busybox/rootfs/tmp"
cp "$busybox" "$work/busybox/rootfs/bin/busybox"
for applet in $("$busybox" --list); do
  [[ $applet == busybox ]] || ln -s busybox "$work/busybox/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/busybox/rootfs/etc/passwd"
archive busybox /bin/sh swell.test/busybox:1 docker.io/library/busybox:latest
rmdir "$work"
