"""Reading an image's referrers back through any transport (the SBOM today), each checked against its digest."""

import hashlib
import json
from typing import Any

from ocistrap import transports
from ocistrap.errors import ImageError
from ocistrap.oci.image import (
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    debian_platform,
)
from ocistrap.oci.sbom import MEDIA_TYPE_SPDX
from ocistrap.oci.signature import is_signature_image
from ocistrap.transports import Context, ImageStore, Reference


def _layer(manifest: dict[str, Any], shown: str) -> Descriptor:
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        raise ImageError(f"{shown}: the SBOM artifact has {len(layers)} layers, not one")
    return Descriptor.from_json(layers[0])



def read(ref: Reference, *, platform_arch: str | None = None, ctx: Context | None = None) -> bytes:
    """The SPDX document attached to the image REF names (for an index, to PLATFORM_ARCH's image)."""
    with transports.open_image(ref, ctx) as store:
        subject = the_image(store, ref)
        if subject.media_type in INDEX_MEDIA_TYPES:
            subject = _pick(document(store, subject), platform_arch, str(ref))
        entries = store.referrers(subject, MEDIA_TYPE_SPDX)
        if entries is None:
            raise ImageError(f"cannot read SBOMs from {ref}: it keeps no referrers",
                            hint="use oci:DIR[:TAG] or a registry reference")
        if not entries:
            raise ImageError(f"{ref}: no SPDX SBOM is attached to {subject.digest}",
                            hint="build with --sbom spdx to attach one")
        artifact = sorted(entries, key=lambda e: e.digest)[0]
        layer = _layer(document(store, artifact), str(ref))
        return _checked(store.read(layer, "the SBOM"), layer, str(ref))


def the_image(store: ImageStore, ref: Reference) -> Descriptor:
    """The one image (manifest or index) REF names, leaving out the artifacts stored beside it."""
    images = [d for d in store.roots() if not is_artifact(store, d)]
    if len(images) != 1:
        raise ImageError(f"{ref}: names {len(images)} images", hint="name one as oci:DIR:TAG")
    return images[0]


def document(store: ImageStore, desc: Descriptor) -> Any:
    """The document DESC of STORE, checked against its digest."""
    data = _checked(store.read(desc, "a document"), desc, store.shown)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"{store.blob_name(desc)}: not valid JSON: {exc}") from None


def _pick(index: dict[str, Any], arch: str | None, shown: str) -> Descriptor:
    """The entry of an image index for the Debian architecture ARCH (required when there are several)."""
    entries = [Descriptor.from_json(d) for d in index.get("manifests") or []]
    if arch is None and len(entries) == 1:
        return entries[0]
    if arch is None:
        raise ImageError(f"{shown} is a multi-architecture index", hint="name one with --arch")
    wanted = debian_platform(arch)
    for entry in entries:
        if entry.platform == wanted:
            return entry
    raise ImageError(f"{shown} has no image for {arch} ({wanted})")


def is_artifact(store: ImageStore, desc: Descriptor) -> bool:
    """Whether DESC is stored beside an image rather than being one: a referrer or a signature image."""
    if desc.media_type not in MANIFEST_MEDIA_TYPES:
        return False
    doc = document(store, desc)
    return "subject" in doc or is_signature_image(doc)


def _checked(content: bytes, desc: Descriptor, shown: str) -> bytes:
    if len(content) != desc.size or "sha256:" + hashlib.sha256(content).hexdigest() != desc.digest:
        raise ImageError(f"{shown}: {desc.media_type} {desc.digest} does not match its digest")
    return content
