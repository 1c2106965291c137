"""Check an image end to end: every blob, every diff_id, every document against its schema.

Nothing is trusted: each blob is streamed once, hashing the stored bytes and,
for layers, the decompressed tar in the same pass, so a multi-gigabyte layer
never sits in memory. The first mismatch stops the run with one line naming
the blob and the check that failed.
"""

import hashlib
import io
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zstandard

from ocistrap import transports
from ocistrap.debian.lock import Lockfile
from ocistrap.errors import TransportError
from ocistrap.oci import provenance
from ocistrap.oci.assemble import ANNOTATION_LOCK, ANNOTATION_RELEASE
from ocistrap.oci.blobwriter import decompressed
from ocistrap.oci.image import (
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    LAYER_COMPRESSION,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    ImageError,
    Platform,
    debian_platform,
)
from ocistrap.oci.keys import PublicKey
from ocistrap.oci.provenance import MEDIA_TYPE_ENVELOPE
from ocistrap.oci.signature import ImageSignatureError, is_signature_image, verify_image
from ocistrap.schema import SchemaError, validate
from ocistrap.transports import BadReference, ImageStore, Reference, SavedImage, parse_reference

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageFacts:
    """What a checked manifest says about itself: its platform (from the config) and annotations."""

    digest: str
    platform: Platform
    annotations: dict[str, str]


@dataclass
class VerifyReport:
    """What a successful verification covered."""

    reference: str
    manifests: int = 0
    layers: int = 0
    blobs: int = 0
    bytes: int = 0
    tags: list[str] = field(default_factory=list)
    images: list[ImageFacts] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.reference}: OK, {self.manifests} image(s), {self.layers} layer(s), "
            f"{self.blobs} blob(s), {self.bytes} bytes checked"
        )


def verify(ref: str | Reference, ctx: transports.Context | None = None) -> VerifyReport:
    """Verify the image(s) at REF, any reference whose transport can be read back."""
    reference = parse_reference(ref) if isinstance(ref, str) else ref
    report = VerifyReport(str(reference))
    try:
        with transports.open_image(reference, ctx) as store:
            _Checker(store, report).run()
    except BadReference as exc:
        raise ImageError(exc.message, hint=exc.hint) from exc
    except (TransportError, ImageError, SchemaError) as exc:
        raise ImageError(str(exc)) from exc
    return report


