#!/usr/bin/env bash
# Build the offline base image (Debian bookworm minbase + Python 3.11 with venv) from the Debian
# mirror this machine's apt already uses, for machines that reach no image registry:
#   bash scripts/docker/base.sh            # -> image rlyard-base:bookworm
# The Dockerfile's default base (BASE_IMAGE) is the public python image; scripts/docker/build.sh
# passes this one instead. Needs root, debootstrap and a running dockerd.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${RLYARD_BASE_IMAGE:-rlyard-base:bookworm}
CACHE=${RLYARD_DOCKER_CACHE:-.docker-cache}
if [[ -z "${RLYARD_REBUILD_BASE:-}" ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists (RLYARD_REBUILD_BASE=1 rebuilds it)"; exit 0
fi
# the mirror apt uses (deb822 sources first, then a classic sources.list)
MIRROR=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}' || true)
if [[ -z "$MIRROR" ]]; then
  MIRROR=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}' || true)
fi
MIRROR=${RLYARD_DEBIAN_MIRROR:-${MIRROR:-http://deb.debian.org/debian}}
ROOTFS=$CACHE/rootfs
rm -rf "$ROOTFS" && mkdir -p "$ROOTFS"
echo "debootstrap bookworm from $MIRROR"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR"
# apt lists and caches are of no use in an image
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
tar -C "$ROOTFS" -c . | docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  -c 'CMD ["python3"]' - "$TAG"
rm -rf "$ROOTFS"
docker run --rm "$TAG" python3 -c 'import sys, venv, ensurepip; print("python", sys.version.split()[0])'
