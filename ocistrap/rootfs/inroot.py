"""Paths inside a tree that packages wrote, resolved as if the tree were ``/``.

Code of ours that works on the staging tree from outside its chroot runs as
root of the user namespace, where the caller's own files are writable. The
tree's symlinks are the packages' (``usr/share -> /proc/self/cwd``,
``var/lib/apt/lists -> /home/you``), so no path into it may be handed to the
kernel as a plain string. Every operation here resolves its path relative to
a descriptor of the root with openat2(2)'s RESOLVE_IN_ROOT (an absolute
symlink or ``..`` stays in the tree) and RESOLVE_NO_MAGICLINKS (no
``/proc/PID/root`` or ``/proc/self/fd`` hop out of it), then acts on the last
component through its directory's descriptor without following it.

Where openat2 is missing (Linux < 5.6, or a seccomp policy that refuses it)
the directories are resolved by the unpacker's own resolution
(ocistrap.rootfs.unpack.resolve_dir), one component at a time, the same rules in
user space.
"""

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ocistrap.errors import BuildError

SYS_OPENAT2 = 437  # the same number on every architecture Linux added it to at once (5.6)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS
MAX_HOPS = 40
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_available: bool | None = None


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE)
    fd = _libc.syscall(SYS_OPENAT2, ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def openat2_works() -> bool:
    """Whether this kernel (and any seccomp policy around us) lets us use openat2."""
    global _available
    if _available is None:
        try:
            os.close(_openat2(-100, "/", os.O_PATH))  # AT_FDCWD
            _available = True
        except OSError as e:
            if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                raise
            _available = False
    return _available


def _split(rel: str | Path) -> tuple[str, str]:
    """(parent, last component) of REL, a path relative to the root; refuses the root itself."""
    parts = [p for p in str(rel).split("/") if p not in ("", ".")]
    if not parts or parts[-1] == "..":
        raise BuildError(f"{rel!r} names no entry below the root")
    return "/".join(parts[:-1]), parts[-1]


class Tree:
    """A root directory and the operations the host-side code needs inside it."""

    def __init__(self, root: str | Path, *, use_openat2: bool | None = None) -> None:
        self.root = Path(root)
        self.fd = os.open(root, _DIR)
        self.openat2 = openat2_works() if use_openat2 is None else use_openat2

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> "Tree":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- resolution ----

    def opendir(self, rel: str | Path, *, create: bool = False) -> int:
        """A descriptor of directory REL (made with its parents, 0755, when CREATE, as tar
        makes them: through the tree's symlinks, resolved inside it)."""
        path = str(rel).strip("/") or "."
        if self.openat2:
            try:
                return _openat2(self.fd, path, _DIR)
            except FileNotFoundError:
                if not create:
                    raise
        from ocistrap.rootfs import unpack
        real = unpack.resolve_dir(self.fd, path, create=create) or "."
        if self.openat2:
            return _openat2(self.fd, real, _DIR | os.O_NOFOLLOW)
        return os.open(real, _DIR | os.O_NOFOLLOW, dir_fd=self.fd)

    @contextmanager
    def _dir(self, rel: str, *, create: bool = False) -> Iterator[int]:
        fd = self.opendir(rel, create=create)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def entry(self, rel: str | Path, *, create: bool = False) -> Iterator[tuple[int, str]]:
        """(descriptor of REL's directory, REL's last component), for *at calls that do not
        follow that component."""
        parent, base = _split(rel)
        with self._dir(parent, create=create) as fd:
            yield fd, base

    def open(self, rel: str | Path, flags: int = os.O_RDONLY, mode: int = 0o644, *,
             follow: bool = True) -> int:
        """open(2) REL; a last component that is a symlink is followed (inside the tree) only
        when FOLLOW."""
        for _ in range(MAX_HOPS):
            with self.entry(rel) as (fd, base):
                try:
                    return os.open(base, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
                except OSError as e:
                    if not follow or e.errno != errno.ELOOP:
                        raise
                    target = os.readlink(base, dir_fd=fd)
            parent = _split(rel)[0]
            rel = target if target.startswith("/") else f"{parent}/{target}"
        raise BuildError(f"/{rel} goes through too many symlinks")

    def mount_point(self, rel: str | Path) -> str:
        """The symlink-free absolute path of REL as this process sees it, for mount(2), which
        only takes paths; REL itself must not be a symlink. Nothing but this process may change
        the tree between this call and the mount (no maintainer script runs meanwhile)."""
        fd = self.open(rel, os.O_PATH, follow=False)
        try:
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise BuildError(f"/{str(rel).strip('/')} in {self.root} is a symlink, where something "
                                  "is to be mounted")
            return os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)

    # ---- reading ----

    def lstat(self, rel: str | Path) -> os.stat_result | None:
        """REL's own metadata (not its target's), or None if nothing is there."""
        try:
            with self.entry(rel) as (fd, base):
                return os.stat(base, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, rel: str | Path) -> bool:
        return self.lstat(rel) is not None

    def is_file(self, rel: str | Path) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, rel: str | Path) -> bool:
        st = self.lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def read_bytes(self, rel: str | Path) -> bytes:
        with os.fdopen(self.open(rel), "rb") as f:
            return f.read()

    def read_text(self, rel: str | Path) -> str:
        return self.read_bytes(rel).decode()

    def readlink(self, rel: str | Path) -> str:
        with self.entry(rel) as (fd, base):
            return os.readlink(base, dir_fd=fd)

    def listdir(self, rel: str | Path) -> list[str]:
        with self._dir(str(rel)) as fd:
            return os.listdir(fd)

    # ---- writing ----

    def mkdir(self, rel: str | Path, mode: int | None = None) -> None:
        """Directory REL and its parents (0755); an existing one (or a symlink in the tree to
        one) is kept. MODE, if given, is applied to REL."""
        fd = self.opendir(rel, create=True)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def write(self, rel: str | Path, data: bytes, mode: int = 0o644) -> None:
        """REL holds DATA and has MODE; a symlink or anything not a regular file there is
        replaced, never written through."""
        with self.entry(rel, create=True) as (fd, base):
            st = self._lstat_at(fd, base)
            if st is not None and not stat.S_ISREG(st.st_mode):
                self._remove_at(fd, base, st)
            new = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                          mode, dir_fd=fd)
            try:
                os.fchmod(new, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(new, view):]
            finally:
                os.close(new)

    def chmod(self, rel: str | Path, mode: int) -> None:
        """chmod REL itself (a symlink is not followed)."""
        fd = self.open(rel, os.O_PATH, follow=False)
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                os.chmod(f"/proc/self/fd/{fd}", mode)  # fchmodat cannot leave a symlink alone
        finally:
            os.close(fd)

    def chown(self, rel: str | Path, uid: int, gid: int) -> None:
        with self.entry(rel) as (fd, base):
            os.chown(base, uid, gid, dir_fd=fd, follow_symlinks=False)

    def symlink(self, target: str, rel: str | Path) -> None:
        with self.entry(rel, create=True) as (fd, base):
            os.symlink(target, base, dir_fd=fd)

    def rename(self, src: str | Path, dst: str | Path) -> None:
        """Move entry SRC (not what it points at) to DST, replacing what DST names."""
        with self.entry(src) as (sfd, sbase), self.entry(dst) as (dfd, dbase):
            os.rename(sbase, dbase, src_dir_fd=sfd, dst_dir_fd=dfd)

    def unlink(self, rel: str | Path, *, missing_ok: bool = True) -> None:
        try:
            with self.entry(rel) as (fd, base):
                os.unlink(base, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            if not missing_ok:
                raise

    def rmdir(self, rel: str | Path) -> None:
        with self.entry(rel) as (fd, base):
            os.rmdir(base, dir_fd=fd)

    def remove(self, rel: str | Path) -> None:
        """Remove the entry REL whatever it is; a directory with all it holds, a symlink alone."""
        try:
            with self.entry(rel) as (fd, base):
                st = self._lstat_at(fd, base)
                if st is not None:
                    self._remove_at(fd, base, st)
        except (FileNotFoundError, NotADirectoryError):
            pass

    def empty(self, rel: str | Path, keep: frozenset[str] | set[str] = frozenset()) -> None:
        """Remove everything in directory REL but the names in KEEP; nothing if REL is no
        directory."""
        try:
            fd = self.opendir(rel)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            for name in os.listdir(fd):
                st = self._lstat_at(fd, name)
                if name not in keep and st is not None:
                    self._remove_at(fd, name, st)
        finally:
            os.close(fd)

    @staticmethod
    def _lstat_at(fd: int, base: str) -> os.stat_result | None:
        try:
            return os.stat(base, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    @staticmethod
    def _remove_at(fd: int, base: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(base, dir_fd=fd)
        else:
            os.unlink(base, dir_fd=fd)
