"""`ocistrap verify REF --rebuild`: build the image again from its lockfile and compare digests.

The lock comes from ``--lock`` or from the image's provenance attestation; every
other setting that reaches the image's bytes is read back from the image itself
(SOURCE_DATE_EPOCH from the config's ``created``, the compression from the layer
media types, env, cmd, entrypoint, workdir, user and labels from the config,
the user's annotations from the manifest). The rebuild is a normal build
(every check of the lock against the signed archive, the cache used first)
written into a scratch layout. Same digest: reproduced. Otherwise the first
layer that differs is unpacked on both sides and its first differing paths named.
"""

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from ocistrap import hostarch, pipeline, referrers, transports
from ocistrap.debian import lock
from ocistrap.debian.cache import Cache
from ocistrap.debian.fetch import Fetcher
from ocistrap.debian.lock import Lockfile
from ocistrap.errors import ImageError, UsageError
from ocistrap.oci import layerdiff, provenance
from ocistrap.oci.assemble import ANNOTATION_LOCK, ANNOTATION_MIRROR, ANNOTATION_RELEASE, ImageOptions
from ocistrap.oci.blobwriter import decompressed
from ocistrap.oci.image import (
    CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    LAYER_COMPRESSION,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    Platform,
    rfc3339,
)
from ocistrap.rootfs import buildmode, scratchdirs
from ocistrap.transports import Context, ImageStore, Reference, SavedImage
from ocistrap.verify import sniff_compression

PATHS_SHOWN = 10
"""How many differing paths of the first differing layer a report names."""
ANNOTATIONS_OF_THE_LOCK = (ANNOTATION_LOCK, ANNOTATION_RELEASE, ANNOTATION_MIRROR)
"""Manifest annotations the lock decides: never taken from the image, so a rebuild from another
lock says so instead of copying them."""


@dataclass(frozen=True)
class Layer:
    """One layer as stored: its digest, the digest of its tar, and its stored bytes on demand."""

    digest: str
    diff_id: str
    compression: str | None
    created_by: str
    open: Callable[[], AbstractContextManager[IO[bytes]]]


@dataclass(frozen=True)
class PlatformImage:
    """One platform's image: the digest that names it (its manifest's; for an image stored without
    a manifest, its config's), its config and manifest annotations, its layers."""

    digest: str
    config_digest: str
    config: Mapping[str, Any]
    annotations: Mapping[str, str]
    layers: tuple[Layer, ...]

    @property
    def saved(self) -> bool:
        """Whether it was stored without a manifest (docker-archive), so its config names it."""
        return self.digest == self.config_digest

    def counterpart(self, other: "PlatformImage") -> str:
        """The digest of OTHER to hold against this image's: its config's if this one is saved."""
        return other.config_digest if self.saved else other.digest

    @property
    def platform(self) -> Platform:
        return Platform(os=self.config["os"], architecture=self.config["architecture"],
                        variant=self.config.get("variant"))


@dataclass(frozen=True)
class Image:
    """What a reference holds: the digest of its top (an index or a manifest) and its platforms' images.
    SUBJECTS are the descriptors attestations may refer to, the top first."""

    digest: str
    index: Mapping[str, Any] | None
    platforms: tuple[PlatformImage, ...]
    subjects: tuple[Descriptor, ...] = ()


@dataclass(frozen=True)
class Recovered:
    """The build settings that reach an image's bytes, as the image records them."""

    epoch: int
    compression: str
    options: ImageOptions


@dataclass(frozen=True)
class Builder:
    """What a rebuild builds with: the same as `ocistrap build --lock`."""

    keyrings: tuple[Path, ...]
    fetcher: Fetcher
    cache: Cache
    mode: str = "auto"
    staging_dir: Path | None = None


@dataclass(frozen=True)
class Outcome:
    """A rebuild's verdict: the image's digest, the rebuilt one, and what differs."""

    reference: str
    digest: str
    rebuilt: str
    lock: str
    lines: tuple[str, ...] = field(default_factory=tuple)

    @property
    def reproduced(self) -> bool:
        return self.digest == self.rebuilt

    def report(self) -> str:
        if self.reproduced:
            return f"{self.reference}: reproduced {self.digest} from {self.lock}"
        head = f"{self.reference}: not reproduced from {self.lock}: image {self.digest}, rebuilt {self.rebuilt}"
        return "\n".join([head, *(f"  {line}" for line in self.lines)])


