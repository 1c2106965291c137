"""Places an image can be written to or read from: one protocol, one module per transport.

Every transport trades in the same currency: an OCI image layout directory
holding the blobs plus the descriptor of a manifest or index in it. ``TABLE``
maps each ``TRANSPORT:`` prefix users type (skopeo's syntax) to the module that
implements ``Transport`` for it; ``parse_reference``, ``check``, ``write``,
``attach`` and ``open_image`` are the one dispatch through it, so the build,
``verify`` and ``sbom`` never name a transport, and adding one is a new module
and a line in ``TABLE``. This module also holds the small file-system helpers
the transports share.
"""

import importlib
import re
import shutil
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import IO, NoReturn, Protocol, cast

from ocistrap import log as logging
from ocistrap.errors import BadReference, TransportError
from ocistrap.oci.image import Descriptor, is_ref_name
from ocistrap.oci.ocilayout import Referrer

TABLE: dict[str, str] = {
    "oci": "oci",
    "oci-archive": "oci_archive",
    "docker-archive": "docker_archive",
    "tar": "rootfs_tar",
    "containers-storage": "containers_storage",
    "docker": "docker",
}
TRANSPORTS = tuple(TABLE)
BARE_TRANSPORT = "docker"

_HOST_PORT_PATH = re.compile(r"[^/:]+:[0-9]+/")


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
        return lookup(self.transport).show(self)

    def image(self) -> str:
        """``NAME[:TAG][@DIGEST]``, as the stores that name images write it."""
        text = self.name or ""
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class Shape:
    """What a build will make, known before anything is fetched: how many platforms
    (architectures) and how many layers each image has."""

    platforms: int
    layers: int


@dataclass(frozen=True)
class SignaturePlace:
    """Where signatures of an image go: IDENTITY is the docker reference (``NAME:TAG``) their
    payload names, as a consumer pulls the image; the signature image tagged T is written to
    BASE with the tag PREFIX + T (a layout's tags are whole references, a registry's are not)."""

    identity: str
    base: Reference
    prefix: str = ""

    def reference(self, tag: str) -> Reference:
        return replace(self.base, tag=self.prefix + tag, digest=None)


@dataclass(frozen=True)
class Context:
    """The options every transport call gets. TLS_VERIFY: None verifies certificates
    except for loopback registries (see ``transports.registry``, which also finds the
    stored credentials); LOG is where a transport reports what it did."""

    tls_verify: bool | None = None
    log: logging.Log = field(default_factory=logging.get)


class SavedImage(Protocol):
    """An image stored without a manifest (``docker save``): its config and layer files."""

    config: Path
    layers: list[Path]
    repo_tags: list[str]

    def name(self, path: Path) -> str:
        """How messages name the member PATH of the store."""


class ImageStore(Protocol):
    """Images opened for reading: documents and blobs by descriptor, from a layout, an
    archive or a registry. Whatever is missing or unreadable raises TransportError."""

    @property
    def shown(self) -> str:
        """How messages name the store."""

    @property
    def layout(self) -> Path | None:
        """The OCI layout the images live in, when they do (``push`` copies from it)."""

    def roots(self) -> list[Descriptor]:
        """The images the reference names (tags as ``ref.name`` annotations)."""

    def read(self, desc: Descriptor, where: str) -> bytes:
        """The bytes stored for DESC (at most ``desc.size + 1`` of them), unchecked."""

    def open_blob(self, desc: Descriptor, where: str) -> AbstractContextManager[IO[bytes]]:
        """A stream of the bytes stored for DESC, unchecked."""

    def blob_name(self, desc: Descriptor) -> str:
        """How messages name the blob DESC in this store."""

    def referrers(self, subject: Descriptor, artifact_type: str) -> list[Descriptor] | None:
        """The artifact manifests of ARTIFACT_TYPE referring to SUBJECT; None where the
        store keeps no referrers."""

    def saved_images(self) -> Sequence[SavedImage]:
        """Images stored without a manifest (empty for OCI stores)."""

    def signatures(self, digest: str) -> Descriptor | None:
        """The signature image kept for the manifest DIGEST beside the image the reference names
        (cosign's ``sha256-<hex>.sig`` tag); None when there is none or the store keeps none."""


class Transport(Protocol):
    """What each transport module implements (module-level functions)."""

    def parse(self, details: str, text: str) -> Reference:
        """The reference TEXT, whose part after ``TRANSPORT:`` is DETAILS."""

    def show(self, ref: Reference) -> str:
        """REF as the user would type it."""

    def check(self, ref: Reference, shape: Shape) -> None:
        """Refuse, before anything is built, an image of SHAPE that REF cannot hold."""

    def write_image(self, layout: Path, desc: Descriptor, ref: Reference, ctx: Context) -> None:
        """Write the image DESC of LAYOUT to REF."""

    def open_image(self, ref: Reference, ctx: Context) -> AbstractContextManager[ImageStore]:
        """The images at REF, readable while the context lasts."""

    def attach(self, layout: Path, referrer: Referrer, ref: Reference, ctx: Context) -> bool:
        """Store REFERRER of LAYOUT at REF beside its image; False where REF keeps no referrers."""

    def signature_place(self, ref: Reference) -> "SignaturePlace | None":
        """Which identity signatures of the image at REF name and where they go; None where
        REF names no docker reference or keeps no signatures."""


