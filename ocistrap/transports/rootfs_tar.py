"""``tar:FILE``: the plain root file system of a one-platform, one-layer image, as one tar.

What ``mmdebstrap`` writes and ``docker import`` reads: the layer's tar
stream, decompressed. It is no image (no config, no manifest), so it can be
neither read back as one nor hold referrers.
"""

import shutil
from contextlib import AbstractContextManager
from pathlib import Path

from ocistrap.oci import ocilayout
from ocistrap.oci.blobwriter import decompressed
from ocistrap.oci.image import LAYER_COMPRESSION, MANIFEST_MEDIA_TYPES, Descriptor
from ocistrap.oci.ocilayout import Referrer, replacing
from ocistrap.transports import (
    BadReference,
    Context,
    ImageStore,
    Reference,
    Shape,
    TransportError,
    not_readable,
    require_path,
)


def parse(details: str, text: str) -> Reference:
    return Reference("tar", path=require_path(details, text))


def show(ref: Reference) -> str:
    return f"tar:{ref.path}"


def check(ref: Reference, shape: Shape) -> None:
    if shape.platforms != 1 or shape.layers != 1:
        raise BadReference(
            f"{ref}: a plain rootfs tarball holds one platform and one layer; this build makes "
            f"{shape.platforms} platform(s) of {shape.layers} layer(s)",
            hint="drop --layer and build one architecture for tar:, or write oci: or docker-archive:",
        )


def write_image(layout: Path, desc: Descriptor, ref: Reference, ctx: Context) -> None:
    assert ref.path is not None
    layers = ocilayout.children(layout, desc)[1:] if desc.media_type in MANIFEST_MEDIA_TYPES else []
    if len(layers) != 1:
        raise TransportError(f"{ref}: a plain rootfs tarball needs a single-platform, single-layer image")
    compression = LAYER_COMPRESSION[layers[0].media_type]
    with (replacing(ref.path) as tmp, open(tmp, "wb") as out,
          open(ocilayout.blob_path(layout, layers[0].digest), "rb") as blob):
        shutil.copyfileobj(decompressed(blob, compression), out, 1 << 20)


def open_image(ref: Reference, ctx: Context) -> AbstractContextManager[ImageStore]:
    not_readable(ref)


def signature_place(ref: Reference) -> None:
    """A plain tarball has no place for signatures."""
    return None


def attach(layout: Path, referrer: Referrer, ref: Reference, ctx: Context) -> bool:
    return False
