"""Unpack a .deb's file system tar stream into a root, refusing anything that could reach outside it.

The essential packages are unpacked before dpkg exists in the tree, by code of
ours that runs as root of the user namespace, where the caller's own files are
writable. So each member is checked before it touches the disk:

- names are normalised (``./``, ``//`` and ``.`` dropped) and must stay below
  the root: absolute names and names with a ``..`` component are refused;
- paths are resolved as if the root were ``/``: a symlink already in the tree,
  absolute or relative, leads somewhere inside the root, never out of it, and a
  symlink the same archive created with an absolute or ``..`` target is never
  written through (GNU tar's delayed links refuse that too);
- a hard link must name a regular file the same archive unpacked before it;
- device nodes, FIFOs, sparse and unknown member types are refused;
- at most ``max_members`` members, so a package cannot pin the build forever.

What passes is written as GNU tar writes it as root with
``--keep-directory-symlink``: an existing file is replaced, an existing
directory keeps its place and takes the archive's metadata, a directory member
whose path is a symlink to a directory keeps the symlink (merged /usr); owners,
modes, mtimes and the ``security.capability`` xattr come from the archive
(owners and xattrs only when running as root, as with tar).

Top-level directories named in ``aliased`` (``bin``, ``lib``...) are made, when
first needed, as a symlink ``bin -> usr/bin`` to a real ``usr/bin``: the tree
is merged-/usr from the start, as usrmerge would leave it.

``bootstrap`` runs this in a child chrooted into the root, a second wall should
these checks miss something.
"""

import errno
import os
import stat
import tarfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

from ocistrap.errors import BuildError

MAX_MEMBERS = 1_000_000
"""More than any Debian package has (the largest hold about 100,000 paths)."""

MAX_SYMLINK_HOPS = 40
CHUNK = 1 << 20
STREAM_BUFFER = 1 << 16
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

T = TypeVar("T")

XATTR_ALLOW: tuple[str, ...] = ("security.capability",)
"""Extended attributes carried into layers; others (e.g. SELinux labels of the host) are not."""


