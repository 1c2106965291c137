"""Small images and lockfiles made in memory, shared by the OCI, transport, registry, index and
SBOM tests (the layer writer is used only by ``build``, so the others stand on their own)."""

import gzip
import io
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import zstandard

from ocistrap.debian.lock import LockedArch, LockedArchive, LockedPackage, LockedRelease, Lockfile
from ocistrap.oci import assemble, blobwriter, image, ocilayout
from ocistrap.oci.image import Descriptor

COMPRESSORS = {
    image.MEDIA_TYPE_LAYER: lambda raw: raw,
    image.MEDIA_TYPE_LAYER_GZIP: lambda raw: gzip.compress(raw, mtime=0),
    image.MEDIA_TYPE_LAYER_ZSTD: lambda raw: zstandard.ZstdCompressor().compress(raw),
}
RELEASE_SHA256 = "e" * 64


def layer_tar(files: Mapping[str, bytes]) -> bytes:
    """A reproducible uncompressed layer tar holding FILES."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_image(
    root: Path,
    layers: Sequence[Mapping[str, bytes]] = ({"etc/hostname": b"ocistrap\n"},),
    *,
    media_type: str = image.MEDIA_TYPE_LAYER_GZIP,
    arch: str = "amd64",
    created: int = 0,
) -> Descriptor:
    """Write a small image's blobs into the layout ROOT; return its manifest descriptor (untagged)."""
    ocilayout.init_layout(root)
    raws = [layer_tar(files) for files in layers]
    layer_descs = []
    for raw in raws:
        blob = COMPRESSORS[media_type](raw)
        ocilayout.put_bytes(root, blob)
        layer_descs.append(Descriptor.of(blob, media_type))
    config = image.make_config(arch=arch, created=created, diff_ids=[image.sha256_digest(r) for r in raws])
    config_desc = ocilayout.put_json(root, config, image.MEDIA_TYPE_CONFIG)
    manifest = image.make_manifest(config_desc, layer_descs)
    return ocilayout.put_json(root, manifest, image.MEDIA_TYPE_MANIFEST, platform=image.debian_platform(arch))


def lockfile(arches: tuple[str, ...] = ("amd64", "arm64"), release: str = RELEASE_SHA256) -> Lockfile:
    """A bookworm lock of base-files alone for ARCHES."""
    locked_release = LockedRelease(path="dists/bookworm/InRelease", sha256=release,
                                   date="2024-01-01T00:00:00+00:00", suite="stable", codename="bookworm")

    def package(arch: str) -> LockedPackage:
        return LockedPackage(name="base-files", version="12.4", architecture=arch,
                             filename=f"pool/main/b/base-files/base-files_12.4_{arch}.deb", size=1,
                             sha256="f" * 64, stage="essential")

    return Lockfile(mirror="http://deb.debian.org/debian", suite="bookworm", components=("main",),
                    variant="minbase", include=(), install_recommends=False,
                    archives=(LockedArchive("http://deb.debian.org/debian", "bookworm"),),
                    architectures={a: LockedArch(releases=(locked_release,), packages=(package(a),))
                                   for a in arches})


def build(layout: Path, arch: str, locked: Lockfile, *, annotations: dict[str, str] | None = None) -> Descriptor:
    """A one-layer image for ARCH into LAYOUT, with the provenance of LOCKED, tagged ARCH."""
    ocilayout.init_layout(layout)
    raw = layer_tar({"etc/arch": arch.encode()})
    blob = blobwriter.write_blob(io.BytesIO(raw), layout / "blobs" / "sha256", compression="gzip")
    provenance = assemble.Provenance(suite=locked.suite, mirror=locked.mirror, lock_digest=locked.digest(),
                                     release_sha256=locked.architectures[arch].releases[0].sha256)
    desc = assemble.write_image(layout, arch, [assemble.Layer(blob, "test")], epoch=1700000000,
                                options=assemble.ImageOptions(annotations=annotations or {}),
                                provenance=provenance)
    ocilayout.write(layout, desc, layout, arch)
    return desc
