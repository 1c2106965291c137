"""Root file system trees as deterministic OCI layer tar streams.

``write_tree``/``write_diff`` walk the tree inside the user namespace (where
owners are the in-image ids) and write a tar stream to a pipe;
``ocistrap.oci.blobwriter`` reads that pipe outside, as the host user. They
share nothing but the byte stream, so each is testable on a plain temp dir.

Determinism: the same tree gives the same bytes. Entries are in depth-first order
with each directory's names sorted by their bytes (parents before children), mtimes
are clamped to ``epoch`` as integers, and no atime/ctime/uname/gname are written.
"""

from __future__ import annotations

import collections
import errno
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, NamedTuple

from ocistrap.errors import BuildError
from ocistrap.rootfs.unpack import XATTR_ALLOW

MOUNT_POINTS: tuple[str, ...] = ("dev", "proc", "sys")
"""Directories whose contents the runtime provides: written empty."""
WHITEOUT_PREFIX = ".wh."
BLOCK = tarfile.BLOCKSIZE
CHUNK_SIZE = 1 << 20
"""Unit of reading, hashing and (for gzip) independent deflate; part of the gzip bytes."""
END_OF_ARCHIVE = bytes(2 * BLOCK)
_PAX = tarfile.PAX_FORMAT
XattrReader = Callable[[str], dict[str, bytes]]


@dataclass(frozen=True)
class TreeStats:
    """What went into a tar stream."""

    entries: int
    file_bytes: int
    whiteouts: int
    skipped: tuple[str, ...]


class Signature(NamedTuple):
    """Enough of an lstat to tell that a path changed; ctime catches chmod, chown, xattrs, writes."""

    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    nlink: int
    rdev: int
    target: str


@dataclass(frozen=True)
class Snapshot:
    """The signature of every path of a tree, by relative path, to diff a later state against."""

    paths: dict[str, Signature]


# --- Tree walking -----------------------------------------------------------------


class _Entry(NamedTuple):
    rel: str
    path: str
    st: os.stat_result


Restat = Callable[[os.stat_result], os.stat_result]


def unchanged(st: os.stat_result) -> os.stat_result:
    return st


def _walk(root: Path, empty_dirs: frozenset[str], restat: Restat = unchanged) -> Iterator[_Entry]:
    """Every path under ROOT (not ROOT itself), depth-first, names sorted by bytes.

    RESTAT turns each lstat into what the image must show (recorded owners and
    devices of a single-uid build); the tree is walked by the real types.
    """

    def visit(directory: str, prefix: str) -> Iterator[_Entry]:
        try:
            with os.scandir(directory) as it:
                names = sorted((e.name for e in it), key=os.fsencode)
        except OSError as exc:
            raise BuildError(f"cannot list {directory}: {exc.strerror}") from exc
        for name in names:
            path = os.path.join(directory, name)
            rel = prefix + name
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise BuildError(f"cannot stat {path}: {exc.strerror}") from exc
            yield _Entry(rel, path, restat(st))
            if stat.S_ISDIR(st.st_mode) and rel not in empty_dirs:
                yield from visit(path, rel + "/")

    yield from visit(os.fspath(root), "")


def _normalized_dirs(empty_dirs: Iterable[str]) -> frozenset[str]:
    return frozenset(d.strip("/") for d in empty_dirs)


def read_xattrs(path: str) -> dict[str, bytes]:
    """The allowed xattrs of PATH (not following symlinks); absent or unsupported ones are skipped."""
    found = {}
    for name in XATTR_ALLOW:
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise BuildError(f"cannot read xattr {name} of {path}: {exc.strerror}") from exc
    return found


def _read_link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        raise BuildError(f"cannot read symlink {path}: {exc.strerror}") from exc


_TYPES: dict[int, bytes] = {
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
}


