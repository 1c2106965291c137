"""Pushing an image from a layout: blobs once (mounted across repositories when possible), then manifests."""

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ocistrap import http, log
from ocistrap.errors import TransportError
from ocistrap.oci import ocilayout
from ocistrap.oci.image import INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES, Descriptor, canonical_json
from ocistrap.oci.ocilayout import atomic_write_bytes
from ocistrap.transports import Reference
from ocistrap.transports.registry.api import Repository, open_repository

_RECORD_LIMIT = 5000


# --- remembering where blobs went, for cross-repository mounts ---------------------------------


class MountRecord:
    """A small local record of which repository of each registry we pushed each blob to."""

    def __init__(self, path: Path | None = None) -> None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        self.path = path or cache / "ocistrap" / "pushed-blobs.json"

    def load(self) -> dict[str, dict[str, str]]:
        try:
            doc = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def source(self, registry: str, digest: str, repository: str) -> str | None:
        """Another repository of REGISTRY we pushed DIGEST to, if any."""
        found = self.load().get(registry, {}).get(digest)
        return found if isinstance(found, str) and found != repository else None

    def add(self, registry: str, repository: str, digests: list[str]) -> None:
        """Note that REPOSITORY of REGISTRY now has DIGESTS (best effort; a lost entry only costs a mount)."""
        doc = self.load()
        blobs = doc.setdefault(registry, {})
        for digest in digests:
            blobs.pop(digest, None)
            blobs[digest] = repository
        doc[registry] = dict(list(blobs.items())[-_RECORD_LIMIT:])
        try:
            atomic_write_bytes(self.path, canonical_json(doc))
        except OSError as exc:
            log.get().detail(f"{self.path}: cannot record pushed blobs: {exc.strerror}")


# --- pushing ---------------------------------------------------------------------------------


@dataclass
class PushStats:
    """What a push did, blob by blob."""

    uploaded: int = 0
    uploaded_bytes: int = 0
    present: int = 0
    mounted: int = 0
    manifests: int = 0

    def summary(self) -> str:
        return (
            f"{self.uploaded} blob(s) uploaded ({self.uploaded_bytes} bytes), {self.present} already there, "
            f"{self.mounted} mounted, {self.manifests} manifest(s) stored"
        )


def _is_manifest(desc: Descriptor) -> bool:
    return desc.media_type in MANIFEST_MEDIA_TYPES or desc.media_type in INDEX_MEDIA_TYPES


class _Pusher:
    """Pushes images of one layout into one repository: blobs first, manifests after, root last."""

    def __init__(self, repo: Repository, layout: Path, record: MountRecord) -> None:
        self.repo = repo
        self.layout = layout
        self.record = record
        self.stats = PushStats()

    def push(self, desc: Descriptor, reference: str) -> http.Response:
        """Push DESC and all below it; store the root manifest at REFERENCE and return the answer."""
        nodes = ocilayout.reachable(self.layout, desc)
        blobs = [n for n in nodes if not _is_manifest(n)]
        for blob in blobs:
            self.blob(blob)
        self.record.add(self.repo.registry.name, self.repo.name, [b.digest for b in blobs])
        for manifest in nodes[:-1]:
            if _is_manifest(manifest):
                self.manifest(manifest, manifest.digest)
        return self.manifest(desc, reference)

    def blob(self, desc: Descriptor) -> None:
        path = ocilayout.blob_path(self.layout, desc.digest)
        if not path.is_file() or path.stat().st_size != desc.size:
            raise TransportError(f"{path}: blob {desc.digest} ({desc.media_type}) is missing or has the wrong size")
        size = self.repo.blob_size(desc.digest)
        if size is not None:
            if size != desc.size:
                raise TransportError(
                    f"{self.repo.registry.name}/{self.repo.name}: blob {desc.digest} is {size} bytes there, "
                    f"{desc.size} here"
                )
            self.stats.present += 1
            return
        source = self.record.source(self.repo.registry.name, desc.digest, self.repo.name)
        if self.repo.upload_blob(path, desc, source):
            self.stats.mounted += 1
            log.get().detail(f"mounted {desc.digest} from {source}")
        else:
            self.stats.uploaded += 1
            self.stats.uploaded_bytes += desc.size
            log.get().detail(f"uploaded {desc.digest} ({desc.size} bytes)")

    def manifest(self, desc: Descriptor, reference: str) -> http.Response:
        data = _manifest_bytes(self.layout, desc)
        response = self.repo.put_manifest(reference, data, desc.media_type)
        answered = response.headers.get("Docker-Content-Digest")
        if answered is not None and answered != desc.digest:
            raise TransportError(
                f"{self.repo.registry.name}/{self.repo.name}: the registry answered digest {answered} "
                f"for manifest {desc.digest}"
            )
        self.stats.manifests += 1
        return response


