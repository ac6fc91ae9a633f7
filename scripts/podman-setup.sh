#!/usr/bin/env bash
# Prepare this machine to build and run the inferpack image with podman, for the tests marked `container`
# (tests/deploy/test_container.py, tests/fleet/test_fleet_containers.py) and `inferpack up --runtime podman`.
# Idempotent: a second run only checks (seconds). Needs root (apt-get, debootstrap) the first time.
#
#   1. podman, buildah, debootstrap and runc from Debian (crun fails on hosts with hybrid cgroups; runc works);
#   2. a containers.conf with file-descriptor/process ulimits (without them every run fails in setrlimit on
#      such hosts) and runtime runc, at $INFERPACK_CONTAINERS_CONF (default /etc/inferpack/containers.conf):
#      export CONTAINERS_CONF to that path (the tests do it themselves when the file exists);
#   3. the base image localhost/debian-python:bookworm, made with debootstrap from the host's Debian mirror,
#      since no image registry need be reachable. `--base-image` of `inferpack image build` takes it.
#
# Environment: MIRROR (default: the first deb.debian.org-style URI of the host's apt sources),
# INFERPACK_BASE_IMAGE (default localhost/debian-python:bookworm), INFERPACK_CONTAINERS_CONF.
set -euo pipefail

BASE_IMAGE=${INFERPACK_BASE_IMAGE:-localhost/debian-python:bookworm}
CONF=${INFERPACK_CONTAINERS_CONF:-/etc/inferpack/containers.conf}
SUITE=bookworm

say() { echo "podman-setup: $*" >&2; }

# --- 1. packages -----------------------------------------------------------------------------------
missing=()
for tool in podman buildah debootstrap runc; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends podman buildah debootstrap runc \
    fuse-overlayfs slirp4netns uidmap ca-certificates >/dev/null
fi

# --- 2. containers.conf ----------------------------------------------------------------------------
mkdir -p "$(dirname "$CONF")"
cat >"$CONF.tmp" <<CONFEOF
# Written by scripts/podman-setup.sh; used through CONTAINERS_CONF=$CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONFEOF
mv "$CONF.tmp" "$CONF"
export CONTAINERS_CONF=$CONF

# --- 3. the base image -----------------------------------------------------------------------------
if podman image exists "$BASE_IMAGE"; then
  say "$BASE_IMAGE present"
else
  if [ -z "${MIRROR:-}" ]; then
    MIRROR=$(grep -hoE '(URIs:|deb)[[:space:]]+https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
               /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
             | grep -oE 'https?://[^[:space:]]+' | head -n1 || true)
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
  fi
  root=$(mktemp -d /var/tmp/inferpack-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  say "debootstrap $SUITE from $MIRROR (a minute or two)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip "$SUITE" "$root" "$MIRROR" \
    >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  say "imported $BASE_IMAGE"
fi
say "ready: CONTAINERS_CONF=$CONF, base image $BASE_IMAGE ($(podman --version))"
