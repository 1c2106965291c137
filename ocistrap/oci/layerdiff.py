"""How two layer tars differ, path by path: what `verify --rebuild` names when a layer is not reproduced.

Each tar is read once as a stream; a member is kept as its metadata and, for a
regular file, the SHA-256 of its bytes, so a layer of any size needs memory for
its list of paths only. Nothing here knows where the tars come from.
"""

import hashlib
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import IO

XATTR_PREFIX = "SCHILY.xattr."
_KINDS = {
    tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.CONTTYPE: "file", tarfile.DIRTYPE: "directory",
    tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hard link", tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device", tarfile.FIFOTYPE: "fifo",
}


@dataclass(frozen=True)
class Member:
    """What a layer says of one path. The fields are in the order a difference is named."""

    type: str
    mode: int
    owner: str
    size: int
    content: str
    target: str
    device: str
    mtime: int
    xattrs: tuple[tuple[str, str], ...]

    def shown(self, aspect: str) -> str:
        """This member's value of ASPECT (a field name), as a report prints it."""
        value = getattr(self, aspect)
        if aspect == "mode":
            return f"{value:04o}"
        if aspect == "content":
            return f"sha256:{value[:12]}" if value else "none"
        if aspect == "xattrs":
            return ",".join(f"{name}={data}" for name, data in value) or "none"
        return str(value) if value != "" else "none"


ASPECTS = tuple(f.name for f in fields(Member))


@dataclass(frozen=True)
class PathDifference:
    """One path the two layers disagree on: the aspects that differ, or which side lacks it."""

    path: str
    image: Member | None
    rebuilt: Member | None

    def aspects(self) -> list[str]:
        if self.image is None or self.rebuilt is None:
            return []
        return [a for a in ASPECTS if getattr(self.image, a) != getattr(self.rebuilt, a)]

    def __str__(self) -> str:
        if self.rebuilt is None:
            return f"/{self.path}: only in the image ({self.image.type if self.image else ''})"
        if self.image is None:
            return f"/{self.path}: only in the rebuild ({self.rebuilt.type})"
        return f"/{self.path}: " + "; ".join(
            f"{aspect} {self.image.shown(aspect)} in the image, {self.rebuilt.shown(aspect)} rebuilt"
            for aspect in self.aspects())


def path_of(name: str) -> str:
    """``./etc/x``, ``etc/x/`` and ``etc/x`` are one path; the root is ``""``."""
    name = name.removeprefix("./").strip("/")
    return "" if name == "." else name


def members(stream: IO[bytes]) -> dict[str, Member]:
    """Every path of the uncompressed tar STREAM, in the order the tar holds them (a later entry for
    the same path replaces an earlier one, as unpacking it would)."""
    found: dict[str, Member] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            found[path_of(info.name)] = _member(tar, info)
    return found


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Member:
    content = ""
    if info.isreg():
        handle = tar.extractfile(info)
        assert handle is not None
        content = hashlib.file_digest(handle, "sha256").hexdigest()  # type: ignore[arg-type]
    xattrs = tuple(sorted((k.removeprefix(XATTR_PREFIX), v) for k, v in info.pax_headers.items()
                          if k.startswith(XATTR_PREFIX)))
    device = f"{info.devmajor},{info.devminor}" if info.ischr() or info.isblk() else ""
    return Member(type=_KINDS.get(info.type, f"type {info.type.decode(errors='replace')}"),
                  mode=info.mode, owner=f"{info.uid}:{info.gid}", size=info.size if info.isreg() else 0,
                  content=content, target=path_of(info.linkname) if info.islnk() else info.linkname,
                  device=device, mtime=int(info.mtime), xattrs=xattrs)


def tree_order(path: str) -> tuple[bytes, ...]:
    """The order ocistrap writes a tree in (depth first, names sorted by their bytes), as a sort key."""
    return tuple(path.encode("utf-8", "surrogateescape").split(b"/")) if path else ()


def differences(image: Mapping[str, Member], rebuilt: Mapping[str, Member]) -> list[PathDifference]:
    """The paths whose members differ or that one side lacks, in tree order."""
    paths = sorted({p for p, m in image.items() if rebuilt.get(p) != m} | (rebuilt.keys() - image.keys()),
                   key=tree_order)
    return [PathDifference(p, image.get(p), rebuilt.get(p)) for p in paths]


def order_difference(image: Mapping[str, Member], rebuilt: Mapping[str, Member]) -> str | None:
    """Where two layers with the same members store them in another order, if they do."""
    for number, (a, b) in enumerate(zip(image, rebuilt)):
        if a != b:
            return f"the same entries in another order: entry {number} is /{a} in the image, /{b} rebuilt"
    return None
