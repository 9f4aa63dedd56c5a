#!/usr/bin/env bash
# Build the local systemd base image that every Molecule scenario starts from.
# No registry is reachable, so the image is made with debootstrap and `docker import`.
# It is rebuilt only when this recipe changes: the tag is a hash of this file.
# --print-tag: print only the image tag on stdout (progress goes to stderr).
set -euo pipefail
if [ "${1:-}" = --print-tag ]; then
  exec 3>&1 1>&2
else
  exec 3>/dev/null
fi

IMAGE=${SAGEWS_BASE_IMAGE_NAME:-sagews-base}
SUITE=bookworm
MIRROR=${SAGEWS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3-apt: Ansible's apt module; the rest: what systemd and the tests need in every host.
PACKAGES=python3,python3-apt,systemd,systemd-sysv,dbus,sudo,iproute2,ca-certificates,procps,netcat-openbsd,curl,locales

recipe_hash=$(sha256sum "$0" | cut -c1-12)
tag="$IMAGE:$recipe_hash"

if docker image inspect "$tag" >/dev/null 2>&1; then
  docker tag "$tag" "$IMAGE:latest"
  echo "base image $tag is up to date"
  echo "$tag" >&3
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/sagews-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "building base image $tag (debootstrap $SUITE, about 70 s)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >/dev/null
# Containers have no consoles or hardware to wait for.
chroot "$rootfs" systemctl mask getty.target systemd-udevd.service systemd-udev-trigger.service \
  systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount >/dev/null 2>&1 || true
echo "en_US.UTF-8 UTF-8" > "$rootfs/etc/locale.gen"
chroot "$rootfs" locale-gen >/dev/null
: > "$rootfs/etc/machine-id"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
# An old lists directory makes the apt module (cache_valid_time) refresh on first use.
touch -d @0 "$rootfs/var/lib/apt/lists"
# Stop signal SIGRTMIN+3 is set per container by the Molecule harness (docker import cannot set it).
tar -C "$rootfs" -c . | docker import \
  --change 'CMD ["/lib/systemd/systemd"]' \
  --change 'ENV container=docker' - "$tag" >/dev/null
docker tag "$tag" "$IMAGE:latest"
echo "built $tag"
echo "$tag" >&3
