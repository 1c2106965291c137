"""`ocistrap index` (an index over images pushed apart) and `ocistrap verify --lock`, against
Debian's docker-registry on 127.0.0.1 (and the fake registry for a second registry)."""

import io
import json
from pathlib import Path

import pytest
from image_helpers import build, layer_tar, lockfile

from ocistrap import combine
from ocistrap.cli import main
from ocistrap.debian.lock import Lockfile
from ocistrap.debian.lock import write as write_lock
from ocistrap.errors import ImageError, UsageError
from ocistrap.oci import assemble, blobwriter, image, ocilayout
from ocistrap.oci.image import Descriptor, Platform
from ocistrap.transports import parse_reference
from ocistrap.transports.registry import api, upload
from ocistrap.verify import check_lock, verify

pytestmark = pytest.mark.usefixtures("isolated_home")


def docker(host: str, rest: str):
    return parse_reference(f"docker://{host}/{rest}")


def push(layout: Path, desc: Descriptor, host: str, rest: str) -> None:
    upload.push(layout, desc, docker(host, rest))


def registry_index(host: str, rest: str) -> tuple[dict, str]:
    repo, target = api.open_repository(docker(host, rest))
    data, media_type = repo.get_manifest(target.tag)
    return json.loads(data), media_type


# --- pure parts ---------------------------------------------------------------------------


def test_shared_annotations_keep_only_what_every_member_says_alike() -> None:
    docs = [{"annotations": {"lock": "x", "created": "1", "only": "a"}},
            {"annotations": {"lock": "x", "created": "2"}}]
    assert combine.shared_annotations(docs) == {"lock": "x"}
    assert combine.shared_annotations([{}]) == {}


def test_platform_comes_from_the_config() -> None:
    assert combine.platform_of({"os": "linux", "architecture": "arm", "variant": "v7"}, "x") == \
        Platform("linux", "arm", "v7")
    with pytest.raises(UsageError, match="x: its config names no os"):
        combine.platform_of({"architecture": "amd64"}, "x")


# --- against docker-registry ----------------------------------------------------------------


