"""``docker-archive:FILE[:REPO:TAG]``: the ``docker save`` format, for ``docker load``/``podman load``.

The archive holds ``manifest.json`` (Config, RepoTags, Layers), the image
config named by its digest, and one file per layer. Layers are stored as the
compressed blobs of the layout: both loaders detect the compression
themselves, and the config's diff_ids still name the uncompressed tars.
"""

import io
import json
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ocistrap.oci import ocilayout
from ocistrap.oci.image import (
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    LAYER_COMPRESSION,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    canonical_json,
    split_docker_reference,
)
from ocistrap.oci.ocilayout import Referrer, replacing
from ocistrap.transports import (
    BadReference,
    Context,
    Reference,
    Shape,
    TransportError,
    extract_archive,
    plain_tarinfo,
    require_path,
)

MANIFEST_FILE = "manifest.json"
_SUFFIX = {None: ".tar", "gzip": ".tar.gz", "zstd": ".tar.zst"}


@dataclass(frozen=True)
class DockerImage:
    """One entry of an unpacked archive's manifest.json, with paths resolved."""

    config: Path
    layers: list[Path]
    repo_tags: list[str]
    root: Path
    archive: Path

    def name(self, path: Path) -> str:
        """``ARCHIVE:MEMBER``, how messages name a file of the unpacked archive."""
        return f"{self.archive}:{path.relative_to(self.root).as_posix()}"


@dataclass(frozen=True)
class DockerArchive:
    """An unpacked docker-archive: its directory and the images manifest.json lists."""

    root: Path
    images: list[DockerImage]