class _Checker:
    """Walks the images of a store from its roots down, checking each blob once; blobs are
    streamed straight into the hashes."""

    def __init__(self, store: ImageStore, report: VerifyReport) -> None:
        self.store = store
        self.report = report
        self.done: set[str] = set()
        self.layers: dict[str, _LayerHashes] = {}

    def run(self) -> None:
        roots = self.store.roots()
        saved = self.store.saved_images()
        if not roots and not saved:
            raise ImageError(f"{self.store.shown}: holds no images")
        self.report.tags = sorted(d.ref_name for d in roots if d.ref_name)
        for desc in roots:
            self.node(desc, f"{desc.ref_name or desc.digest} at {self.store.shown}")
        for image in saved:
            _check_saved_image(image, self.report)

    def node(self, desc: Descriptor, where: str) -> None:
        if desc.media_type in INDEX_MEDIA_TYPES:
            self.index(desc, where)
        elif desc.media_type in MANIFEST_MEDIA_TYPES:
            self.manifest(desc, where)
        else:
            raise ImageError(f"{where}: media type {desc.media_type} is neither an image index nor a manifest")

    def index(self, desc: Descriptor, where: str) -> None:
        doc = self.document(desc, "oci-index", where)
        for i, child in enumerate(doc["manifests"]):
            self.node(self._descriptor(child, f"index {desc.digest}"), f"manifests[{i}] of index {desc.digest}")

    def manifest(self, desc: Descriptor, where: str) -> None:
        doc = self.document(desc, "oci-manifest", where)
        here = f"manifest {desc.digest}"
        config_desc = self._descriptor(doc["config"], here)
        if is_signature_image(doc) or (config_desc.media_type not in CONFIG_MEDIA_TYPES
                                       and ("subject" in doc or "artifactType" in doc)):
            self.artifact(doc, f"artifact {desc.digest}")
            return
        if config_desc.media_type not in CONFIG_MEDIA_TYPES:
            raise ImageError(f"{here}: config media type {config_desc.media_type} is not an image config")
        config = self.document(config_desc, "oci-config", f"config of {here}")
        layers = [self._descriptor(d, here) for d in doc["layers"]]
        diff_ids = config["rootfs"]["diff_ids"]
        if len(diff_ids) != len(layers):
            raise ImageError(f"{here}: {len(layers)} layers but its config lists {len(diff_ids)} diff_ids")
        _check_platform(desc, config, here)
        for i, (layer, diff_id) in enumerate(zip(layers, diff_ids)):
            self.layer(layer, diff_id, f"layer {i} of {here}")
        self.report.manifests += 1
        self.report.images.append(ImageFacts(desc.digest, _config_platform(config),
                                              dict(doc.get("annotations") or {})))

    def artifact(self, doc: dict[str, Any], here: str) -> None:
        """An artifact about an image (an SBOM, a signature): its blobs must match their digests."""
        for i, entry in enumerate([doc["config"], *doc["layers"]]):
            blob = self._descriptor(entry, here)
            data = self.store.read(blob, here)
            problem = _digest_mismatch(blob, len(data), "sha256:" + hashlib.sha256(data).hexdigest())
            self._count(blob, problem, f"blob {i} of {here}")

    def document(self, desc: Descriptor, schema: str, where: str) -> dict[str, Any]:
        name = self.store.blob_name(desc)
        data = self.store.read(desc, where)
        self._count(desc, _digest_mismatch(desc, len(data), "sha256:" + hashlib.sha256(data).hexdigest()), where)
        doc = _load_json(data, f"{name} ({where})")
        validate(doc, schema, what=f"{name} ({where})")
        declared = doc.get("mediaType")
        if declared is not None and declared != desc.media_type:
            raise ImageError(
                f"{name} ({where}): document says mediaType {declared}, its descriptor {desc.media_type}"
            )
        return doc

    def layer(self, desc: Descriptor, diff_id: str, where: str) -> None:
        if desc.media_type not in LAYER_COMPRESSION:
            raise ImageError(f"{where} ({desc.digest}): media type {desc.media_type} is not a layer type")
        hashes = self.layers.get(desc.digest)
        if hashes is None:
            with self.store.open_blob(desc, where) as handle:
                hashes = self.layers[desc.digest] = _hash_layer(handle, LAYER_COMPRESSION[desc.media_type])
            self.report.layers += 1
        problem = _digest_mismatch(desc, hashes.size, hashes.digest) or hashes.diff_id_problem(diff_id)
        self._count(desc, problem, where)

    def _count(self, desc: Descriptor, problem: str | None, where: str = "") -> None:
        if problem is not None:
            context = f" ({where})" if where else ""
            raise ImageError(f"{self.store.blob_name(desc)}{context}: {problem}")
        if desc.digest not in self.done:
            self.done.add(desc.digest)
            self.report.blobs += 1
            self.report.bytes += desc.size

    @staticmethod
    def _descriptor(doc: Any, where: str) -> Descriptor:
        try:
            return Descriptor.from_json(doc)
        except ImageError as exc:
            raise ImageError(f"{where}: {exc}") from None


def check_signatures(ref: Reference, key: PublicKey, ctx: transports.Context | None = None) -> list[str]:
    """Prove that KEY signed the image REF names as REF, and each manifest of an index, as podman's
    ``sigstoreSigned`` policy with ``matchRepoDigestOrExact`` would; then check the provenance
    attached to it, if any: signed by KEY and about this image. Returns what was proven, a line each;
    refusals raise ImageSignatureError naming the first signature that failed."""
    place = transports.signature_place(ref)
    if place is None:
        raise ImageSignatureError(f"{ref}: names no image reference to check signatures against",
                                  hint="give a registry reference or oci:DIR:NAME:TAG")
    try:
        with transports.open_image(ref, ctx) as store:
            roots = store.roots()
            if len(roots) != 1:
                raise ImageError(f"{ref} holds {len(roots)} images", hint="name one")
            top = roots[0]
            digests = [top.digest, *index_members(store, top)]
            for digest in digests:
                _check_signed(store, digest, key, place.identity)
            proven = [f"{ref}: {len(digests)} digest(s) signed by the given key for {place.identity}"]
            return proven + [_check_provenance(store, top, key, str(ref))]
    except BadReference as exc:
        raise ImageError(exc.message, hint=exc.hint) from exc


