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

from ocistrap.errors import BadReference
from ocistrap.oci.image import (
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    split_docker_reference,
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
    tags,
    write,
)
from ocistrap.oci.signature import signature_tag
from ocistrap.transports import (
    Context,
    Reference,
    Shape,
    SignaturePlace,
    TransportError,
    parse_layout,
    show_layout,
)

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
        atomic_write_bytes(ref.path / _layer_file(ref.tag, referrer.file_name), content)
    return True


def signature_place(ref: Reference) -> SignaturePlace | None:
    """A layout tag that is a whole ``NAME:TAG`` reference names the identity; the signature image
    is tagged ``NAME:sha256-<hex>.sig`` beside it."""
    name = _signed_name(ref.tag)
    return None if name is None or ref.tag is None else SignaturePlace(ref.tag, ref, prefix=f"{name}:")


def _signed_name(tag: str | None) -> str | None:
    """NAME of a layout tag that is a ``NAME:TAG`` docker reference, else None."""
    try:
        name, tagged, digest = split_docker_reference(tag or "")
    except BadReference:
        return None
    return name if tagged is not None and digest is None else None


def _layer_file(tag: str | None, file_name: str) -> str:
    """The plain file beside a layout's image for a referrer's layer; a tag may hold '/'."""
    return f"{(tag or 'image').replace('/', '_')}.{file_name}"


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

    def signatures(self, digest: str) -> Descriptor | None:
        name = _signed_name(self.tag)
        return None if name is None else tags(self.root).get(f"{name}:{signature_tag(digest)}")

    def _path(self, desc: Descriptor, where: str) -> Path:
        path = blob_path(self.root, desc.digest)
        if not path.is_file():
            raise TransportError(f"{self.blob_name(desc)} ({where}): blob is missing")
        return path