class UnpackError(BuildError):
    """A package's data archive cannot be unpacked, or holds a member we refuse (REFUSED)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class Refused(Exception):
    """A member breaks a rule; the reason completes "member NAME ..."."""


@dataclass(frozen=True)
class Unpacked:
    """What one archive put into the tree."""

    members: int
    file_bytes: int


def normalise(name: str) -> str:
    """The member NAME relative to the root, without ``./``, ``//`` or ``.`` ("" is the root itself)."""
    if "\0" in name:
        raise Refused("has a NUL byte in its path")
    if name.startswith("/"):
        raise Refused("has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Refused("has '..' in its path")
    return "/".join(parts)


def escapes(target: str) -> bool:
    """Whether a symlink to TARGET may point out of the directory it is in (tar's "dangerous" links)."""
    return target.startswith("/") or ".." in target.split("/")


def _join(parent: str, base: str) -> str:
    return f"{parent}/{base}" if parent else base


def _owned(member: tarfile.TarInfo) -> tuple[int, int]:
    return member.uid, member.gid


def _mtime_ns(member: tarfile.TarInfo) -> int:
    return round(member.mtime * 1_000_000_000)


@dataclass
class _Tree:
    """The root being unpacked into; every path it hands the kernel is free of symlinks and ``..``."""

    fd: int
    same_owner: bool
    fresh_shown_as_root: bool = False
    aliased: frozenset[str] = frozenset()
    dirs: dict[str, str] = field(default_factory=lambda: {"": ""})
    own_escaping_links: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)
    deferred: dict[str, tarfile.TarInfo] = field(default_factory=dict)

    # ---- resolving paths as if the root were / ----

    def resolve(self, path: str, *, create: bool) -> str:
        """The symlink-free path of directory PATH below the root, following symlinks inside it;
        missing directories are made (as tar makes them) when CREATE, refused otherwise."""
        todo = path.split("/")[::-1]
        done: list[str] = []
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if done:
                    done.pop()
                continue
            here = _join("/".join(done), part)
            try:
                st = os.stat(here, dir_fd=self.fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise Refused(f"needs /{here}, which does not exist") from None
                if here in self.aliased:
                    self.alias(here)
                    todo.append(part)
                    continue
                os.mkdir(here, 0o755, dir_fd=self.fd)
                done.append(part)
                continue
            if stat.S_ISLNK(st.st_mode):
                if here in self.own_escaping_links:
                    raise Refused(f"goes through the symlink /{here}, which this package made "
                                  f"pointing to {os.readlink(here, dir_fd=self.fd)}")
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise Refused(f"goes through too many symlinks (a loop at /{here}?)")
                target = os.readlink(here, dir_fd=self.fd)
                if target.startswith("/"):
                    done = []
                todo.extend(target.split("/")[::-1])
                continue
            if not stat.S_ISDIR(st.st_mode):
                raise Refused(f"is below /{here}, which is not a directory")
            done.append(part)
        return "/".join(done)

    def alias(self, top: str) -> None:
        """Make the missing top-level directory TOP as merged /usr has it: ``TOP -> usr/TOP``."""
        self.resolve(f"usr/{top}", create=True)
        os.symlink(f"usr/{top}", top, dir_fd=self.fd)

    def parent_of(self, name: str) -> tuple[str, str]:
        """(symlink-free path of NAME's directory, NAME's last component); the directory is made if missing."""
        parent, _, base = name.rpartition("/")
        real = self.dirs.get(parent)
        if real is None:
            real = self.dirs[parent] = self.resolve(parent, create=True)
        return real, base

    def exists(self, path: str) -> bool:
        try:
            os.stat(path, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def is_dir_link(self, path: str) -> bool:
        try:
            self.resolve(path, create=False)
        except Refused:
            return False
        return True

    def clear(self, path: str) -> None:
        """Remove what is at PATH so a member can take its place, as tar does (an empty
        directory goes, a full one stays and the member is refused)."""
        try:
            st = os.stat(path, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            try:
                os.rmdir(path, dir_fd=self.fd)
            except OSError:
                raise Refused(f"would replace the directory /{path}, which is not empty") from None
        else:
            os.unlink(path, dir_fd=self.fd)
        if not stat.S_ISREG(st.st_mode):
            self.dirs = {"": ""}
            self.own_escaping_links.discard(path)

    # ---- members ----

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> int:
        """Put MEMBER into the tree; return how many bytes of file data it wrote."""
        name = normalise(member.name)
        if member.issparse():
            raise Refused("is a sparse file")
        if member.isdir():
            self.directory(name, member)
        elif member.isreg():
            return self.regular(name, member, tar)
        elif member.issym():
            self.symlink(name, member)
        elif member.islnk():
            self.hardlink(name, member)
        elif member.ischr() or member.isblk():
            raise Refused("is a device node")
        elif member.isfifo():
            raise Refused("is a FIFO")
        else:
            raise Refused(f"has the unsupported type {member.type!r}")
        return 0

    def directory(self, name: str, member: tarfile.TarInfo) -> None:
        if not name:
            self.deferred[""] = member
            return
        parent, base = self.parent_of(name)
        path = _join(parent, base)
        if path in self.aliased and not self.exists(path):
            self.alias(path)
            return
        try:
            os.mkdir(path, 0o700, dir_fd=self.fd)
        except FileExistsError:
            st = os.stat(path, dir_fd=self.fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode) and path not in self.own_escaping_links and self.is_dir_link(path):
                return
            if not stat.S_ISDIR(st.st_mode):
                self.clear(path)
                os.mkdir(path, 0o700, dir_fd=self.fd)
        self.deferred[path] = member

    def regular(self, name: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> int:
        path = self.new_path(name)
        fd = self.create(path, lambda: os.open(path, _NEW_FILE, 0o600, dir_fd=self.fd))
        try:
            written = _copy(tar, member, fd)
            self.finish_fd(fd, member, fresh=True)
        finally:
            os.close(fd)
        self.files.add(name)
        return written

    def symlink(self, name: str, member: tarfile.TarInfo) -> None:
        path = self.new_path(name)
        self.create(path, lambda: os.symlink(member.linkname, path, dir_fd=self.fd))
        if self.chowns(member, fresh=True):
            os.chown(path, *_owned(member), dir_fd=self.fd, follow_symlinks=False)
        mtime = _mtime_ns(member)
        os.utime(path, ns=(mtime, mtime), dir_fd=self.fd, follow_symlinks=False)
        if escapes(member.linkname):
            self.own_escaping_links.add(path)

    def hardlink(self, name: str, member: tarfile.TarInfo) -> None:
        try:
            target = normalise(member.linkname)
        except Refused as e:
            raise Refused(f"is a hard link to {member.linkname!r}, which {e}") from None
        if target not in self.files:
            raise Refused(f"is a hard link to {member.linkname!r}, which is no file this package unpacked before it")
        source = _join(*self.parent_of(target))
        if not stat.S_ISREG(os.stat(source, dir_fd=self.fd, follow_symlinks=False).st_mode):
            raise Refused(f"is a hard link to {member.linkname!r}, which is no longer a regular file")
        path = self.new_path(name)
        if path != source:
            self.create(path, lambda: os.link(source, path, src_dir_fd=self.fd, dst_dir_fd=self.fd,
                                              follow_symlinks=False))
        self.files.add(name)

    def new_path(self, name: str) -> str:
        if not name:
            raise Refused("replaces the root directory")
        return _join(*self.parent_of(name))

    def create(self, path: str, make: Callable[[], T]) -> T:
        """MAKE the entry at PATH; if something is in the way, remove it (tar's default) and retry once."""
        try:
            return make()
        except FileExistsError:
            self.clear(path)
            return make()

    def chowns(self, member: tarfile.TarInfo, *, fresh: bool) -> bool:
        """Whether MEMBER's owner is to be applied; a FRESH file (made by this unpack) that is to be
        0:0 needs no chown where the caller's own ids stand for root (fresh_shown_as_root)."""
        return self.same_owner and not (fresh and self.fresh_shown_as_root and _owned(member) == (0, 0))

    def finish_fd(self, fd: int, member: tarfile.TarInfo, *, fresh: bool = False) -> None:
        """Owner, then mode (chown clears set-id bits), then xattrs (chown clears capabilities), then mtime."""
        if self.chowns(member, fresh=fresh):
            os.fchown(fd, *_owned(member))
        os.fchmod(fd, member.mode & 0o7777)
        if self.same_owner:
            for key in XATTR_ALLOW:
                value = member.pax_headers.get("SCHILY.xattr." + key)
                if value is not None:
                    os.setxattr(fd, key, value.encode("utf-8", "surrogateescape"))
        mtime = _mtime_ns(member)
        os.utime(fd, ns=(mtime, mtime))

    def finish_directories(self) -> None:
        """Directory metadata last (deepest first), as tar does, so unpacking into them never fails."""
        for path, member in sorted(self.deferred.items(), reverse=True):
            try:
                fd = os.open(path or ".", _OPEN_DIR, dir_fd=self.fd)
            except OSError:
                continue  # replaced by a later member of the same archive
            try:
                self.finish_fd(fd, member)
            finally:
                os.close(fd)
        self.deferred.clear()


def resolve_dir(fd: int, path: str, *, create: bool = False) -> str:
    """The symlink-free path, relative to the root descriptor FD, of directory PATH resolved
    as if that root were ``/`` (missing directories made when CREATE); FileNotFoundError if it
    cannot be (missing, not a directory, a loop). ocistrap.rootfs.inroot's fallback without openat2."""
    try:
        return _Tree(fd=fd, same_owner=False).resolve(path, create=create)
    except Refused as e:
        raise FileNotFoundError(errno.ENOENT, f"/{path} {e}") from None


def alias_usr_only(root: str | Path, aliased: Collection[str]) -> None:
    """Give each ALIASED directory that is only under usr/ its top-level symlink, as usrmerge's
    conversion ends; paths are resolved inside ROOT, as while unpacking."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tree = _Tree(fd=fd, same_owner=False, aliased=frozenset(aliased))
        for top in sorted(aliased):
            if not tree.exists(top) and tree.is_dir_link(f"usr/{top}"):
                tree.alias(top)
    finally:
        os.close(fd)


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> int:
    source = tar.extractfile(member)
    assert source is not None
    written = 0
    while chunk := source.read(CHUNK):
        view = memoryview(chunk)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        written += len(chunk)
    return written


def unpack(stream: BinaryIO, root: str | Path, *, package: str, same_owner: bool | None = None,
           max_members: int = MAX_MEMBERS, aliased: Collection[str] = (), own_shown_as_root: bool = False) -> Unpacked:
    """Unpack the tar STREAM (a .deb's data, as `dpkg-deb --fsys-tarfile` writes it) into ROOT.

    SAME_OWNER (default: when running as root) applies the archive's owners and
    xattrs. ALIASED: the top-level directories to make as merged /usr has them
    (``bin -> usr/bin``) when missing. OWN_SHOWN_AS_ROOT: the caller's ids are shown as 0:0
    (chrootless mode's recorder), so what this unpack creates already has that owner and only
    other owners are applied: each chown costs a round trip to the recorder. Raises UnpackError naming PACKAGE and the member for anything refused
    or unreadable; what was unpacked before stays (the caller throws the tree away).
    """
    if same_owner is None:
        same_owner = os.geteuid() == 0
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tree = _Tree(fd=fd, same_owner=same_owner, fresh_shown_as_root=own_shown_as_root, aliased=frozenset(aliased))
    count = written = 0
    name = ""
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=STREAM_BUFFER) as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # a stream needs no index of past members
                name = member.name
                count += 1
                if count > max_members:
                    raise Refused(f"is one more than the {max_members} members a package may have")
                written += tree.add(tar, member)
            tree.finish_directories()
        while stream.read(STREAM_BUFFER):
            pass  # the writer may still be sending tar's padding
    except Refused as e:
        raise UnpackError(f"refusing to unpack {package}: member {name!r} {e}", refused=True) from None
    except (tarfile.TarError, EOFError) as e:
        where = f" after member {name!r}" if name else ""
        raise UnpackError(f"cannot unpack {package}: its data is not a valid tar archive{where} ({e})") from None
    except OSError as e:
        raise UnpackError(f"cannot unpack {package}: member {name!r}: {e.strerror or e}") from None
    except (ValueError, OverflowError) as e:  # a NUL in a link target, an mtime or id out of range
        raise UnpackError(f"cannot unpack {package}: member {name!r}: {e}") from None
    finally:
        os.close(fd)
    return Unpacked(members=count, file_bytes=written)
