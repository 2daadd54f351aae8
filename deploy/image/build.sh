#!/usr/bin/env bash
# Builds Swell's container image without Docker or any container registry,
# and checks it; CI runs it. As root on Debian 12, with Debian's mirror only:
#
#   1. release binaries: swell-controller (with RBD), swell-node, the
#      operator's CLI swell and swell-webhook, staged in target/image/bin/
#      (deploy/image/Dockerfile copies the same files);
#   2. a Debian 12 root filesystem (mmdebstrap, minbase, no docs) holding
#      deploy/image/packages, with the binaries in /usr/local/bin; the .debs
#      are cached in target/image/apt-cache for the next build;
#   3. checks: no binary holds a test failpoint (.ci/no-failpoints), and,
#      through chroot, every binary starts (--version, --help) and every
#      program `swell-node --help` lists is on PATH with its libraries;
#   4. an OCI image layout, target/image/swell, tag 0.1.0 (the workspace
#      version), made with umoci; its sizes are printed.
#
#   deploy/image/build.sh                  # all of it
#   deploy/image/build.sh --binaries-only  # step 1, for `docker build`
#
# SWELL_IMAGE_PROFILE=dev builds the binaries in cargo's dev profile: the same
# code and features, unoptimised. CI uses it, sharing the compile with the
# test build (a release build costs it about 8 minutes more); a release image
# uses the default, release.
#
# Into a cluster's container runtime, e.g.:
#   skopeo copy oci:target/image/swell:0.1.0 docker-archive:swell.tar:swell:0.1.0
#   k3s ctr images import swell.tar     # or: kind load image-archive swell.tar
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() {
  echo "image: $*" >&2
  exit 1
}
step() {
  echo "image: $* ($((SECONDS - started)) s)"
}
started=$SECONDS

binaries_only=0
case "${1-}" in
  "") ;;
  --binaries-only) binaries_only=1 ;;
  *) fail "unknown argument ${1}; usage: $0 [--binaries-only]" ;;
esac

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
[[ -n $version ]] || fail "no workspace version in Cargo.toml"
out=target/image
packages=$(sed 's/#.*//' deploy/image/packages | xargs)
[[ -n $packages ]] || fail "deploy/image/packages lists nothing"

# 1. The binaries.
binaries=(swell-controller swell-node swell swell-webhook)
profile=${SWELL_IMAGE_PROFILE:-release}
case $profile in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) fail "SWELL_IMAGE_PROFILE must be release or dev, not $profile" ;;
esac
cargo build --profile "$profile" --locked "${binaries[@]/#/--bin=}"
rm -rf "${out:?}/bin"
mkdir -p "$out/bin"
for binary in "${binaries[@]}"; do
  cp "${CARGO_TARGET_DIR:-target}/$profile_dir/$binary" "$out/bin/"
done
step "binaries staged in $out/bin: ${binaries[*]}"
# A test hook never ships: cargo unifies features over a build, so one crate
# asking for `failpoints` would put them in every binary.
.ci/no-failpoints "$out/bin" || fail "a binary holds a test failpoint"
((binaries_only)) && exit 0

[[ $(id -u) == 0 ]] || fail "run as root: mmdebstrap builds the root filesystem in a chroot"
missing=()
for tool in mmdebstrap umoci skopeo; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "image: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The host's Debian sources (deb822 or one-line), so no mirror is named here.
sources=()
for file in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
  [[ -s $file ]] && sources+=("$file")
done
((${#sources[@]})) || fail "no Debian sources in /etc/apt (sources.list.d/debian.sources or sources.list)"

# 2. An empty image, unpacked, so umoci can later diff what mmdebstrap adds.
layout="$out/swell"
bundle="$out/bundle"
cache="$PWD/$out/apt-cache"
rm -rf "$layout" "$bundle"
mkdir -p "$cache"
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci unpack --image "$layout:$version" "$bundle" >/dev/null
rootfs="$bundle/rootfs"
timeout 30m mmdebstrap --mode=root --variant=minbase --quiet \
  --include="${packages// /,}" \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt=force-unsafe-io --aptopt='Acquire::Languages "none"' \
  --skip=essential/unlink \
  --setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"" \
  --setup-hook="sync-in $cache /var/cache/apt/archives" \
  --customize-hook="sync-out /var/cache/apt/archives $cache" \
  bookworm "$rootfs" "${sources[@]}"
install -m 0755 -t "$rootfs/usr/local/bin" "${binaries[@]/#/$out/bin/}"
step "root filesystem built ($(find "$cache" -name '*.deb' | wc -l) packages cached in $out/apt-cache)"

# 3. Checks, inside the root filesystem with the image's PATH.
image_path=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
inside() {
  timeout 60 env -i PATH="$image_path" chroot "$rootfs" "$@"
}
for binary in "${binaries[@]}"; do
  reported=$(inside "$binary" --version) || fail "$binary --version does not run in the image"
  [[ $reported == "$binary $version" ]] || fail "$binary --version says '$reported', not '$binary $version'"
  inside "$binary" --help >/dev/null || fail "$binary --help does not run in the image"
  if inside ldd "/usr/local/bin/$binary" | grep 'not found'; then
    fail "$binary misses libraries in the image"
  fi
done
# Read whole before grep -q: an early exit would kill ldd with SIGPIPE under pipefail.
controller_libraries=$(inside ldd /usr/local/bin/swell-controller) || fail "ldd of swell-controller failed in the image"
grep -q librbd <<<"$controller_libraries" || fail "the image's swell-controller is built without RBD"
programs=$(inside swell-node --help | sed -n 's/^Runs these programs, found on PATH: //p')
[[ -n $programs ]] || fail "swell-node --help lists no programs"
for program in $programs; do
  # shellcheck disable=SC2016 # $1 expands inside the image's shell
  path=$(inside /bin/sh -c 'command -v "$1"' sh "$program") || fail "$program is not on the image's PATH"
  if inside ldd "$path" 2>/dev/null | grep 'not found'; then
    fail "$program ($path) misses libraries in the image"
  fi
done
step "checked: ${binaries[*]} start; $(wc -w <<<"$programs") programs present: $programs"

# 4. The OCI image: one layer with the whole root filesystem.
rootfs_size=$(du -sh --apparent-size "$rootfs" | cut -f1)
umoci repack --image "$layout:$version" "$bundle"
umoci config --image "$layout:$version" --os linux --architecture amd64 \
  --config.env "PATH=$image_path" --config.workingdir / \
  --config.label "org.opencontainers.image.title=swell" \
  --config.label "org.opencontainers.image.version=$version"
umoci gc --layout "$layout"
skopeo inspect --raw "oci:$layout:$version" >/dev/null || fail "skopeo cannot read the OCI layout"
rm -rf "$bundle"
echo "image: swell:$version built in $((SECONDS - started)) s: $layout (tag $version)," \
  "root filesystem $rootfs_size," \
  "compressed $(du -sh --apparent-size "$layout/blobs" | cut -f1)"
