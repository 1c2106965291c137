"""The mounts of a staging root and of a chroot inside it (only in code running inside a sandbox)."""

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from ocistrap.errors import BuildError
from ocistrap.rootfs import inroot
from ocistrap.rootfs.idmaps import inner_id_mapped
from ocistrap.rootfs.innerlog import notice
from ocistrap.rootfs.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    mount,
    umount,
)

# statvfs flag -> mount flag, for the flags a bind remount must keep (the kernel
# refuses to drop a flag a more privileged namespace locked).
KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
              (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
              (os.ST_RELATIME, MS_RELATIME))
CHROOT_DIRS = ("dev", "proc", "sys")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}


def _detach_mounts(path: str) -> None:
    for _ in range(3):
        points = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        inside = mounts_below(path, points) + ([path] if path in points else [])
        if not inside:
            return
        for point in inside:
            try:
                umount(point, MNT_DETACH)
            except OSError:
                continue


# ---- mounts: run as root inside the sandbox ----

def mount_staging(path: Path, *, tmpfs: bool = True) -> None:
    """Give the staging root its own tmpfs (memory, gone with the sandbox), or just make
    sure the on-disk directory exists when building in a --workdir."""
    path.mkdir(parents=True, exist_ok=True)
    if tmpfs:
        _mount_or_fail("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")


MASKED_PROC_HINT = ("run the container with its /proc unmasked (podman: --security-opt unmask=ALL, docker: "
                    "--security-opt systempaths=unconfined), or build in another mode")


PROC_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC


def try_mount_proc(target: Path | str) -> bool:
    """Mount a proc file system of the current PID namespace at TARGET; False where the kernel
    refuses one because parts of the caller's /proc are masked (podman and docker cover
    /proc/kcore and others in a container, and a new proc would show them)."""
    try:
        mount("proc", target, "proc", PROC_FLAGS)
        return True
    except OSError as e:
        if e.errno == errno.EPERM:
            return False
        raise BuildError(f"cannot mount proc on {target}: {e.strerror}") from e


def mount_proc(target: Path) -> None:
    """A proc file system of the current PID namespace at TARGET (for the owner recorder, which
    finds processes by their numbers in this namespace: no other proc will do)."""
    if not try_mount_proc(target):
        raise BuildError(f"cannot mount proc on {target}: parts of this container's /proc are masked",
                         hint=MASKED_PROC_HINT)


def bind_mount(source: Path, target: Path, *, readonly: bool = False) -> None:
    """Make SOURCE visible at TARGET (read-only if asked)."""
    _mount_or_fail(source, target, None, MS_BIND | MS_REC)
    if readonly:
        try:
            _remount_readonly(target)
        except OSError as e:
            umount(target, MNT_DETACH)
            raise BuildError(f"cannot make {target} read-only: {e.strerror}") from e


def unmount(target: Path) -> None:
    """Detach the mount at TARGET (and everything below it)."""
    try:
        umount(target, MNT_DETACH)
    except OSError as e:
        raise BuildError(f"cannot unmount {target}: {e.strerror}") from e


def _mount_or_fail(source: str | Path | None, target: Path, fstype: str | None, flags: int,
                   data: str | None = None) -> None:
    try:
        mount(source, target, fstype, flags, data)
    except OSError as e:
        raise BuildError(f"cannot mount {fstype or source} on {target}: {e.strerror}",
                           hint="mounts only work inside the sandbox (spawn.spawn)") from e


def _remount_readonly(target: Path) -> None:
    kept = os.statvfs(target).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st_flag, ms_flag in KEPT_FLAGS:
        if kept & st_flag:
            flags |= ms_flag
    mount(None, target, None, flags)


def prepare_chroot(root: Path) -> None:
    """Give ROOT the /dev, /proc and /sys that maintainer scripts expect.

    Device nodes cannot be created in a user namespace, so the host's are
    bind-mounted onto empty files. /sys is left empty if the kernel refuses
    a read-only bind of it.
    """
    root = root.resolve()
    try:
        _prepare(root)
    except (OSError, BuildError) as e:
        release_chroot(root)
        if isinstance(e, BuildError):
            raise
        raise BuildError(f"cannot prepare {root} for chroot: {e}") from e