def tar_header(
    rel: str,
    st: os.stat_result,
    *,
    epoch: int,
    symlink_target: str = "",
    hardlink_to: str | None = None,
    xattrs: dict[str, bytes] | None = None,
) -> bytes:
    """The PAX header blocks of one entry (of a type in ``_TYPES``: sockets have no tar form).

    Pure: everything comes from the arguments, so owners, devices and capabilities
    are testable without privileges.
    """
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    info = tarfile.TarInfo(rel)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = min(st.st_mtime_ns // 1_000_000_000, epoch)
    if hardlink_to is not None:
        info.type, info.linkname = tarfile.LNKTYPE, hardlink_to
    else:
        info.type = kind
        info.linkname = symlink_target
        if kind == tarfile.REGTYPE:
            info.size = st.st_size
        elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    for name, value in sorted((xattrs or {}).items()):
        info.pax_headers["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return info.tobuf(_PAX, "utf-8", "surrogateescape")


def whiteout_header(rel: str, *, epoch: int) -> bytes:
    """The OCI whiteout entry that deletes REL of the layers below."""
    parent, _, name = rel.rpartition("/")
    info = tarfile.TarInfo((parent + "/" if parent else "") + WHITEOUT_PREFIX + name)
    info.mode, info.mtime, info.uname, info.gname = 0o644, epoch, "", ""
    return info.tobuf(_PAX, "utf-8", "surrogateescape")


class _TarWriter:
    """Writes entries to OUT, streaming file contents, linking repeated inodes."""

    def __init__(self, out: BinaryIO, epoch: int, read_xattrs: XattrReader) -> None:
        self.out = out
        self.epoch = epoch
        self.read_xattrs = read_xattrs
        self.first_path: dict[tuple[int, int], str] = {}
        self.buffer = bytearray(CHUNK_SIZE)
        self.entries = self.file_bytes = self.whiteouts = 0
        self.skipped: list[str] = []

    def add(self, entry: _Entry) -> None:
        st = entry.st
        if stat.S_IFMT(st.st_mode) not in _TYPES:
            self.skipped.append(entry.rel)
            return
        hardlink_to = None
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            hardlink_to = self.first_path.setdefault((st.st_dev, st.st_ino), entry.rel)
            if hardlink_to == entry.rel:
                hardlink_to = None
        target = _read_link(entry.path) if stat.S_ISLNK(st.st_mode) else ""
        xattrs = self.read_xattrs(entry.path) if stat.S_ISREG(st.st_mode) and hardlink_to is None else {}
        header = tar_header(
            entry.rel, st, epoch=self.epoch, symlink_target=target, hardlink_to=hardlink_to, xattrs=xattrs
        )
        self.out.write(header)
        self.entries += 1
        if stat.S_ISREG(st.st_mode) and hardlink_to is None:
            self._copy(entry.path, st.st_size)

    def add_whiteout(self, rel: str) -> None:
        self.out.write(whiteout_header(rel, epoch=self.epoch))
        self.entries += 1
        self.whiteouts += 1

    def _copy(self, path: str, size: int) -> None:
        view = memoryview(self.buffer)
        left = size
        try:
            with open(path, "rb", buffering=0) as f:
                while left:
                    n = f.readinto(view[: min(left, CHUNK_SIZE)])
                    if not n:
                        raise BuildError(f"{path} shrank while it was being archived")
                    self.out.write(view[:n])
                    left -= n
        except OSError as exc:
            raise BuildError(f"cannot read {path}: {exc.strerror}") from exc
        self.file_bytes += size
        if size % BLOCK:
            self.out.write(bytes(BLOCK - size % BLOCK))

    def finish(self) -> TreeStats:
        self.out.write(END_OF_ARCHIVE)
        self.out.flush()
        return TreeStats(self.entries, self.file_bytes, self.whiteouts, tuple(self.skipped))


def write_tree(
    root: Path,
    out: BinaryIO,
    *,
    epoch: int,
    empty_dirs: Iterable[str] = MOUNT_POINTS,
    read_xattrs: XattrReader = read_xattrs,
    restat: Restat = unchanged,
) -> TreeStats:
    """Write the whole tree under ROOT to OUT as one layer tar stream (ROOT itself is not an entry)."""
    writer = _TarWriter(out, epoch, read_xattrs)
    for entry in _walk(root, _normalized_dirs(empty_dirs), restat):
        writer.add(entry)
    return writer.finish()


# --- Snapshots and diffs --------------------------------------------------------------


def _signature(entry: _Entry) -> Signature:
    st = entry.st
    target = _read_link(entry.path) if stat.S_ISLNK(st.st_mode) else ""
    return Signature(
        st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
        st.st_ino, st.st_nlink, st.st_rdev, target,
    )  # fmt: skip


def snapshot(root: Path, *, empty_dirs: Iterable[str] = MOUNT_POINTS, restat: Restat = unchanged) -> Snapshot:
    """Record the tree under ROOT so that ``write_diff`` can later emit only what changed."""
    return Snapshot({e.rel: _signature(e) for e in _walk(root, _normalized_dirs(empty_dirs), restat)})


def _parent(rel: str) -> str:
    return rel.rpartition("/")[0]


def _ancestors(rel: str) -> Iterator[str]:
    parent = _parent(rel)
    while parent:
        yield parent
        parent = _parent(parent)


def removed_paths(before: dict[str, Signature], after: dict[str, Signature]) -> list[str]:
    """The topmost paths of BEFORE that AFTER no longer has (a directory that became
    something else counts as removed, so that nothing of it survives below the new entry)."""
    gone = {
        rel
        for rel, old in before.items()
        if rel not in after or (stat.S_ISDIR(old.mode) and not stat.S_ISDIR(after[rel].mode))
    }
    return sorted((r for r in gone if not any(a in gone for a in _ancestors(r))), key=os.fsencode)


def _same_empty_file(old: Signature, new: Signature, epoch: int | None) -> bool:
    """An empty regular file reopened with O_TRUNC (dpkg's lock files) gets a new ctime but
    cannot have new content: unchanged if what the layer records of it is the same."""
    if epoch is None or not (stat.S_ISREG(old.mode) and stat.S_ISREG(new.mode)) or old.size or new.size:
        return False
    recorded = lambda sig: (sig.mode, sig.uid, sig.gid, sig.nlink, min(sig.mtime_ns // 10**9, epoch))  # noqa: E731
    return recorded(old) == recorded(new)


def changed_paths(before: dict[str, Signature], after: dict[str, Signature], *,
                  epoch: int | None = None) -> set[str]:
    """Paths of AFTER that are new or differ, plus the directories that must hold them and
    the whiteouts of removed paths. With EPOCH, empty files whose layer entry would be
    identical do not count as changed."""
    changed = {rel for rel, sig in after.items()
               if before.get(rel) != sig and not (rel in before and _same_empty_file(before[rel], sig, epoch))}
    holders = changed.union(removed_paths(before, after))
    return changed | {a for rel in holders for a in _ancestors(rel)}


def write_diff(
    root: Path,
    before: Snapshot,
    out: BinaryIO,
    *,
    epoch: int,
    empty_dirs: Iterable[str] = MOUNT_POINTS,
    read_xattrs: XattrReader = read_xattrs,
    restat: Restat = unchanged,
) -> TreeStats:
    """Write the changes of ROOT since BEFORE as a layer: new and changed entries, their
    parent directories, and a whiteout for each removed path (before its parent's other children)."""
    entries = list(_walk(root, _normalized_dirs(empty_dirs), restat))
    after = {e.rel: _signature(e) for e in entries}
    include = changed_paths(before.paths, after, epoch=epoch)
    whiteouts: dict[str, list[str]] = collections.defaultdict(list)
    for rel in removed_paths(before.paths, after):
        whiteouts[_parent(rel)].append(rel)
    writer = _TarWriter(out, epoch, read_xattrs)
    for rel in whiteouts.get("", []):
        writer.add_whiteout(rel)
    for entry in entries:
        if entry.rel in include:
            writer.add(entry)
            for rel in whiteouts.get(entry.rel, []):
                writer.add_whiteout(rel)
    return writer.finish()
