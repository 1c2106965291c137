"""OCI image layouts on disk: blobs by digest, ``index.json`` and its tags.

A layout is ``oci-layout``, ``index.json`` and ``blobs/sha256/<hex>``. Blobs
appear under their final name only once complete; blobs are added and
``index.json`` replaced atomically under an exclusive lock, so several builds
may tag into one layout at the same time. The lock is an flock on the layout
directory itself, so no lock file joins the layout. Every build assembles its
image in a layout of its own; the transports copy from there.
"""

import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocistrap.errors import TransportError
from ocistrap.oci.image import (
    ANNOTATION_REF_NAME,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageError,
    canonical_json,
    make_index,
    parse_digest,
)
from ocistrap.schema import validate

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LAYOUT_VERSION = "1.0.0"


def blob_path(root: Path, digest: str) -> Path:
    """Where the blob DIGEST lives in the layout ROOT."""
    return root / "blobs" / "sha256" / parse_digest(digest)


def init_layout(root: Path) -> None:
    """Make ROOT an (empty, if new) OCI image layout; leave an existing one untouched."""
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    if not (root / LAYOUT_FILE).exists():
        atomic_write_bytes(root / LAYOUT_FILE, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
    if not (root / INDEX_FILE).exists():
        atomic_write_bytes(root / INDEX_FILE, canonical_json(make_index([])))


def put_bytes(root: Path, data: bytes) -> str:
    """Store DATA as a blob of ROOT (once) and return its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    target = blob_path(root, digest)
    if not target.exists():
        atomic_write_bytes(target, data)
    return digest


def put_json(root: Path, doc: Any, media_type: str, **extra: Any) -> Descriptor:
    """Store DOC canonically serialised as a blob of ROOT; return its descriptor."""
    data = canonical_json(doc)
    put_bytes(root, data)
    return Descriptor.of(data, media_type, **extra)


MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"


def put_artifact(root: Path, artifact_type: str, layers: list[Descriptor], annotations: dict[str, str], *,
                 subject: Descriptor | None = None) -> Descriptor:
    """Store an artifact manifest (empty config) over LAYERS, already in ROOT; return its descriptor."""
    put_bytes(root, EMPTY_JSON)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": artifact_type,
        "config": Descriptor.of(EMPTY_JSON, MEDIA_TYPE_EMPTY).to_json(),
        "layers": [layer.to_json() for layer in layers],
        "annotations": annotations,
    }
    if subject is not None:
        manifest["subject"] = Descriptor(subject.media_type, subject.digest, subject.size).to_json()
    return put_json(root, manifest, MEDIA_TYPE_MANIFEST)


def read_json(root: Path, desc: Descriptor) -> dict[str, Any]:
    """Load the JSON blob DESC from ROOT after checking its size and digest."""
    path = blob_path(root, desc.digest)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TransportError(f"{path}: blob {desc.digest} ({desc.media_type}) is missing") from None
    if len(data) != desc.size or "sha256:" + hashlib.sha256(data).hexdigest() != desc.digest:
        raise TransportError(f"{path}: content does not match {desc.digest} (size {desc.size})")
    return _parse_json(data, path)


def _parse_json(data: bytes, path: Path) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TransportError(f"{path}: not valid JSON: {exc}") from None


def children(root: Path, desc: Descriptor) -> list[Descriptor]:
    """The descriptors a manifest or index DESC refers to (none for other blobs)."""
    if desc.media_type in INDEX_MEDIA_TYPES:
        return _descriptors(read_json(root, desc).get("manifests"), desc)
    if desc.media_type in MANIFEST_MEDIA_TYPES:
        doc = read_json(root, desc)
        return _descriptors([doc.get("config"), *(doc.get("layers") or [])], desc)
    return []


def _descriptors(docs: Any, parent: Descriptor) -> list[Descriptor]:
    try:
        return [Descriptor.from_json(d) for d in docs]
    except (TypeError, ImageError) as exc:
        raise TransportError(f"{parent.media_type} {parent.digest}: bad descriptor list: {exc}") from None


def reachable(root: Path, desc: Descriptor) -> list[Descriptor]:
    """DESC and every blob below it, each once, children before the documents naming them."""
    seen: dict[str, Descriptor] = {}

    def visit(node: Descriptor) -> None:
        if node.digest in seen:
            return
        for child in children(root, node):
            visit(child)
        seen[node.digest] = node

    visit(desc)
    return list(seen.values())


def check_layout(root: Path) -> None:
    """Raise TransportError unless ROOT looks like an OCI image layout."""
    if not (root / LAYOUT_FILE).is_file():
        raise TransportError(
            f"{root} is not an OCI image layout (no {LAYOUT_FILE} file)",
            hint="write one with oci:DIR[:TAG] first",
        )


def load_index(root: Path) -> dict[str, Any]:
    """Return ROOT's ``index.json`` after checking it against the image-index schema."""
    check_layout(root)
    path = root / INDEX_FILE
    try:
        index = _parse_json(path.read_bytes(), path)
    except FileNotFoundError:
        raise TransportError(f"{root} is not an OCI image layout (no {INDEX_FILE})") from None
    validate(index, "oci-index", what=str(path))
    return index


def tags(root: Path) -> dict[str, Descriptor]:
    """The tagged entries of ROOT's index.json, by tag."""
    entries = [Descriptor.from_json(d) for d in load_index(root)["manifests"]]
    return {e.ref_name: e for e in entries if e.ref_name}


def read(root: Path, tag: str | None = None) -> tuple[Path, Descriptor]:
    """Resolve TAG in layout ROOT (or its only image when TAG is None)."""
    entries = [Descriptor.from_json(d) for d in load_index(root)["manifests"]]
    if tag is not None:
        matches = [e for e in entries if e.ref_name == tag]
    else:
        matches = entries
    if len(matches) == 1:
        return root, matches[0]
    known = sorted({e.ref_name for e in entries if e.ref_name})
    hint = "tags here: " + (", ".join(known) if known else "(none)")
    if tag is not None and not matches:
        raise TransportError(f"{root}: no image tagged {tag!r}", hint=hint)
    if tag is not None:
        raise TransportError(f"{root}: tag {tag!r} names {len(matches)} images", hint=hint)
    raise TransportError(
        f"{root} holds {len(entries)} images; name one as oci:{root}:TAG", hint=hint
    )


@contextmanager
def locked(root: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the layout directory ROOT (blocks until other writers finish) and
    say whether this call made the directory; one that a failed writer removed while this one
    waited is made again."""
    while True:
        try:
            root.mkdir(parents=True)
            made = True
        except FileExistsError:
            made = False
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            break
        os.close(fd)
    try:
        yield made
    finally:
        os.close(fd)


def write(layout_src: Path, desc: Descriptor, dest_dir: Path, tag: str | None = None) -> Descriptor:
    """Copy the image DESC of LAYOUT_SRC into the layout DEST_DIR and tag it.

    Only blobs reachable from DESC are copied (hard-linked when possible), each
    checked against its digest; blobs already present are kept. The stored
    index entry is returned. On failure DEST_DIR is left as it was.
    """
    blobs = reachable(layout_src, desc)
    with locked(dest_dir) as made:
        fresh = made and not (dest_dir / LAYOUT_FILE).exists()
        added: list[Path] = []
        try:
            (dest_dir / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
            for blob in blobs:
                if copy_blob(layout_src, dest_dir, blob):
                    added.append(blob_path(dest_dir, blob.digest))
            init_layout(dest_dir)
            return _add_to_index(dest_dir, desc, tag)
        except BaseException:
            if fresh:
                shutil.rmtree(dest_dir, ignore_errors=True)
            else:
                for path in added:
                    path.unlink(missing_ok=True)
            raise


def _add_to_index(root: Path, desc: Descriptor, tag: str | None) -> Descriptor:
    index = load_index(root)
    entries: list[dict[str, Any]] = index["manifests"]
    if tag is None:
        if any(e.get("digest") == desc.digest for e in entries):
            return desc
        entry = desc
    else:
        entry = desc.with_annotations({**desc.annotations, ANNOTATION_REF_NAME: tag})
        entries = [e for e in entries if (e.get("annotations") or {}).get(ANNOTATION_REF_NAME) != tag]
    index["manifests"] = [*entries, entry.to_json()]
    atomic_write_bytes(root / INDEX_FILE, canonical_json(index))
    return entry


def copy_blob(src_root: Path, dest_root: Path, desc: Descriptor) -> bool:
    """Put blob DESC of SRC_ROOT into DEST_ROOT, verified; keep it if already there (False)."""
    dest = blob_path(dest_root, desc.digest)
    if dest.exists() and dest.stat().st_size == desc.size:
        return False
    src = blob_path(src_root, desc.digest)
    if not src.is_file():
        raise TransportError(f"{src}: blob {desc.digest} ({desc.media_type}) is missing")
    with replacing(dest) as temp:
        temp.unlink()
        if not _try_link(src, temp):
            shutil.copyfile(src, temp)
        check_blob(temp, desc, shown=src)
    return True


def _try_link(src: Path, dest: Path) -> bool:
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            return False
        raise
    return True


def check_blob(path: Path, desc: Descriptor, *, shown: Path | None = None) -> None:
    """Raise TransportError unless the file PATH has DESC's size and digest."""
    shown = shown or path
    size = path.stat().st_size
    if size != desc.size:
        raise TransportError(f"{shown}: blob is {size} bytes, its descriptor says {desc.size}")
    with open(path, "rb") as handle:
        actual = "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()
    if actual != desc.digest:
        raise TransportError(f"{shown}: content hashes to {actual}, not {desc.digest}")


@dataclass(frozen=True)
class Referrer:
    """An artifact manifest in a build's layout that refers to one of its images (an SBOM
    today; signatures and attestations next). Stores of plain files may also keep its one
    layer beside the image as ``TAG.FILE_NAME``."""

    manifest: Descriptor
    file_name: str


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
