"""verify(): each kind of corruption is caught and named; good images from us and skopeo pass."""

import gzip
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from image_helpers import build_image, layer_tar

from ocistrap.errors import ImageError
from ocistrap.oci import image, ocilayout
from ocistrap.oci.image import Descriptor
from ocistrap.transports import docker_archive, oci_archive, parse_reference
from ocistrap.verify import sniff_compression, verify


def tagged(tmp_path: Path, **kwargs) -> tuple[Path, Descriptor]:
    """A layout at tmp_path/out holding one image tagged ``t``; returns (layout, manifest descriptor)."""
    build = tmp_path / "build"
    desc = build_image(build, **kwargs)
    ocilayout.write(build, desc, tmp_path / "out", "t")
    return tmp_path / "out", desc


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    os.unlink(path)  # blobs are hard links shared with the build layout
    path.write_bytes(bytes(data))


def point_tag(layout: Path, desc: Descriptor, tag: str = "t") -> None:
    """Make index.json hold only DESC as TAG, bypassing ocilayout.write's checks."""
    entry = desc.with_annotations({image.ANNOTATION_REF_NAME: tag})
    (layout / "index.json").write_bytes(image.canonical_json(image.make_index([entry])))


def rewrite_manifest(layout: Path, desc: Descriptor, change) -> Descriptor:
    """Store a changed copy of DESC's manifest (correctly hashed) and tag it ``t``."""
    manifest = ocilayout.read_json(layout, desc)
    change(manifest)
    new = ocilayout.put_json(layout, manifest, desc.media_type, platform=desc.platform)
    point_tag(layout, new)
    return new


def rewrite_config(layout: Path, desc: Descriptor, change) -> Descriptor:
    """Store a changed copy of DESC's config and a manifest pointing at it."""
    manifest = ocilayout.read_json(layout, desc)
    config = ocilayout.read_json(layout, Descriptor.from_json(manifest["config"]))
    change(config)
    config_desc = ocilayout.put_json(layout, config, image.MEDIA_TYPE_CONFIG)
    return rewrite_manifest(layout, desc, lambda m: m.update(config=config_desc.to_json()))


@pytest.mark.parametrize(
    "media_type", [image.MEDIA_TYPE_LAYER_GZIP, image.MEDIA_TYPE_LAYER_ZSTD, image.MEDIA_TYPE_LAYER]
)
def test_good_layout_verifies(tmp_path, media_type):
    big = os.urandom(3 << 20)
    layout, _ = tagged(tmp_path, layers=[{"big": big}, {"etc/a": b"a"}], media_type=media_type)
    report = verify(f"oci:{layout}:t")
    assert (report.manifests, report.layers, report.blobs) == (1, 2, 4)
    assert report.tags == ["t"]
    assert report.bytes == sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
    assert "OK, 1 image(s), 2 layer(s)" in report.summary()


def test_verifies_every_image_and_nested_indexes(tmp_path):
    build = tmp_path / "build"
    amd = build_image(build, [{"a": b"1"}, {"b": b"2"}])
    arm = build_image(build, [{"a": b"1"}, {"c": b"3"}], arch="armhf")
    index = ocilayout.put_json(build, image.make_index([amd, arm]), image.MEDIA_TYPE_INDEX)
    ocilayout.write(build, index, tmp_path / "out", "multi")
    ocilayout.write(build, amd, tmp_path / "out", "amd")
    report = verify(parse_reference(f"oci:{tmp_path / 'out'}"))
    assert report.tags == ["amd", "multi"]
    assert (report.manifests, report.layers) == (3, 3)


def test_a_shared_layer_is_hashed_once_but_checked_against_every_config(tmp_path):
    build = tmp_path / "build"
    good = build_image(build, [{"a": b"1"}])
    other = build_image(build, [{"a": b"1"}], created=9)
    ocilayout.write(build, good, tmp_path / "out", "good")
    ocilayout.write(build, other, tmp_path / "out", "other")
    assert verify(f"oci:{tmp_path / 'out'}").layers == 1
    wrong = image.sha256_digest(b"not the tar")
    bad = rewrite_config(build, other, lambda c: c["rootfs"].update(diff_ids=[wrong]))
    ocilayout.write(build, bad, tmp_path / "out", "other")
    with pytest.raises(ImageError, match=f"config says {wrong}"):
        verify(f"oci:{tmp_path / 'out'}")


def test_flipped_byte_in_a_layer(tmp_path):
    layout, desc = tagged(tmp_path)
    layer = ocilayout.children(layout, desc)[1]
    flip_last_byte(ocilayout.blob_path(layout, layer.digest))
    with pytest.raises(ImageError) as info:
        verify(f"oci:{layout}:t")
    message = str(info.value)
    assert f"blobs/sha256/{layer.hex}" in message
    assert "layer 0 of manifest" in message and "digest mismatch" in message
    assert "\n" not in message