def _manifest_bytes(layout: Path, desc: Descriptor) -> bytes:
    ocilayout.read_json(layout, desc)
    return ocilayout.blob_path(layout, desc.digest).read_bytes()


def _check_stored(repo: Repository, reference: str, desc: Descriptor) -> None:
    """Read REFERENCE back and make sure it is exactly the manifest we pushed."""
    found = repo.get_manifest(reference, accept=desc.media_type)
    if found is None:
        raise TransportError(f"{repo.registry.name}/{repo.name}: {reference} is missing right after it was pushed")
    digest = "sha256:" + hashlib.sha256(found[0]).hexdigest()
    if digest != desc.digest:
        raise TransportError(
            f"{repo.registry.name}/{repo.name}:{reference} reads back as {digest}, not the pushed {desc.digest}",
            hint="another push to the same tag may have raced this one",
        )


def push(layout: Path, desc: Descriptor, ref: Reference, *, tls_verify: bool | None = None) -> str:
    """Push the image (manifest or index) DESC of LAYOUT to the ``docker://`` REF; return its digest.

    REF's tag receives the image once every blob and child manifest is in
    place; a REF with only a digest must name DESC's digest. Stored
    credentials are used (see ``ocistrap.transports.registry.auth``).
    """
    repo, target = open_repository(ref, tls_verify=tls_verify)
    if target.digest is not None and target.digest != desc.digest:
        raise TransportError(f"{ref}: names digest {target.digest}, but the image is {desc.digest}")
    reference = target.tag or desc.digest
    pusher = _Pusher(repo, layout, MountRecord())
    pusher.push(desc, reference)
    _check_stored(repo, reference, desc)
    log.get().info(f"pushed {desc.digest} to {target}: {pusher.stats.summary()}")
    return desc.digest


def copy_blob(source: Repository, dest: Repository, desc: Descriptor) -> str:
    """Make blob DESC of SOURCE present in DEST; say how: ``present``, ``mounted`` or ``copied``.

    Within one registry the blob is mounted; across registries (or where a
    mount is refused) it streams from one to the other without touching disk.
    """
    size = dest.blob_size(desc.digest)
    if size is not None:
        if size != desc.size:
            raise TransportError(f"{dest.registry.name}/{dest.name}: blob {desc.digest} is {size} bytes there, "
                                f"{desc.size} in {source.registry.name}/{source.name}")
        return "present"
    same_registry = source.registry.name == dest.registry.name
    if dest.upload_stream(lambda: source.stream_blob(desc), desc, source.name if same_registry else None):
        return "mounted"
    return "copied"


def store_manifest(repo: Repository, reference: str, data: bytes, media_type: str) -> Descriptor:
    """Store manifest or index DATA at REFERENCE (tag or digest) of REPO and read it back."""
    desc = Descriptor.of(data, media_type)
    answered = repo.put_manifest(reference, data, media_type).headers.get("Docker-Content-Digest")
    if answered is not None and answered != desc.digest:
        raise TransportError(f"{repo.registry.name}/{repo.name}: the registry answered digest {answered} "
                            f"for manifest {desc.digest}")
    _check_stored(repo, reference, desc)
    return desc
