#!/bin/sh
# Install the Debian packages ocistrap and its tests need; sudo only when not root.
set -eu
PACKAGES="python3 python3-venv python3-pip uidmap gpgv gnupg openssl debian-archive-keyring
dpkg-dev xz-utils zstd mmdebstrap docker-registry apache2-utils podman runc skopeo
umoci buildah git make ca-certificates qemu-user-static binfmt-support arch-test sqv docker.io"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing host packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
