#!/bin/sh
# The main job, end to end, without root: check the host, lock bookworm, build
# an OCI image in a user namespace, push it to a registry on 127.0.0.1, verify
# it there, and run it with rootless podman.
set -eu
out=${OCISTRAP_DEMO_DIR:-$HOME/ocistrap-demo}
port=${OCISTRAP_DEMO_PORT:-5123}
mkdir -p "$out/registry"
cd "$out"

cat > registry/config.yml <<CONFIG
version: 0.1
storage:
  filesystem:
    rootdirectory: $out/registry/data
http:
  addr: 127.0.0.1:$port
CONFIG
docker-registry serve registry/config.yml > registry/log 2>&1 &
registry_pid=$!
trap 'kill $registry_pid 2>/dev/null || true' EXIT INT TERM
image=127.0.0.1:$port/demo/debian:bookworm

echo "== ocistrap doctor"
ocistrap doctor
echo "== ocistrap lock bookworm"
ocistrap lock bookworm -o bookworm.lock
echo "== ocistrap build --push $image"
ocistrap build --lock bookworm.lock --push "$image" -o oci:"$out/images:bookworm"
echo "== ocistrap verify docker://$image"
ocistrap verify "docker://$image"
if command -v podman >/dev/null 2>&1; then
    echo "== podman run $image"
    # Hosts without systemd, or with crun on hybrid cgroups, need runc + cgroupfs.
    podman run --rm --tls-verify=false "$image" cat /etc/debian_version ||
        podman --runtime runc --cgroup-manager cgroupfs --events-backend file \
            run --rm --network host --tls-verify=false "$image" cat /etc/debian_version
fi
