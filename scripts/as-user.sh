#!/bin/sh
# Run a make target of this tree as an unprivileged account with subuid/subgid
# ranges. Started as root (as CI is), it creates that account, copies the
# source tree into its home and runs the target there as it; started as a
# normal user, it runs the target directly. ocistrap is for people without
# root: a build that only works as root proves nothing.
set -eu
target=$1
here=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" -ne 0 ]; then
    exec make -C "$here" "$target"
fi
# foreign architectures run through qemu-user binfmt handlers, which only root can enable
if [ -d /proc/sys/fs/binfmt_misc ] && [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
fi
command -v update-binfmts >/dev/null 2>&1 && update-binfmts --enable >/dev/null 2>&1 || true
user=${OCISTRAP_TEST_USER:-ocistrap-test}
id "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
if [ "${OCISTRAP_TEST_SUBIDS:-yes}" = none ]; then
    # an account without subordinate ids, as in CI pods: builds must fall back to single-uid mode
    sed -i "/^$user:/d" /etc/subuid /etc/subgid
else
    grep -q "^$user:" /etc/subuid || usermod --add-subuids 300000-365535 "$user"
    grep -q "^$user:" /etc/subgid || usermod --add-subgids 300000-365535 "$user"
fi
home=$(getent passwd "$user" | cut -d: -f6)
uid=$(id -u "$user")
dest="$home/ocistrap-src"
mkdir -p "$dest"
# keep the account's venv between runs; refresh the sources
find "$dest" -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +
tar -C "$here" --exclude=./.venv --exclude=./.git --exclude='*/__pycache__' \
    --exclude=./ocistrap-images -cf - . | tar -C "$dest" -xf -
chown -R "$user:" "$dest"
runtime="/tmp/ocistrap-runtime-$uid"
mkdir -p "$runtime" && chown "$user:" "$runtime" && chmod 700 "$runtime"
# a small file system the disk-full tests fill up (tests/test_e2e_faults.py), empty on every run
smallfs="/tmp/ocistrap-smallfs-$uid"
mkdir -p "$smallfs"
if mountpoint -q "$smallfs"; then umount "$smallfs"; fi
if mount -t tmpfs -o size=512m,mode=700,uid="$uid",gid="$(id -g "$user")" ocistrap-smallfs "$smallfs"; then
    OCISTRAP_TEST_SMALLFS="$smallfs"
else
    echo "as-user.sh: no tmpfs at $smallfs: the disk-full tests will be skipped" >&2
fi
exec runuser -u "$user" -- env -i HOME="$home" USER="$user" LOGNAME="$user" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XDG_RUNTIME_DIR="$runtime" LANG=C.UTF-8 CI="${CI:-}" OCISTRAP_TEST_SMALLFS="${OCISTRAP_TEST_SMALLFS:-}" \
    PYTEST_ARGS="${PYTEST_ARGS:-}" BENCH_ARGS="${BENCH_ARGS:-}" \
    BENCH_REVISION="${BENCH_REVISION:-}" PYTEST_JOBS="${PYTEST_JOBS:-2}" make -C "$dest" "$target"