def rebuild(ref: Reference, locked: Lockfile | None, lock_name: str | None, builder: Builder,
            ctx: Context | None = None) -> Outcome:
    """Rebuild the image REF from LOCKED (None: the lock in its provenance attestation) and compare."""
    ctx = ctx or Context()
    with transports.open_image(ref, ctx) as store:
        image = read_image(store, ref)
        if locked is None:
            locked = lock_from_attestation(store, image, str(ref))
            lock_name = "the lockfile of its provenance attestation"
        hostarch.require_runnable(tuple(locked.architectures))
        recovered = recover(image, locked)
        with scratchdirs.scratch_dir(builder.cache.root / "partial", "rebuild-") as tmp:
            out = Reference("oci", path=tmp / "layout", tag="rebuilt")
            request = pipeline.BuildRequest(
                outputs=(out,), staging=pipeline.Staging(buildmode.decide_mode(builder.mode), builder.staging_dir),
                compression=recovered.compression, options=recovered.options, epoch=recovered.epoch)
            pipeline.build(locked, builder.keyrings, builder.fetcher, builder.cache, request)
            with transports.open_image(out, ctx) as rebuilt_store:
                rebuilt = read_image(rebuilt_store, out)
                lines = compare(image, rebuilt)
    notes = lock_notes(image, locked, lock_name or "the lockfile")
    return Outcome(str(ref), image.digest, _matching_digest(image, rebuilt), f"{lock_name} ({locked.digest()})",
                   tuple(notes + lines))


# ---- reading an image through any transport ----

def read_image(store: ImageStore, ref: Reference) -> Image:
    """The one image REF names in STORE: an index, a manifest, or an image saved without one."""
    saved = store.saved_images()
    if saved and not store.roots():
        if len(saved) != 1:
            raise ImageError(f"{ref}: holds {len(saved)} images", hint="verify an archive of one image")
        image = _saved_image(saved[0])
        return Image(image.digest, None, (image,))
    top = referrers.the_image(store, ref)
    if top.media_type in INDEX_MEDIA_TYPES:
        index = referrers.document(store, top)
        children = [Descriptor.from_json(d) for d in index.get("manifests") or []]
        images = tuple(_manifest_image(store, d) for d in children if d.media_type in MANIFEST_MEDIA_TYPES)
        if not images:
            raise ImageError(f"{ref}: the index {top.digest} lists no image manifest")
        return Image(top.digest, index, images, (top, *children))
    if top.media_type not in MANIFEST_MEDIA_TYPES:
        raise ImageError(f"{ref}: media type {top.media_type} is neither an image index nor a manifest")
    return Image(top.digest, None, (_manifest_image(store, top),), (top,))


def _manifest_image(store: ImageStore, desc: Descriptor) -> PlatformImage:
    manifest = referrers.document(store, desc)
    config_desc = Descriptor.from_json(manifest["config"])
    if config_desc.media_type not in CONFIG_MEDIA_TYPES:
        raise ImageError(f"{store.blob_name(desc)}: config media type {config_desc.media_type} is not an image config")
    config = referrers.document(store, config_desc)
    descs = [Descriptor.from_json(d) for d in manifest["layers"]]
    diff_ids, history = config["rootfs"]["diff_ids"], _layer_history(config)
    if len(diff_ids) != len(descs):
        raise ImageError(f"{store.blob_name(desc)}: {len(descs)} layers but its config lists {len(diff_ids)} diff_ids")

    def opener(layer: Descriptor) -> Callable[[], AbstractContextManager[IO[bytes]]]:
        return lambda: store.open_blob(layer, "a layer to compare")

    layers = tuple(Layer(d.digest, diff_id, LAYER_COMPRESSION.get(d.media_type), created_by, opener(d))
                   for d, diff_id, created_by in zip(descs, diff_ids, history))
    return PlatformImage(desc.digest, config_desc.digest, config, dict(manifest.get("annotations") or {}), layers)