def _prepare(root: Path) -> None:
    """Every path in ROOT is resolved inside it (ocistrap.rootfs.inroot): its symlinks are the packages'."""
    with inroot.Tree(root) as tree:
        for d in CHROOT_DIRS:
            _real_dir(tree, d, 0o755)
        for name in DEVICES:
            if not tree.exists(f"dev/{name}"):
                tree.write(f"dev/{name}", b"")
            _mount_or_fail(f"/dev/{name}", _point(tree, f"dev/{name}"), None, MS_BIND)
        _real_dir(tree, "dev/pts", 0o755)
        tty_group = ",gid=5" if inner_id_mapped(5, Path("/proc/self/gid_map").read_text()) else ""
        _mount_or_fail("devpts", _point(tree, "dev/pts"), "devpts", MS_NOSUID | MS_NOEXEC,
                       "newinstance,ptmxmode=0666,mode=0620" + tty_group)
        for name, target in DEV_LINKS.items():
            link = tree.lstat(f"dev/{name}")
            if link is not None and (stat.S_ISLNK(link.st_mode) or (stat.S_ISREG(link.st_mode) and link.st_size == 0)):
                tree.unlink(f"dev/{name}")
            if not tree.exists(f"dev/{name}"):
                tree.symlink(target, f"dev/{name}")
        _real_dir(tree, "dev/shm", 0o1777)
        _mount_or_fail("tmpfs", _point(tree, "dev/shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        proc_or_empty(_point(tree, "proc"))
        _bind_sys(_point(tree, "sys"))


def _real_dir(tree: inroot.Tree, rel: str, mode: int) -> None:
    """REL made if missing; refused if a package made it a symlink (release_chroot finds the
    mounts by these paths)."""
    st = tree.lstat(rel)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise BuildError(f"/{rel} in {tree.root} is a symlink; refusing to mount on it")
    if st is None:
        tree.mkdir(rel, mode)


def _point(tree: inroot.Tree, rel: str) -> Path:
    return Path(tree.mount_point(rel))


def proc_or_empty(target: Path | str, *, quiet: bool = False) -> None:
    """A proc of the current PID namespace at TARGET; where a container's masks forbid one
    (try_mount_proc), TARGET stays an empty directory, as in root mode. Not the container's /proc
    bound instead: it would list the container's other processes, and a script of the same uid
    could reach their files through /proc/PID/root."""
    if not try_mount_proc(target) and not quiet:
        notice("leaving the chroot's /proc empty: the kernel refuses a new one where parts of this "
               "container's /proc are masked; maintainer scripts that need one do less (systemd's runs "
               "systemd-tmpfiles), and the tree then differs from a host build")


def _bind_sys(target: Path) -> None:
    try:
        mount("/sys", target, None, MS_BIND | MS_REC)
    except OSError as e:
        notice(f"leaving {target} empty: the kernel refused to bind /sys ({e.strerror})")
        return
    try:
        _remount_readonly(target)
    except OSError as e:
        umount(target, MNT_DETACH)
        notice(f"leaving {target} empty: cannot make a /sys bind read-only ({e.strerror})")


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[str]:
    """The mount points listed in /proc/self/mountinfo, in its order."""
    return [_unescape_mountinfo(line.split()[4]) for line in text.splitlines() if line.strip()]


def mounts_below(root: str, mount_points: Iterable[str]) -> list[str]:
    """Mount points strictly inside ROOT, deepest (and latest) first."""
    prefix = root.rstrip("/") + "/"
    inside = [m for m in mount_points if m.startswith(prefix)]
    order = {m: i for i, m in enumerate(inside)}
    return sorted(set(inside), key=lambda m: (m.count("/"), order[m]), reverse=True)


def _chroot_mounts(root: Path) -> list[str]:
    """Mounts of ROOT's dev, proc and sys (and anything below them), deepest first."""
    points = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return [m for d in CHROOT_DIRS for m in [str(root / d)] + mounts_below(str(root / d), points)
            if m in points]


def release_chroot(root: Path) -> None:
    """Undo ``prepare_chroot``: unmount ROOT's dev, proc and sys and remove the placeholders,
    so a walk of the tree afterwards sees no host content and no /dev entries.

    Mounts elsewhere below ROOT (``bind_mount``) stay; ``unmount`` them.
    """
    root = root.resolve()
    for _ in range(3):
        remaining = _chroot_mounts(root)
        if not remaining:
            break
        for mount_point in sorted(remaining, key=lambda m: m.count("/"), reverse=True):
            try:
                umount(mount_point, MNT_DETACH)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise BuildError(f"cannot unmount {mount_point}: {e.strerror}") from e
    if remaining := _chroot_mounts(root):
        raise BuildError(f"still mounted in {root}: {', '.join(remaining)}")
    _remove_placeholders(root)


def _remove_placeholders(root: Path) -> None:
    with inroot.Tree(root) as tree:
        for name in DEVICES:
            node = tree.lstat(f"dev/{name}")
            if node is not None and stat.S_ISREG(node.st_mode) and node.st_size == 0:
                tree.unlink(f"dev/{name}")
        for name, target in DEV_LINKS.items():
            link = tree.lstat(f"dev/{name}")
            if link is not None and stat.S_ISLNK(link.st_mode) and tree.readlink(f"dev/{name}") == target:
                tree.unlink(f"dev/{name}")
        for name in ("pts", "shm"):
            try:
                tree.rmdir(f"dev/{name}")
            except OSError:
                continue