def test_wrong_diff_id(tmp_path):
    layout, desc = tagged(tmp_path)
    wrong = image.sha256_digest(b"another tar")
    rewrite_config(layout, desc, lambda c: c["rootfs"].update(diff_ids=[wrong]))
    with pytest.raises(ImageError, match=f"diff_id mismatch: uncompressed tar hashes to sha256:.*config says {wrong}"):
        verify(f"oci:{layout}:t")


def test_wrong_size(tmp_path):
    layout, desc = tagged(tmp_path)
    rewrite_manifest(layout, desc, lambda m: m["layers"][0].update(size=m["layers"][0]["size"] + 1))
    with pytest.raises(ImageError, match=r"layer 0 of manifest .*size mismatch: blob is \d+ bytes, descriptor says"):
        verify(f"oci:{layout}:t")


def test_wrong_size_of_a_manifest_in_index_json(tmp_path):
    layout, desc = tagged(tmp_path)
    point_tag(layout, Descriptor(desc.media_type, desc.digest, desc.size - 1))
    with pytest.raises(ImageError, match=f"blobs/sha256/{desc.hex} \\(t at {layout}\\): size mismatch"):
        verify(f"oci:{layout}")


def test_manifest_schema_violation(tmp_path):
    layout, desc = tagged(tmp_path)
    new = rewrite_manifest(layout, desc, lambda m: m.update(schemaVersion=3))
    with pytest.raises(ImageError, match=f"blobs/sha256/{new.hex} .*invalid at schemaVersion"):
        verify(f"oci:{layout}:t")


def test_config_schema_violation(tmp_path):
    layout, desc = tagged(tmp_path)
    rewrite_config(layout, desc, lambda c: c.pop("architecture"))
    with pytest.raises(ImageError, match=r"\(config of manifest .*'architecture' is a required property"):
        verify(f"oci:{layout}:t")


def test_index_json_schema_violation(tmp_path):
    layout, _ = tagged(tmp_path)
    (layout / "index.json").write_text('{"schemaVersion": 2}')
    with pytest.raises(ImageError, match="index.json: invalid at .*'manifests' is a required property"):
        verify(f"oci:{layout}")


def test_manifest_media_type_must_match_its_descriptor(tmp_path):
    layout, desc = tagged(tmp_path)
    manifest = ocilayout.read_json(layout, desc)
    lying = ocilayout.put_json(layout, manifest, image.MEDIA_TYPE_DOCKER_MANIFEST)
    point_tag(layout, lying)
    expected = f"document says mediaType {image.MEDIA_TYPE_MANIFEST}, its descriptor {image.MEDIA_TYPE_DOCKER_MANIFEST}"
    with pytest.raises(ImageError, match=re.escape(expected)):
        verify(f"oci:{layout}:t")


def test_layer_media_type_must_be_a_layer_type(tmp_path):
    layout, desc = tagged(tmp_path)
    rewrite_manifest(layout, desc, lambda m: m["layers"][0].update(mediaType="application/octet-stream"))
    with pytest.raises(ImageError, match="media type application/octet-stream is not a layer type"):
        verify(f"oci:{layout}:t")


def test_layer_that_does_not_decompress(tmp_path):
    layout, desc = tagged(tmp_path, media_type=image.MEDIA_TYPE_LAYER)
    layer = ocilayout.children(layout, desc)[1]
    rewrite_manifest(layout, desc, lambda m: m["layers"][0].update(mediaType=image.MEDIA_TYPE_LAYER_GZIP))
    with pytest.raises(ImageError, match=f"{layer.hex} .*cannot decompress \\(gzip\\)"):
        verify(f"oci:{layout}:t")


def test_truncated_gzip_layer_reports_the_digest_first(tmp_path):
    layout, desc = tagged(tmp_path)
    path = ocilayout.blob_path(layout, ocilayout.children(layout, desc)[1].digest)
    data = path.read_bytes()
    os.unlink(path)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="size mismatch"):
        verify(f"oci:{layout}:t")


def test_platform_must_match_the_config(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build, arch="arm64")
    wrong = Descriptor(desc.media_type, desc.digest, desc.size, platform=image.debian_platform("amd64"))
    ocilayout.write(build, wrong, tmp_path / "out", "t")
    with pytest.raises(ImageError, match="descriptor platform linux/amd64 but config says linux/arm64/v8"):
        verify(f"oci:{tmp_path / 'out'}:t")


def test_layer_count_must_match_diff_ids(tmp_path):
    layout, desc = tagged(tmp_path)
    rewrite_config(layout, desc, lambda c: c["rootfs"]["diff_ids"].append(image.sha256_digest(b"")))
    with pytest.raises(ImageError, match="1 layers but its config lists 2 diff_ids"):
        verify(f"oci:{layout}:t")