def test_index_of_images_pushed_apart_is_one_verified_multi_arch_tag(registry, tmp_path, capsys) -> None:
    locked = lockfile()
    amd64, arm64 = (build(tmp_path / arch, arch, locked) for arch in ("amd64", "arm64"))
    push(tmp_path / "amd64", amd64, registry.host, "ci/amd64:1")
    push(tmp_path / "arm64", arm64, registry.host, "ci/arm64:1")

    rc = main(["-q", "index", f"{registry.host}/debian:bookworm",
               f"{registry.host}/ci/amd64:1", f"docker://{registry.host}/ci/arm64@{arm64.digest}"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    index, media_type = registry_index(registry.host, "debian:bookworm")
    assert out.split() == [f"docker://{registry.host}/debian:bookworm",
                           "sha256:" + __import__("hashlib").sha256(image.canonical_json(index)).hexdigest()]
    assert media_type == image.MEDIA_TYPE_INDEX
    assert [(m["digest"], m["platform"]) for m in index["manifests"]] == [
        (amd64.digest, {"architecture": "amd64", "os": "linux"}),
        (arm64.digest, {"architecture": "arm64", "os": "linux", "variant": "v8"})]
    assert index["annotations"][assemble.ANNOTATION_LOCK] == locked.digest()

    report = verify(f"docker://{registry.host}/debian:bookworm")
    assert report.manifests == 2 and report.layers == 2
    assert check_lock(report, locked, "ocistrap.debian.lock") == ["amd64", "arm64"]


def test_index_across_registries_streams_the_blobs(registry, fake_registry, tmp_path, capsys) -> None:
    locked = lockfile(("amd64",))
    desc = build(tmp_path / "amd64", "amd64", locked)
    push(tmp_path / "amd64", desc, fake_registry.host, "ci/amd64:1")

    rc = main(["-q", "index", f"{registry.host}/debian:one", f"{fake_registry.host}/ci/amd64:1"])
    assert rc == 0, capsys.readouterr().err
    assert verify(f"docker://{registry.host}/debian:one").layers == 1
    assert len(fake_registry.requests("GET", r"/blobs/sha256:")) >= 2, "config and layer read from the source"


def test_index_refuses_two_images_of_one_platform_and_an_index(registry, tmp_path, capsys) -> None:
    locked = lockfile(("amd64",))
    first = build(tmp_path / "a", "amd64", locked)
    second = build(tmp_path / "b", "amd64", locked, annotations={"x": "y"})
    push(tmp_path / "a", first, registry.host, "ci/a:1")
    push(tmp_path / "b", second, registry.host, "ci/b:1")

    rc = main(["-q", "index", f"{registry.host}/debian:dup", f"{registry.host}/ci/a:1", f"{registry.host}/ci/b:1"])
    err = capsys.readouterr().err
    assert rc == 2 and "ci/a:1 and" in err and "ci/b:1 are both linux/amd64" in err
    assert api.open_repository(docker(registry.host, "debian:dup"))[0].get_manifest("dup") is None

    rc = main(["-q", "index", f"{registry.host}/debian:nested", f"{registry.host}/ci/a:1"])
    assert rc == 0
    rc = main(["-q", "index", f"{registry.host}/debian:again", f"{registry.host}/debian:nested"])
    err = capsys.readouterr().err
    assert rc == 2 and "debian:nested is already an index" in err

    rc = main(["-q", "index", f"{registry.host}/debian:x", f"{registry.host}/ci/missing:1"])
    assert rc == 2 and "ci/missing:1: no such image" in capsys.readouterr().err


def test_index_over_an_image_the_registry_serves_damaged_is_a_registry_failure(fake_registry, tmp_path,
                                                                               capsys) -> None:
    """What the registry serves wrong exits 1, as any registry failure; what the user names wrong, 2."""
    desc = build(tmp_path / "amd64", "amd64", lockfile(("amd64",)))
    push(tmp_path / "amd64", desc, fake_registry.host, "ci/amd64:1")
    config = ocilayout.children(tmp_path / "amd64", desc)[0]
    fake_registry.state.blobs[config.digest] = b'{"architecture": "arm64", "os": "linux"}'

    rc = main(["-q", "index", f"{fake_registry.host}/debian:one", f"{fake_registry.host}/ci/amd64:1"])
    err = capsys.readouterr().err
    assert rc == 1 and f"config {config.digest} does not match its digest" in err, err
    assert "one" not in fake_registry.state.tags.get("debian", {})


# --- verify --lock ------------------------------------------------------------------------


def test_verify_lock_proves_the_image_and_names_the_lock(tmp_path, capsys) -> None:
    locked = lockfile(("amd64",))
    build(tmp_path / "layout", "amd64", locked)
    write_lock(locked, tmp_path / "ocistrap.debian.lock")
    rc = main(["-q", "verify", f"oci:{tmp_path / 'layout'}:amd64", "--lock", str(tmp_path / "ocistrap.debian.lock")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"built from {tmp_path / 'ocistrap.debian.lock'} ({locked.digest()}) for amd64" in out


@pytest.mark.parametrize("other, words", [
    (lockfile(("amd64",), release="9" * 64), ("was built from lockfile",)),
    (lockfile(("arm64",)), ("linux/amd64", "does not lock (arm64)")),
])
def test_verify_lock_refuses_an_image_of_another_lock(tmp_path, other: Lockfile, words) -> None:
    build(tmp_path / "layout", "amd64", lockfile(("amd64",)))
    report = verify(f"oci:{tmp_path / 'layout'}:amd64")
    with pytest.raises(ImageError) as caught:
        check_lock(report, other, "other.lock")
    assert all(w in str(caught.value) for w in words), str(caught.value)


def test_verify_lock_refuses_a_matching_lock_digest_with_another_release(tmp_path) -> None:
    locked = lockfile(("amd64",))
    layout = tmp_path / "layout"
    ocilayout.init_layout(layout)
    raw = layer_tar({"x": b"x"})
    blob = blobwriter.write_blob(io.BytesIO(raw), layout / "blobs" / "sha256", compression="gzip")
    provenance = assemble.Provenance(suite="bookworm", mirror=locked.mirror, lock_digest=locked.digest(),
                                     release_sha256="0" * 64)
    desc = assemble.write_image(layout, "amd64", [assemble.Layer(blob, "t")], epoch=0,
                                options=assemble.ImageOptions(), provenance=provenance)
    ocilayout.write(layout, desc, layout, "t")
    with pytest.raises(ImageError, match="names Release sha256:0{64}, not the sha256:e{64}"):
        check_lock(verify(f"oci:{layout}:t"), locked, "ocistrap.debian.lock")
