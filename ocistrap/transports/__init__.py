"""Places an image can be written to or read from, one module each.

Every transport trades in the same currency: an OCI image layout directory
holding the blobs plus the descriptor of a manifest or index in it. This module
parses the ``TRANSPORT:DETAILS`` references users type, following skopeo's
syntax, and holds the small file-system helpers the transports share.
"""

import importlib
import os
import re
import shutil
import secrets
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ocistrap.errors import OcistrapError, UsageError
from ocistrap.image import Descriptor, is_ref_name

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "tar", "docker", "containers-storage")
_WRITERS = {
    "oci": "oci",
    "oci-archive": "oci_archive",
    "docker-archive": "docker_archive",
    "docker": "registry",
    "containers-storage": "containers_storage",
}

_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_DOCKER_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")


class TransportError(OcistrapError):
    """An image cannot be read or written at a reference."""


class BadReference(UsageError, TransportError):
    """A reference the user typed is malformed or names a transport that cannot do what was asked."""


@dataclass(frozen=True)
class Reference:
    """A parsed ``TRANSPORT:DETAILS`` image reference.

    ``path`` is set for file-based transports; ``name``/``tag``/``digest`` name an
    image inside a store (docker-archive, docker, containers-storage) or, for
    ``oci``/``oci-archive``, ``tag`` is the layout's ``ref.name``.
    """

    transport: str
    path: Path | None = None
    name: str | None = None
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        if self.transport == "docker":
            return f"docker://{self._image()}"
        details = str(self.path) if self.path is not None else ""
        if self.transport in ("oci", "oci-archive"):
            return f"{self.transport}:{details}" + (f":{self.tag}" if self.tag else "")
        image = self._image()
        if self.transport == "containers-storage":
            return f"containers-storage:{image}"
        return f"{self.transport}:{details}" + (f":{image}" if image else "")

    def _image(self) -> str:
        text = self.name or ""
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference such as ``oci:out:bookworm`` or ``docker://host/x:tag``."""
    transport, sep, details = text.partition(":")
    if not sep or transport not in TRANSPORTS:
        raise BadReference(
            f"{text!r} is not an image reference: unknown transport {transport!r}",
            hint="use one of " + ", ".join(f"{t}:" for t in TRANSPORTS),
        )
    parser = {
        "oci": _parse_layout,
        "oci-archive": _parse_layout,
        "docker-archive": _parse_docker_archive,
        "tar": _parse_tar,
        "docker": _parse_docker,
        "containers-storage": _parse_storage,
    }[transport]
    return parser(transport, details, text)


def _require_path(path: str, text: str) -> Path:
    if not path:
        raise BadReference(f"{text!r}: the file or directory is missing after the transport")
    return Path(path)


def _parse_layout(transport: str, details: str, text: str) -> Reference:
    """``DIR[:TAG]``: like skopeo, the path ends at the first colon; the tag is a ref.name."""
    path, _, tag = details.partition(":")
    if tag and not is_ref_name(tag):
        raise BadReference(
            f"{text!r}: {tag!r} is not a valid image-layout tag",
            hint="tags are letters/digits joined by one of - . _ : @ + / (a path cannot contain ':')",
        )
    return Reference(transport, path=_require_path(path, text), tag=tag or None)


def _parse_docker_archive(transport: str, details: str, text: str) -> Reference:
    """``FILE[:REPO[:TAG]]``: the path ends at the first colon; a bare REPO gets tag ``latest``."""
    path, _, image = details.partition(":")
    file = _require_path(path, text)
    if not image:
        return Reference(transport, path=file)
    name, tag, digest = split_docker_reference(image, text)
    if digest:
        raise BadReference(f"{text!r}: a docker-archive reference takes a tag, not a digest")
    return Reference(transport, path=file, name=name, tag=tag or "latest")


def _parse_tar(transport: str, details: str, text: str) -> Reference:
    return Reference(transport, path=_require_path(details, text))


def _parse_docker(transport: str, details: str, text: str) -> Reference:
    if not details.startswith("//") or len(details) == 2:
        raise BadReference(f"{text!r}: expected docker://[HOST[:PORT]/]NAME[:TAG][@DIGEST]")
    name, tag, digest = split_docker_reference(details[2:], text)
    return Reference(transport, name=name, tag=tag or (None if digest else "latest"), digest=digest)


def _parse_storage(transport: str, details: str, text: str) -> Reference:
    if not details:
        return Reference(transport)
    if details.startswith("["):
        raise BadReference(f"{text!r}: containers-storage store specifications are not supported")
    name, tag, digest = split_docker_reference(details, text)
    return Reference(transport, name=name, tag=tag, digest=digest)