def lookup(transport: str) -> Transport:
    """The module implementing TRANSPORT."""
    module = TABLE.get(transport)
    if module is None:
        raise BadReference(f"unknown transport {transport!r}", hint=_KNOWN)
    return cast(Transport, importlib.import_module(f"ocistrap.transports.{module}"))


_KNOWN = "use one of " + ", ".join(f"{t}:" for t in TRANSPORTS) + \
    " or a registry reference such as registry.example/debian:bookworm"


def parse_reference(text: str) -> Reference:
    """Parse an image reference such as ``oci:out:bookworm``, ``docker://host/x:tag`` or the bare
    registry reference ``host/x:tag`` (one grammar for every command and option).

    A bare reference must hold a ``/`` before any ``:`` (or ``HOST:PORT/``), so that a
    mistyped transport (``oic:out``) is refused instead of pushed to Docker Hub.
    """
    transport, sep, details = text.partition(":")
    if sep and transport in TABLE:
        return lookup(transport).parse(details, text)
    if "/" in transport or _HOST_PORT_PATH.match(text):
        return lookup(BARE_TRANSPORT).parse("//" + text, text)
    raise BadReference(f"{text!r} is not an image reference: unknown transport {transport!r}", hint=_KNOWN)


def require_path(path: str, text: str) -> Path:
    """The file or directory part of a file-based reference TEXT."""
    if not path:
        raise BadReference(f"{text!r}: the file or directory is missing after the transport")
    return Path(path)


def parse_layout(transport: str, details: str, text: str) -> Reference:
    """``DIR[:TAG]``: like skopeo, the path ends at the first colon; the tag is a ref.name."""
    path, _, tag = details.partition(":")
    if tag and not is_ref_name(tag):
        raise BadReference(
            f"{text!r}: {tag!r} is not a valid image-layout tag",
            hint="tags are letters/digits joined by one of - . _ : @ + / (a path cannot contain ':')",
        )
    return Reference(transport, path=require_path(path, text), tag=tag or None)


def show_layout(ref: Reference) -> str:
    return f"{ref.transport}:{ref.path}" + (f":{ref.tag}" if ref.tag else "")


def _wrapped(ref: Reference, action: str, call: Callable[[], None]) -> None:
    """Run CALL; an OSError (an unwritable path, a full disk) becomes one TransportError naming REF."""
    try:
        call()
    except OSError as exc:
        raise TransportError(f"cannot {action} {ref}: {exc.strerror or exc}") from exc


def check(refs: Sequence[Reference], shape: Shape) -> None:
    """Refuse, before anything is built, an image of SHAPE that one of REFS cannot hold."""
    for ref in refs:
        lookup(ref.transport).check(ref, shape)


def write(layout: Path, desc: Descriptor, ref: Reference, ctx: Context | None = None) -> None:
    """Write the image DESC of LAYOUT to REF with the transport REF names."""
    _wrapped(ref, "write", lambda: lookup(ref.transport).write_image(layout, desc, ref, ctx or Context()))


def attach(layout: Path, referrers: Sequence[Referrer], ref: Reference, ctx: Context | None = None) -> None:
    """Store REFERRERS of LAYOUT at REF, which already holds their images, where REF keeps referrers."""
    ctx = ctx or Context()
    transport = lookup(ref.transport)
    kept: list[bool] = []
    for referrer in referrers:
        _wrapped(ref, "attach to", lambda: kept.append(transport.attach(layout, referrer, ref, ctx)))
    if not all(kept):
        ctx.log.info(f"{ref}: keeps no referrers, so the SBOM is not attached there")


def signature_place(ref: Reference) -> SignaturePlace | None:
    """Where REF keeps signatures and which identity they name; None where it cannot keep them."""
    return lookup(ref.transport).signature_place(ref)


def write_signature(layout: Path, desc: Descriptor, place: SignaturePlace, tag: str,
                    ctx: Context | None = None) -> None:
    """Store the signature image DESC of LAYOUT at PLACE, under TAG (``sha256-<hex>.sig``)."""
    write(layout, desc, place.reference(tag), ctx)


@contextmanager
def open_image(ref: Reference, ctx: Context | None = None) -> Iterator[ImageStore]:
    """The images at REF, readable while in use."""
    with lookup(ref.transport).open_image(ref, ctx or Context()) as store:
        yield store


def not_readable(ref: Reference) -> NoReturn:
    """What ``open_image`` raises for transports that cannot be read back."""
    raise BadReference(f"cannot read images from {ref.transport}: here",
                       hint="give an oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or registry image")


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
