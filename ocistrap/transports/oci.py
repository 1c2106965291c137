"""The ``oci:DIR[:TAG]`` transport: an image layout (``ocistrap.oci.ocilayout``) as the destination.

A write that fails leaves the layout as it was: the blobs it added go, and so
does a layout it created; whether it created it is decided under the layout's
lock, so a writer that failed never removes the image of one that finished first.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ocistrap.oci.image import (
    MANIFEST_MEDIA_TYPES,
    Descriptor,
)
from ocistrap.oci.ocilayout import (
    LAYOUT_FILE,
    Referrer,
    _parse_json,
    atomic_write_bytes,
    blob_path,
    check_layout,
    children,
    load_index,
    read,
    read_json,
    write,
)
from ocistrap.transports import Context, Reference, Shape, TransportError, parse_layout, show_layout

# --- the transport (``oci:DIR[:TAG]``) ----------------------------------------------------------


def parse(details: str, text: str) -> Reference:
    return parse_layout("oci", details, text)


show = show_layout


def check(ref: Reference, shape: Shape) -> None:
    """A layout holds any image."""


def write_image(layout: Path, desc: Descriptor, ref: Reference, ctx: Context) -> None:
    assert ref.path is not None
    write(layout, desc, ref.path, ref.tag)


@contextmanager
def open_image(ref: Reference, ctx: Context) -> Iterator["LayoutStore"]:
    assert ref.path is not None
    yield LayoutStore(ref.path, ref.tag, str(ref.path))


def attach(layout: Path, referrer: Referrer, ref: Reference, ctx: Context) -> bool:
    """An untagged entry of ``index.json``, and its one layer as the plain file ``TAG.FILE_NAME``."""
    assert ref.path is not None
    write(layout, referrer.manifest, ref.path)
    layers = children(layout, referrer.manifest)[1:]
    if len(layers) == 1:
        content = blob_path(layout, layers[0].digest).read_bytes()
        atomic_write_bytes(ref.path / f"{ref.tag or 'image'}.{referrer.file_name}", content)
    return True


@dataclass(frozen=True)
class LayoutStore:
    """The images of a layout ROOT (TAG's, or all of index.json), read for ``verify`` and ``sbom``;
    messages name it SHOWN (an archive names the file it came from)."""

    root: Path
    tag: str | None
    shown: str

    @property
    def layout(self) -> Path:
        return self.root

    def roots(self) -> list[Descriptor]:
        check_layout(self.root)
        version = _parse_json((self.root / LAYOUT_FILE).read_bytes(), self.root / LAYOUT_FILE)
        if not isinstance(version, dict) or not isinstance(version.get("imageLayoutVersion"), str):
            raise TransportError(f"{self.shown}/{LAYOUT_FILE}: needs a JSON object with imageLayoutVersion")
        if self.tag is not None:
            return [read(self.root, self.tag)[1]]
        return [Descriptor.from_json(d) for d in load_index(self.root)["manifests"]]

    def read(self, desc: Descriptor, where: str) -> bytes:
        return self._path(desc, where).read_bytes()

    def open_blob(self, desc: Descriptor, where: str) -> IO[bytes]:
        return open(self._path(desc, where), "rb")

    def blob_name(self, desc: Descriptor) -> str:
        return f"{self.shown}/{blob_path(self.root, desc.digest).relative_to(self.root).as_posix()}"

    def referrers(self, subject: Descriptor, artifact_type: str) -> list[Descriptor]:
        found = []
        for entry in (Descriptor.from_json(d) for d in load_index(self.root)["manifests"]):
            if entry.media_type in MANIFEST_MEDIA_TYPES:
                doc = read_json(self.root, entry)
                if (doc.get("subject") or {}).get("digest") == subject.digest and \
                        doc.get("artifactType") == artifact_type:
                    found.append(entry)
        return found

    def saved_images(self) -> list[Any]:
        return []

    def _path(self, desc: Descriptor, where: str) -> Path:
        path = blob_path(self.root, desc.digest)
        if not path.is_file():
            raise TransportError(f"{self.blob_name(desc)} ({where}): blob is missing")
        return path