def index_members(store: ImageStore, top: Descriptor) -> list[str]:
    """The digests of the image manifests the index TOP lists (none when TOP is a manifest)."""
    if top.media_type not in INDEX_MEDIA_TYPES:
        return []
    document = _load_json(_read_checked(store, top, "the index"), store.blob_name(top))
    entries = [Descriptor.from_json(d) for d in document.get("manifests") or []]
    return [e.digest for e in entries if e.media_type in MANIFEST_MEDIA_TYPES]


def _read_checked(store: ImageStore, desc: Descriptor, where: str) -> bytes:
    data = store.read(desc, where)
    problem = _digest_mismatch(desc, len(data), "sha256:" + hashlib.sha256(data).hexdigest())
    if problem is not None:
        raise ImageError(f"{store.blob_name(desc)} ({where}): {problem}")
    return data


def _check_signed(store: ImageStore, digest: str, key: PublicKey, identity: str) -> None:
    found = store.signatures(digest)
    manifest = store.read(found, "the signatures") if found is not None else None
    verdict = verify_image(manifest, lambda layer: store.read(layer, "a signature"), key, digest, identity)
    if not verdict.ok:
        raise ImageSignatureError(verdict.reason)


def _check_provenance(store: ImageStore, top: Descriptor, key: PublicKey, shown: str) -> str:
    """One attached provenance must verify; none attached is said, not refused (the signatures
    above are the proof of origin; the provenance says what went in)."""
    entries = store.referrers(top, MEDIA_TYPE_ENVELOPE) or []
    if not entries:
        return f"{shown}: no provenance attestation attached to {top.digest}"
    reasons = []
    for entry in sorted(entries, key=lambda e: e.digest):
        layers = _load_json(_read_checked(store, entry, "the attestation"), store.blob_name(entry)).get("layers") or []
        if len(layers) != 1:
            reasons.append(f"{shown}: the attestation {entry.digest} has {len(layers)} layers, not one")
            continue
        layer = Descriptor.from_json(layers[0])
        try:
            statement = provenance.verify(_read_checked(store, layer, "the attestation"), key, top.digest)
        except ImageSignatureError as exc:
            reasons.append(f"{shown}: {exc.message}")
            continue
        count = len(statement["predicate"]["buildDefinition"]["resolvedDependencies"])
        return f"{shown}: SLSA v1 provenance signed by the given key, {count} resolved dependencies"
    raise ImageSignatureError(reasons[0])


def _config_platform(config: dict[str, Any]) -> Platform:
    return Platform(os=config["os"], architecture=config["architecture"], variant=config.get("variant"))


def _check_platform(desc: Descriptor, config: dict[str, Any], here: str) -> None:
    if desc.platform is None:
        return
    actual = _config_platform(config)
    if (actual.os, actual.architecture) != (desc.platform.os, desc.platform.architecture) or (
        desc.platform.variant and desc.platform.variant != actual.variant
    ):
        raise ImageError(f"{here}: descriptor platform {desc.platform} but config says {actual}")


def check_lock(report: VerifyReport, locked: Lockfile, shown: str) -> list[str]:
    """Prove every image REPORT covered was built from the lockfile LOCKED (named SHOWN).

    Each manifest must carry LOCKED's digest and the digest of the signed
    Release it pinned, and be for one of its architectures, each at most
    once. Returns the Debian architectures proven.
    """
    if not report.images:
        raise ImageError(f"{report.reference}: no image manifest to check against {shown}",
                          hint="docker-archive: keeps no manifest annotations; verify the oci: or registry image")
    by_platform = {debian_platform(arch): arch for arch in locked.architectures}
    digest = locked.digest()
    proven: list[str] = []
    for facts in report.images:
        what = f"{report.reference}: image {facts.digest} ({facts.platform})"
        arch = by_platform.get(facts.platform)
        if arch is None:
            raise ImageError(f"{what} is for an architecture {shown} does not lock "
                              f"({', '.join(sorted(locked.architectures))})")
        if arch in proven:
            raise ImageError(f"{what}: a second image for {arch}")
        recorded = facts.annotations.get(ANNOTATION_LOCK)
        if recorded != digest:
            raise ImageError(f"{what} was built from lockfile {recorded or '(none recorded)'}, not from "
                              f"{shown} ({digest})")
        release = "sha256:" + locked.architectures[arch].releases[0].sha256
        if facts.annotations.get(ANNOTATION_RELEASE) != release:
            raise ImageError(f"{what} names Release {facts.annotations.get(ANNOTATION_RELEASE) or '(none)'}, "
                              f"not the {release} that {shown} pins")
        proven.append(arch)
    return proven


