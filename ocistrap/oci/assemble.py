"""Wrap layer blobs into an OCI image: config, manifest, and an index for several architectures."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ocistrap.oci import image, ocilayout
from ocistrap.oci.blobwriter import LayerBlob
from ocistrap.oci.image import Descriptor

ANNOTATION_LOCK = "dev.ocistrap.lockfile.digest"
ANNOTATION_RELEASE = "dev.ocistrap.release.sha256"
ANNOTATION_MIRROR = "dev.ocistrap.mirror"


@dataclass(frozen=True)
class ImageOptions:
    """What a user may set in the image config and on the manifest."""

    env: tuple[str, ...] = ()
    cmd: tuple[str, ...] | None = image.DEFAULT_CMD
    entrypoint: tuple[str, ...] | None = None
    workdir: str | None = None
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    def full_env(self) -> list[str]:
        """PATH first unless the user set it; user entries replace defaults by name."""
        names = {e.split("=", 1)[0] for e in self.env}
        return ([image.DEFAULT_PATH] if "PATH" not in names else []) + list(self.env)


@dataclass(frozen=True)
class Provenance:
    """Where the image came from, recorded as manifest annotations."""

    suite: str
    mirror: str
    lock_digest: str
    release_sha256: str

    def annotations(self, created: str) -> dict[str, str]:
        return {
            image.ANNOTATION_CREATED: created,
            image.ANNOTATION_VERSION: self.suite,
            ANNOTATION_MIRROR: self.mirror,
            ANNOTATION_LOCK: self.lock_digest,
            ANNOTATION_RELEASE: "sha256:" + self.release_sha256,
        }


@dataclass(frozen=True)
class Layer:
    blob: LayerBlob
    created_by: str


def write_image(layout: Path, arch: str, layers: Sequence[Layer], *, epoch: int,
                options: ImageOptions, provenance: Provenance) -> Descriptor:
    """Write config and manifest for LAYERS into LAYOUT; return the manifest's descriptor."""
    config = image.make_config(
        arch=arch, created=epoch, diff_ids=[layer.blob.diff_id for layer in layers],
        env=options.full_env(), cmd=options.cmd, entrypoint=options.entrypoint,
        workdir=options.workdir, user=options.user, labels=options.labels,
        history=[layer.created_by for layer in layers])
    config_desc = ocilayout.put_json(layout, config, image.MEDIA_TYPE_CONFIG)
    layer_descs = [Descriptor(media_type=layer.blob.media_type, digest=layer.blob.digest,
                              size=layer.blob.size) for layer in layers]
    annotations = {**provenance.annotations(image.rfc3339(epoch)), **options.annotations}
    manifest = image.make_manifest(config_desc, layer_descs, annotations)
    return ocilayout.put_json(layout, manifest, image.MEDIA_TYPE_MANIFEST,
                        platform=image.debian_platform(arch))


def write_index(layout: Path, manifests: Sequence[Descriptor], annotations: Mapping[str, str]) -> Descriptor:
    """One index over per-architecture manifests, so one tag serves every platform."""
    return ocilayout.put_json(layout, image.make_index(manifests, annotations), image.MEDIA_TYPE_INDEX)
