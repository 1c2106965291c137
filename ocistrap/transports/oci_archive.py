"""``oci-archive:FILE[:TAG]``: an OCI image layout in one uncompressed tar, as skopeo reads it.

The archive is built from a private layout beside FILE and renamed into place
when complete. Its members carry no owner or time, so the same image gives
the same archive bytes.

``podman load`` names an image after its ``org.opencontainers.image.ref.name``
(``TAG``: ``localhost/debian:bookworm`` as given, a bare ``bookworm`` as
``localhost/bookworm:latest``) and leaves one without it unnamed, so an
archive written without TAG is named after its file: ``debian.tar`` holds
``debian``, which podman loads as ``localhost/debian:latest``.
"""

import re
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ocistrap.oci import ocilayout
from ocistrap.oci.image import Descriptor
from ocistrap.oci.ocilayout import Referrer, replacing
from ocistrap.transports import (
    Context,
    Reference,
    TransportError,
    extract_archive,
    oci,
    parse_layout,
    plain_tarinfo,
    show_layout,
)

_NOT_IN_A_NAME = re.compile(r"[^a-z0-9._-]+")


def default_name(dest_file: Path) -> str:
    """The ref.name of an archive written without a tag: its file name without ``.tar``, as an
    image name (lowercase letters, digits, ``.``, ``_``, ``-``), or ``image``."""
    stem = dest_file.name.lower().removesuffix(".tar")
    return _NOT_IN_A_NAME.sub("-", stem).strip("._-") or "image"


def write(layout_src: Path, desc: Descriptor, dest_file: Path, tag: str | None = None) -> None:
    """Write the image DESC of LAYOUT_SRC as the archive DEST_FILE, replacing any old one."""
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest_file.name}.", dir=dest_file.parent) as work:
        layout = Path(work) / "layout"
        ocilayout.write(layout_src, desc, layout, tag or default_name(dest_file))
        with replacing(dest_file) as temp:
            tar_layout(layout, temp)


def tar_layout(layout: Path, dest: Path) -> None:
    """Write the layout directory LAYOUT as a reproducible tar at DEST."""
    paths = sorted(layout.rglob("*"))
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            tar.add(path, arcname=path.relative_to(layout).as_posix(), recursive=False, filter=plain_tarinfo)


@contextmanager
def read(archive: Path, tag: str | None = None) -> Iterator[tuple[Path, Descriptor]]:
    """Unpack ARCHIVE into a temporary layout and yield (layout, descriptor of TAG) while it exists."""
    with _unpacked(archive) as layout:
        yield ocilayout.read(layout, tag)


@contextmanager
def _unpacked(archive: Path) -> Iterator[Path]:
    if not archive.is_file():
        raise TransportError(f"{archive}: no such archive")
    with tempfile.TemporaryDirectory(prefix="ocistrap-oci-archive.") as work:
        extract_archive(archive, Path(work))
        yield Path(work)


# --- the transport -----------------------------------------------------------------------------


def parse(details: str, text: str) -> Reference:
    return parse_layout("oci-archive", details, text)


show = show_layout


check = oci.check


def write_image(layout: Path, desc: Descriptor, ref: Reference, ctx: Context) -> None:
    assert ref.path is not None
    write(layout, desc, ref.path, ref.tag)


@contextmanager
def open_image(ref: Reference, ctx: Context) -> Iterator[oci.LayoutStore]:
    assert ref.path is not None
    with _unpacked(ref.path) as layout:
        yield oci.LayoutStore(layout, ref.tag, str(ref.path))


def signature_place(ref: Reference) -> None:
    """An archive is written whole: no signature image is added to it afterwards."""
    return None


def attach(layout: Path, referrer: Referrer, ref: Reference, ctx: Context) -> bool:
    """An archive is written whole, once: it keeps no referrers."""
    return False