def _digest_mismatch(desc: Descriptor, size: int, digest: str) -> str | None:
    if size != desc.size:
        return f"size mismatch: blob is {size} bytes, descriptor says {desc.size}"
    if digest != desc.digest:
        return f"digest mismatch: content hashes to {digest}, descriptor says {desc.digest}"
    return None


def _load_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"{what}: not valid JSON: {exc}") from None


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if count:
            self.hash.update(memoryview(buffer)[:count])
            self.size += count
        return count or 0

    def drain(self) -> tuple[int, str]:
        """Read to the end; return (size, digest) of everything read."""
        while self.read(_CHUNK):
            pass
        return self.size, "sha256:" + self.hash.hexdigest()


@dataclass(frozen=True)
class _LayerHashes:
    """One pass over a layer blob: its stored size and digest, and its diff_id or why there is none."""

    size: int
    digest: str
    compression: str | None
    diff_id: str | None
    error: str | None

    def diff_id_problem(self, expected: str) -> str | None:
        if self.error is not None:
            return f"cannot decompress ({self.compression}): {self.error}"
        if self.diff_id != expected:
            return f"diff_id mismatch: uncompressed tar hashes to {self.diff_id}, config says {expected}"
        return None


def _hash_layer(handle: IO[bytes], compression: str | None) -> _LayerHashes:
    """Stream HANDLE once, hashing both the stored bytes and their decompressed form."""
    stored = _HashingReader(handle)
    uncompressed = hashlib.sha256()
    diff_id = error = None
    try:
        reader = decompressed(stored, compression)
        while chunk := reader.read(_CHUNK):
            uncompressed.update(chunk)
        diff_id = "sha256:" + uncompressed.hexdigest()
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        error = str(exc) or type(exc).__name__
    size, digest = stored.drain()
    return _LayerHashes(size, digest, compression, diff_id, error)


def sniff_compression(path: Path) -> str | None:
    """Guess a layer file's compression from its magic bytes (docker-archives carry no media types)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return None


def _check_saved_image(image: SavedImage, report: VerifyReport) -> None:
    """An image without a manifest (docker save): its config by the digest its file name
    claims and against the schema, each layer's diff_id."""
    name = image.name
    data = image.config.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    expected = _hex_in_name(image.config)
    if expected is not None and digest != f"sha256:{expected}":
        raise ImageError(f"{name(image.config)}: digest mismatch: content hashes to {digest}, file name says {expected}")
    config = _load_json(data, name(image.config))
    validate(config, "oci-config", what=name(image.config))
    diff_ids = config["rootfs"]["diff_ids"]
    if len(diff_ids) != len(image.layers):
        raise ImageError(f"{name(image.config)}: {len(image.layers)} layers but the config lists {len(diff_ids)} diff_ids")
    for i, (layer, diff_id) in enumerate(zip(image.layers, diff_ids)):
        with open(layer, "rb") as handle:
            hashes = _hash_layer(handle, sniff_compression(layer))
        problem = hashes.diff_id_problem(diff_id)
        if problem is not None:
            raise ImageError(f"{name(layer)} (layer {i}): {problem}")
        report.layers += 1
        report.blobs += 1
        report.bytes += hashes.size
    report.blobs += 1
    report.bytes += len(data)
    report.manifests += 1
    report.tags.extend(image.repo_tags)


def _hex_in_name(path: Path) -> str | None:
    """The digest a docker-archive file name claims (``<hex>.json`` or ``blobs/sha256/<hex>``), if any."""
    stem = path.name.split(".", 1)[0]
    if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem):
        return stem
    return None