def split_docker_reference(image: str, text: str | None = None) -> tuple[str, str | None, str | None]:
    """Split ``[HOST[:PORT]/]NAME[:TAG][@DIGEST]`` into (name, tag, digest), checking the grammar."""
    match = _DOCKER_REFERENCE.fullmatch(image)
    if match is None or len(match.group("name")) > 255:
        raise BadReference(
            f"{text or image!r}: {image!r} is not a valid image name",
            hint="names are lowercase [HOST[:PORT]/]PATH, with an optional :TAG and @DIGEST",
        )
    return match.group("name"), match.group("tag"), match.group("digest")


def write(layout: Path, desc: Descriptor, ref: Reference) -> None:
    """Write the image DESC of LAYOUT to REF with the transport REF names."""
    module = _WRITERS.get(ref.transport)
    if module is None:
        raise BadReference(
            f"cannot write images to {ref.transport}: in this version",
            hint="writable: " + ", ".join(f"{t}:" for t in _WRITERS),
        )
    try:
        importlib.import_module(f"ocistrap.transports.{module}").write_reference(layout, desc, ref)
    except OSError as exc:
        raise TransportError(f"cannot write {ref}: {exc.strerror or exc}") from exc


@contextmanager
def open_image(ref: Reference) -> Iterator[tuple[Path, Descriptor]]:
    """An image stored locally (``oci:`` or ``oci-archive:``) as (layout, descriptor) while in use."""
    if ref.transport == "oci":
        from ocistrap.transports import oci

        yield oci.read(Path(ref.path), ref.tag)
    elif ref.transport == "oci-archive":
        from ocistrap.transports import oci_archive

        with oci_archive.read(Path(ref.path), ref.tag) as found:
            yield found
    else:
        raise BadReference(f"cannot read images from {ref.transport}: here",
                           hint="give an oci:DIR[:TAG] or oci-archive:FILE[:TAG] image")


@contextmanager
def replacing(final: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside FINAL; on success rename it over FINAL, else remove it.

    Readers therefore see either the old FINAL or the complete new one, never a part.
    The temporary file is created with the umask's permissions, like any new file.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.parent / f".{final.name}.{secrets.token_hex(8)}.tmp"
    if directory:
        temp.mkdir(0o777)
    else:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
    try:
        yield temp
        if not directory:
            _fsync(temp)
        os.replace(temp, final)
    except BaseException:
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace PATH by a file holding DATA, atomically."""
    with replacing(path) as temp:
        temp.write_bytes(data)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def plain_tarinfo(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Strip owner, time and odd modes from an archive member so archives are reproducible."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.mode = 0o755 if info.isdir() else 0o644
    return info


EXPANSION_LIMIT = 20
"""How many times its own size an archive may unpack to (a compressed one; a plain tar cannot grow)..."""
EXPANSION_FLOOR = 256 << 20
"""...or this many bytes, whichever is more (a small archive of text compresses well)."""


def extract_archive(archive: Path, dest: Path) -> None:
    """Unpack the regular files and directories of tar ARCHIVE into DEST.

    Archives come from elsewhere: members that are absolute, escape DEST through
    ``..`` or are devices are refused; links (docker's legacy ``layer.tar``
    symlinks) are skipped, so nothing read later can lead outside DEST. The
    members may add up to EXPANSION_LIMIT times the archive's size (at least
    EXPANSION_FLOOR), so a small compressed or sparse archive cannot fill the disk.
    """
    budget = max(archive.stat().st_size * EXPANSION_LIMIT, EXPANSION_FLOOR)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                budget -= member.size if member.isfile() else 0
                if budget < 0:
                    raise TransportError(f"{archive}: unpacks to more than {EXPANSION_LIMIT} times its size "
                                         f"(at member {member.name!r}); refused as an archive bomb")
                _extract_member(tar, member, archive, dest)
    except (tarfile.TarError, EOFError) as exc:
        raise TransportError(f"{archive}: not a readable tar archive: {exc}") from None


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path, dest: Path) -> None:
    relative = PurePosixPath(member.name)
    if relative.is_absolute() or ".." in relative.parts:
        raise TransportError(f"{archive}: member {member.name!r} points outside the archive")
    target = dest.joinpath(*[p for p in relative.parts if p != "."])
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    if member.issym() or member.islnk():
        return
    if not member.isfile():
        raise TransportError(
            f"{archive}: member {member.name!r} is a device or fifo",
            hint="image archives hold only blobs and JSON files",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None
    with source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