def test_missing_blob_and_missing_layout(tmp_path):
    layout, desc = tagged(tmp_path)
    config = ocilayout.children(layout, desc)[0]
    ocilayout.blob_path(layout, config.digest).unlink()
    with pytest.raises(ImageError, match=f"{config.hex} \\(config of manifest .*blob is missing"):
        verify(f"oci:{layout}:t")
    with pytest.raises(ImageError, match="not an OCI image layout"):
        verify(f"oci:{tmp_path / 'nowhere'}")
    with pytest.raises(ImageError, match="no image tagged 'x'"):
        verify(f"oci:{layout}:x")


def test_empty_layout_is_not_an_image(tmp_path):
    ocilayout.init_layout(tmp_path)
    with pytest.raises(ImageError, match="holds no images"):
        verify(f"oci:{tmp_path}")


def test_plain_rootfs_tarballs_are_not_images(tmp_path):
    with pytest.raises(ImageError, match="tar"):
        verify("tar:" + str(tmp_path / "rootfs.tar"))


def test_oci_archive(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    oci_archive.write(build, desc, tmp_path / "a.tar", "t")
    assert verify(f"oci-archive:{tmp_path / 'a.tar'}:t").manifests == 1
    layer = ocilayout.children(build, desc)[1]
    flip_last_byte(ocilayout.blob_path(build, layer.digest))
    shutil.copy(ocilayout.blob_path(build, layer.digest), tmp_path / "bad")
    with oci_archive.read(tmp_path / "a.tar") as (layout, _):
        shutil.copy(tmp_path / "bad", ocilayout.blob_path(layout, layer.digest))
        oci_archive.tar_layout(layout, tmp_path / "b.tar")
    with pytest.raises(ImageError, match=f"{tmp_path / 'b.tar'}/blobs/sha256/{layer.hex} .*digest mismatch"):
        verify(f"oci-archive:{tmp_path / 'b.tar'}")
    with pytest.raises(ImageError, match="no such archive"):
        verify(f"oci-archive:{tmp_path / 'missing.tar'}")


def _docker_archive(tmp_path: Path, diff_ids=None) -> Path:
    build = tmp_path / "build"
    desc = build_image(build, [{"a": b"1"}, {"b": b"2"}])
    if diff_ids is not None:
        desc = rewrite_config(build, desc, lambda c: c["rootfs"].update(diff_ids=diff_ids))
    docker_archive.write(build, desc, tmp_path / "d.tar", ["localhost/x:y"])
    return tmp_path / "d.tar"


def test_docker_archive(tmp_path):
    report = verify(f"docker-archive:{_docker_archive(tmp_path)}")
    assert (report.manifests, report.layers, report.blobs, report.tags) == (1, 2, 3, ["localhost/x:y"])


def test_docker_archive_wrong_diff_id(tmp_path):
    first = image.sha256_digest(layer_tar({"a": b"1"}))
    wrong = image.sha256_digest(b"x")
    archive = _docker_archive(tmp_path, diff_ids=[first, wrong])
    with pytest.raises(ImageError, match=rf"d.tar:\w+\.tar\.gz \(layer 1\): diff_id mismatch.*config says {wrong}"):
        verify(f"docker-archive:{archive}")


def test_docker_archive_config_digest_and_schema(tmp_path):
    archive = _docker_archive(tmp_path)
    with docker_archive.read(archive) as unpacked:
        config = unpacked.images[0].config
        config.write_bytes(config.read_bytes().replace(b'"os":"linux"', b'"os":"hurd"'))
        with tarfile.open(tmp_path / "e.tar", "w") as tar:
            for path in sorted(unpacked.root.iterdir()):
                tar.add(path, arcname=path.name)
    with pytest.raises(ImageError, match=f"{config.name}: digest mismatch: content hashes to"):
        verify(f"docker-archive:{tmp_path / 'e.tar'}")


def test_sniff_compression(tmp_path):
    raw = layer_tar({"a": b"1"})
    for name, data, expected in [("g", gzip.compress(raw), "gzip"), ("t", raw, None), ("e", b"", None)]:
        (tmp_path / name).write_bytes(data)
        assert sniff_compression(tmp_path / name) == expected


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_images_written_by_skopeo_verify(tmp_path):
    layout, _ = tagged(tmp_path, layers=[{"a": b"1"}, {"b": b"2"}])
    for target in (f"oci-archive:{tmp_path / 'sk.tar'}:copy", f"docker-archive:{tmp_path / 'skd.tar'}:x/y:z", f"oci:{tmp_path / 'sk'}:copy"):
        subprocess.run(["skopeo", "copy", "-q", f"oci:{layout}:t", target], check=True, capture_output=True)
        assert verify(target).layers == 2
