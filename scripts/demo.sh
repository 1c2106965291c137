#!/bin/sh
# The main job, end to end, without root: lock bookworm, build an OCI image in
# a user namespace, verify it, and run it with rootless podman.
set -eu
out=${OCISTRAP_DEMO_DIR:-$HOME/ocistrap-demo}
mkdir -p "$out"
cd "$out"
echo "== ocistrap doctor"
ocistrap doctor || true
echo "== ocistrap lock bookworm"
ocistrap lock bookworm -o bookworm.lock
echo "== ocistrap fetch"
ocistrap fetch bookworm.lock
echo "== ocistrap build"
ocistrap build --lock bookworm.lock -o oci:"$out/images:bookworm" \
    -o docker-archive:"$out/debian-bookworm.tar:ocistrap/debian:bookworm"
echo "== ocistrap verify"
ocistrap verify oci:"$out/images:bookworm"
if command -v podman >/dev/null 2>&1; then
    conf="$HOME/.config/containers/containers.conf"
    [ -e "$conf" ] || echo "note: if podman fails here, see README (rootless podman set-up)"
    echo "== podman load + run"
    podman load -q -i "$out/debian-bookworm.tar"
    # Hosts without systemd or with crun on hybrid cgroups need runc + cgroupfs.
    podman run --rm localhost/ocistrap/debian:bookworm cat /etc/debian_version ||
        podman --runtime runc --cgroup-manager cgroupfs --events-backend file \
            run --rm --network host localhost/ocistrap/debian:bookworm cat /etc/debian_version
fi