def _saved_image(saved: SavedImage) -> PlatformImage:
    """An image of a docker-archive: named by its config's digest, as docker names it (the image ID)."""
    data = saved.config.read_bytes()
    config = json.loads(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def opener(path: Path) -> Callable[[], AbstractContextManager[IO[bytes]]]:
        return lambda: open(path, "rb")

    layers = tuple(Layer(_file_digest(path), diff_id, sniff_compression(path), created_by, opener(path))
                   for path, diff_id, created_by in zip(saved.layers, config["rootfs"]["diff_ids"],
                                                        _layer_history(config)))
    return PlatformImage(digest, digest, config, {}, layers)


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return "sha256:" + hashlib.file_digest(handle, "sha256").hexdigest()


def _layer_history(config: Mapping[str, Any]) -> list[str]:
    """What made each layer, from the config's history (entries without a layer left out)."""
    made = [h.get("created_by", "") for h in config.get("history") or [] if not h.get("empty_layer")]
    return made + [""] * (len(config["rootfs"]["diff_ids"]) - len(made))


# ---- the lock and the settings ----

def lock_from_attestation(store: ImageStore, image: Image, shown: str) -> Lockfile:
    """The lockfile carried by the provenance attestation of IMAGE (of its index, else of one of its
    manifests). Its signature is not checked: the rebuild's digests are the verdict."""
    for subject in image.subjects:
        for artifact in store.referrers(subject, provenance.MEDIA_TYPE_ENVELOPE) or []:
            layers = referrers.document(store, artifact).get("layers") or []
            if len(layers) != 1:
                continue
            layer = Descriptor.from_json(layers[0])
            envelope = store.read(layer, "the provenance attestation")
            if "sha256:" + hashlib.sha256(envelope).hexdigest() != layer.digest:
                raise ImageError(f"{store.blob_name(layer)}: the attestation does not match its digest")
            statement = provenance.unverified_statement(envelope)
            hexes = {s.get("digest", {}).get("sha256") for s in statement["subject"]}
            if subject.hex not in hexes:
                raise ImageError(f"{shown}: the provenance attestation of {subject.digest} is about another image")
            return lock.loads(provenance.lockfile_bytes(statement), what=f"the lockfile in {shown}'s attestation")
    raise UsageError(f"{shown} carries no provenance attestation to take the lockfile from",
                     hint="give the lockfile with --lock FILE")


def recover(image: Image, locked: Lockfile) -> Recovered:
    """The settings IMAGE was built with, so that a build of LOCKED with them makes the same bytes."""
    first = image.platforms[0]
    config = first.config.get("config") or {}
    epoch = _epoch(first.config.get("created"), locked)
    compression = first.layers[0].compression if first.layers else "gzip"
    made_by_lock = pipeline.provenance_of(locked).annotations(rfc3339(epoch))
    annotations = {k: v for k, v in first.annotations.items()
                   if k not in ANNOTATIONS_OF_THE_LOCK and made_by_lock.get(k) != v}
    options = ImageOptions(
        env=tuple(config.get("Env") or ()), cmd=_words(config.get("Cmd")), entrypoint=_words(config.get("Entrypoint")),
        workdir=config.get("WorkingDir") or None, user=config.get("User") or None,
        labels=dict(config.get("Labels") or {}), annotations=annotations)
    return Recovered(epoch=epoch, compression=compression or "none", options=options)


def _epoch(created: Any, locked: Lockfile) -> int:
    """SOURCE_DATE_EPOCH as the config's ``created`` records it; for an image that records no time,
    what a build takes then (the Release date of LOCKED)."""
    if created is None:
        return pipeline.release_epoch(locked)
    try:
        return int(datetime.fromisoformat(str(created).replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise ImageError(f"the image config's created {created!r} is no time") from None


def _words(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return tuple(value) if value is not None else None


def lock_notes(image: Image, locked: Lockfile, shown: str) -> list[str]:
    """What a report says first when the image's manifests name another lockfile than the one rebuilt."""
    named = {p.annotations.get(ANNOTATION_LOCK) for p in image.platforms} - {None}
    return [f"note: the image names lockfile {n}, not {shown} ({locked.digest()})"
            for n in sorted(named) if n != locked.digest()]


# ---- comparing ----

def _matching_digest(image: Image, rebuilt: Image) -> str:
    """The rebuild's digest to hold against the image's: its top for an index; for one platform's
    image, the rebuild's image of that platform (a lock may build more)."""
    if image.index is not None:
        return rebuilt.digest
    mine = image.platforms[0]
    theirs = next((p for p in rebuilt.platforms if p.platform == mine.platform), None)
    return mine.counterpart(theirs) if theirs is not None else f"(none for {mine.platform})"


def compare(image: Image, rebuilt: Image) -> list[str]:
    """What differs between IMAGE and REBUILT, platform by platform (each named for an index);
    empty when nothing does."""
    if _matching_digest(image, rebuilt) == image.digest:
        return []
    if image.index is None:
        mine = image.platforms[0]
        other = next((p for p in rebuilt.platforms if p.platform == mine.platform), None)
        return platform_differences(mine, other) if other else [f"the lockfile builds no image for {mine.platform}"]
    lines: list[str] = []
    theirs = {p.platform: p for p in rebuilt.platforms}
    for mine in image.platforms:
        other = theirs.pop(mine.platform, None)
        if other is None:
            lines.append(f"{mine.platform}: the lockfile builds no image for it")
        elif mine.digest == other.digest:
            lines.append(f"{mine.platform}: reproduced {mine.digest}")
        else:
            lines.append(f"{mine.platform}: image {mine.digest}, rebuilt {other.digest}")
            lines += [f"  {line}" for line in platform_differences(mine, other)]
    lines += [f"{platform}: only the rebuild has an image for it" for platform in theirs]
    if all(": reproduced " in line for line in lines):
        lines += [f"the index differs at {d}" for d in document_differences(image.index, rebuilt.index or {})]
    return lines


def platform_differences(mine: PlatformImage, other: PlatformImage) -> list[str]:
    """The first layer of MINE that the rebuild OTHER does not reproduce, with its first differing
    paths; else the config or the manifest annotations that differ."""
    lines = []
    if len(mine.layers) != len(other.layers):
        lines.append(f"{len(mine.layers)} layers in the image, {len(other.layers)} rebuilt")
    for number, (a, b) in enumerate(zip(mine.layers, other.layers)):
        what = f"layer {number}" + (f" ({a.created_by})" if a.created_by else "")
        if a.diff_id != b.diff_id:
            return [*lines, f"{what} differs: diff_id {a.diff_id} in the image, {b.diff_id} rebuilt",
                    *layer_differences(a, b)]
        if a.digest != b.digest:
            return [*lines, f"{what}: the same tar, compressed to other bytes ({a.digest} in the image, "
                            f"{b.digest} rebuilt)"]
    if lines:
        return lines
    if mine.config_digest != other.config_digest:
        return [f"the config differs at {d}" for d in document_differences(mine.config, other.config)]
    return [f"the manifest annotation {d}" for d in document_differences(mine.annotations, other.annotations)]


def layer_differences(a: Layer, b: Layer) -> list[str]:
    """The first PATHS_SHOWN paths the tars of A (the image's) and B (the rebuild's) disagree on."""
    with a.open() as mine, b.open() as theirs:
        ours = layerdiff.members(decompressed(mine, a.compression))  # type: ignore[arg-type]
        rebuilt = layerdiff.members(decompressed(theirs, b.compression))  # type: ignore[arg-type]
    found = [str(d) for d in layerdiff.differences(ours, rebuilt)]
    if not found:
        order = layerdiff.order_difference(ours, rebuilt)
        return [order or "the same paths, owners, modes and contents: the tars differ in how they are written"]
    more = len(found) - PATHS_SHOWN
    return found[:PATHS_SHOWN] + ([f"... and {more} more paths"] if more > 0 else [])


def document_differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Where two JSON documents differ: ``KEY.KEY: A in the image, B rebuilt`` per differing leaf."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return [line for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)
                for line in document_differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [f"{prefix.rstrip('.') or '(the whole document)'}: {_short(a)} in the image, {_short(b)} rebuilt"]


def _short(value: Any) -> str:
    text = "none" if value is None else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."

