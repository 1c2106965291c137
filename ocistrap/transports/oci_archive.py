"""``oci-archive:FILE[:TAG]``: an OCI image layout in one uncompressed tar, as skopeo reads it.

The archive is built from a private layout beside FILE and renamed into place
when complete. Its members carry no owner or time, so the same image gives
the same archive bytes.
"""

import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ocistrap.image import Descriptor
from ocistrap.transports import Reference, extract_archive, oci, plain_tarinfo, replacing


def write(layout_src: Path, desc: Descriptor, dest_file: Path, tag: str | None = None) -> None:
    """Write the image DESC of LAYOUT_SRC as the archive DEST_FILE, replacing any old one."""
    dest_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest_file.name}.", dir=dest_file.parent) as work:
        layout = Path(work) / "layout"
        oci.write(layout_src, desc, layout, tag)
        with replacing(dest_file) as temp:
            tar_layout(layout, temp)


def write_reference(layout: Path, desc: Descriptor, ref: Reference) -> None:
    """Transport entry point for ``oci-archive:FILE[:TAG]``."""
    assert ref.path is not None
    write(layout, desc, ref.path, ref.tag)


def tar_layout(layout: Path, dest: Path) -> None:
    """Write the layout directory LAYOUT as a reproducible tar at DEST (no lock file)."""
    paths = sorted(p for p in layout.rglob("*") if p.name != oci.LOCK_FILE)
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in paths:
            tar.add(path, arcname=path.relative_to(layout).as_posix(), recursive=False, filter=plain_tarinfo)


@contextmanager
def read(archive: Path, tag: str | None = None) -> Iterator[tuple[Path, Descriptor]]:
    """Unpack ARCHIVE into a temporary layout and yield (layout, descriptor of TAG) while it exists."""
    with tempfile.TemporaryDirectory(prefix="ocistrap-oci-archive.") as work:
        extract_archive(archive, Path(work))
        yield oci.read(Path(work), tag)