def write(layout_src: Path, desc: Descriptor, dest_file: Path, repo_tags: Sequence[str] = ()) -> None:
    """Write the single-platform image DESC of LAYOUT_SRC as a docker-archive at DEST_FILE."""
    manifest_desc = _single_manifest(layout_src, desc)
    manifest = ocilayout.read_json(layout_src, manifest_desc)
    config = Descriptor.from_json(manifest["config"])
    layers = [Descriptor.from_json(d) for d in manifest["layers"]]
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise TransportError(f"image {manifest_desc.digest}: config type {config.media_type} is not an image config")
    members = {f"{config.hex}.json": config}
    for layer in layers:
        if layer.media_type not in LAYER_COMPRESSION:
            raise TransportError(f"layer {layer.digest}: media type {layer.media_type} cannot be loaded by docker")
        members[layer.hex + _SUFFIX[LAYER_COMPRESSION[layer.media_type]]] = layer
    entry = {"Config": f"{config.hex}.json", "RepoTags": list(repo_tags), "Layers": list(members)[1:]}
    with replacing(dest_file) as temp, tarfile.open(temp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, blob in members.items():
            path = ocilayout.blob_path(layout_src, blob.digest)
            ocilayout.check_blob(path, blob)
            tar.add(path, arcname=name, recursive=False, filter=plain_tarinfo)
        _add_bytes(tar, MANIFEST_FILE, canonical_json([entry]))


def _single_manifest(layout: Path, desc: Descriptor) -> Descriptor:
    if desc.media_type in MANIFEST_MEDIA_TYPES:
        return desc
    if desc.media_type in INDEX_MEDIA_TYPES:
        manifests = ocilayout.children(layout, desc)
        if len(manifests) == 1:
            return _single_manifest(layout, manifests[0])
        platforms = ", ".join(str(m.platform) for m in manifests)
        raise TransportError(
            f"a docker-archive holds one platform, image {desc.digest} has {len(manifests)}: {platforms}",
            hint="build or copy a single platform",
        )
    raise TransportError(f"{desc.digest}: {desc.media_type} is not an image manifest or index")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = plain_tarinfo(tarfile.TarInfo(name))
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@contextmanager
def read(archive: Path) -> Iterator[DockerArchive]:
    """Unpack ARCHIVE into a temporary directory and yield its images while it exists."""
    if not archive.is_file():
        raise TransportError(f"{archive}: no such archive")
    with tempfile.TemporaryDirectory(prefix="ocistrap-docker-archive.") as work:
        root = Path(work)
        extract_archive(archive, root)
        yield DockerArchive(root, _images(root, archive))


def _images(root: Path, archive: Path) -> list[DockerImage]:
    path = root / MANIFEST_FILE
    try:
        entries = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise TransportError(f"{archive}: no {MANIFEST_FILE}; not a docker-archive") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransportError(f"{archive}: {MANIFEST_FILE} is not valid JSON: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise TransportError(f"{archive}: {MANIFEST_FILE} must be a non-empty list of images")
    return [_image(root, archive, i, entry) for i, entry in enumerate(entries)]


def _image(root: Path, archive: Path, number: int, entry: Any) -> DockerImage:
    where = f"{archive}: {MANIFEST_FILE} image {number}"
    if not isinstance(entry, dict):
        raise TransportError(f"{where} is not an object")
    config, layers, tags = entry.get("Config"), entry.get("Layers"), entry.get("RepoTags") or []
    if not isinstance(config, str) or not isinstance(layers, list) or not isinstance(tags, list):
        raise TransportError(f"{where} needs Config (string), Layers (list) and RepoTags (list or null)")
    return DockerImage(
        config=_member(root, where, config),
        layers=[_member(root, where, layer) for layer in layers],
        repo_tags=[str(t) for t in tags],
        root=root,
        archive=archive,
    )


def _member(root: Path, where: str, name: Any) -> Path:
    relative = PurePosixPath(str(name))
    if not isinstance(name, str) or relative.is_absolute() or ".." in relative.parts:
        raise TransportError(f"{where}: {name!r} is not a path inside the archive")
    path = root.joinpath(*relative.parts)
    if not path.is_file():
        raise TransportError(f"{where}: {name} is missing from the archive")
    return path


# --- the transport -----------------------------------------------------------------------------


def parse(details: str, text: str) -> Reference:
    """``FILE[:REPO[:TAG]]``: the path ends at the first colon; a bare REPO gets tag ``latest``."""
    path, _, image = details.partition(":")
    file = require_path(path, text)
    if not image:
        return Reference("docker-archive", path=file)
    name, tag, digest = split_docker_reference(image, text)
    if digest:
        raise BadReference(f"{text!r}: a docker-archive reference takes a tag, not a digest")
    return Reference("docker-archive", path=file, name=name, tag=tag or "latest")


def show(ref: Reference) -> str:
    return f"docker-archive:{ref.path}" + (f":{ref.image()}" if ref.name else "")


def check(ref: Reference, shape: Shape) -> None:
    if shape.platforms != 1:
        raise BadReference(f"{ref}: a docker-archive holds one platform, this build makes {shape.platforms}",
                           hint="build one architecture per docker-archive, or write oci: or oci-archive:")


def write_image(layout: Path, desc: Descriptor, ref: Reference, ctx: Context) -> None:
    assert ref.path is not None
    write(layout, desc, ref.path, [ref.image()] if ref.name else [])


@contextmanager
def open_image(ref: Reference, ctx: Context) -> Iterator["SavedStore"]:
    assert ref.path is not None
    with read(ref.path) as archive:
        yield SavedStore(archive, str(ref.path))


def signature_place(ref: Reference) -> None:
    """Docker save's format has no place for signatures."""
    return None


def attach(layout: Path, referrer: Referrer, ref: Reference, ctx: Context) -> bool:
    """``docker save`` archives have no manifests, so nothing can refer to one."""
    return False


@dataclass(frozen=True)
class SavedStore:
    """An unpacked docker-archive as an image store: images without manifests, no referrers."""

    archive: DockerArchive
    shown: str
    layout: None = None

    def roots(self) -> list[Descriptor]:
        return []

    def read(self, desc: Descriptor, where: str) -> bytes:
        raise TransportError(f"{self.shown}: a docker-archive holds no {desc.media_type} documents")

    def open_blob(self, desc: Descriptor, where: str) -> IO[bytes]:
        raise TransportError(f"{self.shown}: a docker-archive holds no blobs by digest")

    def blob_name(self, desc: Descriptor) -> str:
        return f"{self.shown}@{desc.digest}"

    def referrers(self, subject: Descriptor, artifact_type: str) -> None:
        return None

    def saved_images(self) -> list[DockerImage]:
        return self.archive.images

    def signatures(self, digest: str) -> None:
        return None
