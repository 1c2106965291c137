"""`ocistrap index`: one multi-architecture tag from single-architecture images pushed apart.

A CI matrix builds each architecture on its own runner and pushes it; this
reads each pushed manifest and its config from the registry (the only thing
the runners share), takes the platform from the config, copies blobs and
manifests into the destination repository where they are not yet (mounted
within a registry, streamed across registries), and stores an image index
at the destination tag. Nothing is downloaded to disk.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ocistrap import log
from ocistrap.errors import ImageError, UsageError
from ocistrap.oci.image import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_INDEX,
    Descriptor,
    ImageError,
    Platform,
    canonical_json,
    make_index,
)
from ocistrap.transports import Reference
from ocistrap.transports.registry import api, upload


@dataclass(frozen=True)
class Member:
    """One single-architecture image as the registry holds it."""

    shown: str
    repo: api.Repository
    manifest: bytes
    media_type: str
    document: dict[str, Any]
    platform: Platform

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor.of(self.manifest, self.media_type, platform=self.platform)

    def blobs(self) -> list[Descriptor]:
        return [Descriptor.from_json(d) for d in [self.document["config"], *self.document.get("layers", [])]]


def platform_of(config: Mapping[str, Any], shown: str) -> Platform:
    """The platform an image config declares (``os``, ``architecture``, ``variant``)."""
    if not isinstance(config.get("os"), str) or not isinstance(config.get("architecture"), str):
        raise UsageError(f"{shown}: its config names no os and architecture")
    variant = config.get("variant")
    return Platform(os=config["os"], architecture=config["architecture"],
                    variant=variant if isinstance(variant, str) else None)


def shared_annotations(documents: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The manifest annotations every member carries with the same value (provenance of one lock)."""
    if not documents:
        return {}
    first, *rest = (dict(d.get("annotations") or {}) for d in documents)
    return {k: v for k, v in sorted(first.items()) if all(other.get(k) == v for other in rest)}


def index_document(members: Sequence[Member]) -> dict[str, Any]:
    """The index over MEMBERS; two members for one platform are an error naming both."""
    seen: dict[Platform, str] = {}
    for member in members:
        if member.platform in seen:
            raise UsageError(f"{seen[member.platform]} and {member.shown} are both {member.platform}",
                              hint="name one image per platform")
        seen[member.platform] = member.shown
    return make_index([m.descriptor for m in members], shared_annotations([m.document for m in members]))


def read_member(ref: Reference, *, tls_verify: bool | None = None) -> Member:
    """Fetch the manifest and config of the single-architecture image REF names."""
    repo, target = api.open_repository(ref, tls_verify=tls_verify)
    shown = str(target)
    found = repo.get_manifest(target.digest or target.tag or "latest")
    if found is None:
        raise UsageError(f"{shown}: no such image in the registry")
    data, media_type = found
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if target.digest is not None and digest != target.digest:
        raise ImageError(f"{shown}: the registry served a manifest that hashes to {digest}")
    if media_type in INDEX_MEDIA_TYPES:
        raise UsageError(f"{shown} is already an index", hint="name the single-architecture images it lists")
    if media_type not in MANIFEST_MEDIA_TYPES:
        raise UsageError(f"{shown}: {media_type or 'no media type'} is not an image manifest")
    document = _json(data, f"{shown}: manifest")
    try:
        config_desc = Descriptor.from_json(document["config"])
    except (KeyError, TypeError, ImageError) as exc:
        raise ImageError(f"{shown}: the manifest has no usable config descriptor ({exc})") from None
    config = repo.read_blob(config_desc)
    if Descriptor.of(config, config_desc.media_type).digest != config_desc.digest:
        raise ImageError(f"{shown}: config {config_desc.digest} does not match its digest")
    return Member(shown, repo, data, media_type, document, platform_of(_json(config, f"{shown}: config"), shown))


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


def push_index(destination: Reference, sources: Sequence[Reference], *,
               tls_verify: bool | None = None) -> Descriptor:
    """Store at DESTINATION an index over the images SOURCES name; return the index's descriptor."""
    if not sources:
        raise UsageError("name at least one image to put into the index")
    members = [read_member(ref, tls_verify=tls_verify) for ref in sources]
    document = index_document(members)
    repo, target = api.open_repository(destination, tls_verify=tls_verify)
    out = log.get()
    for member in members:
        how = [upload.copy_blob(member.repo, repo, blob) for blob in member.blobs()]
        upload.store_manifest(repo, member.descriptor.digest, member.manifest, member.media_type)
        out.detail(f"{member.shown} ({member.platform}): " +
                   ", ".join(f"{how.count(k)} {k}" for k in ("present", "mounted", "copied") if k in how))
    data = canonical_json(document)
    if target.digest is not None and target.digest != Descriptor.of(data, MEDIA_TYPE_INDEX).digest:
        raise UsageError(f"{destination}: names digest {target.digest}, but the index is "
                          f"{Descriptor.of(data, MEDIA_TYPE_INDEX).digest}")
    stored = upload.store_manifest(repo, target.tag or target.digest or "latest", data, MEDIA_TYPE_INDEX)
    out.info(f"indexed {', '.join(str(m.platform) for m in members)} as {target}")
    return stored
