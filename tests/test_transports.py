"""Reference parsing and the local transports (oci, oci-archive, docker-archive), with real clients.

The tiny images here are built from generated layer tars (tests/image_helpers.py).
"""

import io
import json
import multiprocessing
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest
from e2e_helpers import podman_env_in
from image_helpers import build_image, layer_tar

from ocistrap.oci import image, ocilayout
from ocistrap.oci.image import Descriptor
from ocistrap.oci.ocilayout import replacing
from ocistrap.transports import (
    TRANSPORTS,
    BadReference,
    Context,
    Reference,
    Shape,
    TransportError,
    check,
    docker_archive,
    extract_archive,
    lookup,
    oci_archive,
    open_image,
    parse_reference,
)
from ocistrap.transports import write as write_to


def blob_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "blobs" / "sha256").iterdir())


def index_tags(root: Path) -> dict[str, str]:
    return {tag: desc.digest for tag, desc in ocilayout.tags(root).items()}


# --- reference parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("oci:out", Reference("oci", path=Path("out"))),
        ("oci:out:bookworm", Reference("oci", path=Path("out"), tag="bookworm")),
        ("oci:/abs/dir:debian/bookworm:1", Reference("oci", path=Path("/abs/dir"), tag="debian/bookworm:1")),
        ("oci:out:", Reference("oci", path=Path("out"))),
        ("oci-archive:img.tar:v1.0", Reference("oci-archive", path=Path("img.tar"), tag="v1.0")),
        ("docker-archive:img.tar", Reference("docker-archive", path=Path("img.tar"))),
        (
            "docker-archive:img.tar:debian:bookworm",
            Reference("docker-archive", path=Path("img.tar"), name="debian", tag="bookworm"),
        ),
        (
            "docker-archive:img.tar:localhost:5000/x/debian",
            Reference("docker-archive", path=Path("img.tar"), name="localhost:5000/x/debian", tag="latest"),
        ),
        ("tar:rootfs.tar", Reference("tar", path=Path("rootfs.tar"))),
        ("docker://debian", Reference("docker", name="debian", tag="latest")),
        (
            "docker://127.0.0.1:5000/ocistrap/debian:sid",
            Reference("docker", name="127.0.0.1:5000/ocistrap/debian", tag="sid"),
        ),
        (
            f"docker://localhost/debian@sha256:{'b' * 64}",
            Reference("docker", name="localhost/debian", digest=f"sha256:{'b' * 64}"),
        ),
        ("containers-storage:", Reference("containers-storage")),
        ("containers-storage:localhost/debian:bookworm", Reference("containers-storage", name="localhost/debian", tag="bookworm")),
        ("containers-storage:debian", Reference("containers-storage", name="debian")),
        ("registry.example/debian:bookworm", Reference("docker", name="registry.example/debian", tag="bookworm")),
        ("127.0.0.1:5000/x:y", Reference("docker", name="127.0.0.1:5000/x", tag="y")),
        ("localhost:5000/debian", Reference("docker", name="localhost:5000/debian", tag="latest")),
        ("library/debian", Reference("docker", name="library/debian", tag="latest")),
    ],
)
def test_parse_reference(text, expected):
    ref = parse_reference(text)
    assert ref == expected
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    "text, message",
    [
        ("out", "unknown transport 'out'"),
        ("dir:out", "unknown transport 'dir'"),
        ("OCI:out", "unknown transport 'OCI'"),
        ("oic:out", "unknown transport 'oic'"),
        ("debian:bookworm", "unknown transport 'debian'"),
        ("https://registry.example/debian", "unknown transport 'https'"),
        ("registry.example/Debian", "not a valid image name"),
        ("oci:", "missing after the transport"),
        ("oci::tag", "missing after the transport"),
        ("oci:out:bad tag", "not a valid image-layout tag"),
        ("oci:out:-x", "not a valid image-layout tag"),
        ("docker-archive:a.tar:Debian", "not a valid image name"),
        (f"docker-archive:a.tar:debian@sha256:{'b' * 64}", "takes a tag, not a digest"),
        ("docker:debian", "expected docker://"),
        ("docker://", "expected docker://"),
        ("docker://debian:", "not a valid image name"),
        ("docker://debian/Case", "not a valid image name"),
        ("tar:", "missing after the transport"),
        ("containers-storage:[vfs@/x]debian", "store specifications"),
    ],
)
def test_parse_reference_rejects(text, message):
    with pytest.raises(TransportError, match=message) as info:
        parse_reference(text)
    assert info.value.exit_code == 2


def test_unknown_transport_lists_the_valid_ones():
    with pytest.raises(TransportError) as info:
        parse_reference("registry:foo")
    for transport in ("oci:", "oci-archive:", "docker-archive:", "tar:", "docker:", "containers-storage:"):
        assert transport in str(info.value)


def test_every_transport_module_implements_the_protocol():
    for prefix in TRANSPORTS:
        module = lookup(prefix)
        for member in ("parse", "show", "check", "write_image", "open_image", "attach"):
            assert callable(getattr(module, member)), f"{prefix}: has no {member}"


def test_one_dispatch_from_reference_to_module(tmp_path, monkeypatch):
    """write() reaches the module TABLE names for the prefix, with the context it was given."""
    calls = []
    module = lookup("oci")
    monkeypatch.setattr(module, "write_image", lambda layout, desc, ref, ctx: calls.append((ref, ctx)))
    ctx = Context(tls_verify=False)
    ref = parse_reference(f"oci:{tmp_path}:x")
    write_to(tmp_path, build_image(tmp_path / "build"), ref, ctx)
    assert calls == [(ref, ctx)]


@pytest.mark.parametrize(
    "text, shape, message",
    [
        ("tar:x.tar", Shape(platforms=1, layers=2), "one platform and one layer"),
        ("tar:x.tar", Shape(platforms=2, layers=1), "one platform and one layer"),
        ("docker-archive:d.tar", Shape(platforms=2, layers=1), "holds one platform"),
        ("containers-storage:", Shape(platforms=1, layers=1), "needs a name"),
    ],
)
def test_shape_checks_refuse_before_the_build(text, shape, message):
    with pytest.raises(TransportError, match=message):
        check([parse_reference(text)], shape)


@pytest.mark.parametrize("text", ["tar:x.tar", "docker-archive:d.tar", "oci:o", "oci-archive:a.tar",
                                  "docker://registry.example/x:y"])
def test_shape_checks_accept_what_fits(text):
    check([parse_reference(text)], Shape(platforms=1, layers=1))
    if not text.startswith(("tar:", "docker-archive:")):
        check([parse_reference(text)], Shape(platforms=3, layers=4))


def test_tar_output_is_the_layer_decompressed(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build, [{"etc/hostname": b"x\n"}])
    write_to(build, desc, parse_reference(f"tar:{tmp_path / 'rootfs.tar'}"))
    assert (tmp_path / "rootfs.tar").read_bytes() == layer_tar({"etc/hostname": b"x\n"})
    two = build_image(build, [{"a": b"1"}, {"b": b"2"}])
    with pytest.raises(TransportError, match="single-platform, single-layer"):
        write_to(build, two, parse_reference(f"tar:{tmp_path / 'two.tar'}"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere; run as a user (make test does)")
@pytest.mark.parametrize("prefix", ["tar:", "oci:", "oci-archive:", "docker-archive:"])
def test_an_unwritable_output_is_one_transport_error(tmp_path, prefix):
    build = tmp_path / "build"
    desc = build_image(build)
    locked_dir = tmp_path / "ro"
    locked_dir.mkdir(mode=0o555)
    with pytest.raises(TransportError, match=f"cannot write {prefix}.*Permission denied"):
        write_to(build, desc, parse_reference(f"{prefix}{locked_dir / 'sub' / 'x'}"))


def test_reading_back_what_cannot_be_read_is_a_bad_reference(tmp_path):
    for text in ("tar:x.tar", "containers-storage:localhost/x:y"):
        with pytest.raises(BadReference, match="cannot read images from"), open_image(parse_reference(text)):
            pass


# --- shared helpers ------------------------------------------------------------------


def test_replacing_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "file"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing(target) as temp:
        temp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["file"]


def test_replacing_honours_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with replacing(tmp_path / "file") as temp:
            temp.write_text("new")
    finally:
        os.umask(old)
    assert (tmp_path / "file").stat().st_mode & 0o777 == 0o644


def _hostile_tar(path: Path, name: str, kind: bytes = tarfile.REGTYPE) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        tar.addfile(info, io.BytesIO(b""))


@pytest.mark.parametrize(
    "name, kind, message",
    [
        ("../evil", tarfile.REGTYPE, "outside the archive"),
        ("/etc/evil", tarfile.REGTYPE, "outside the archive"),
        ("dev", tarfile.CHRTYPE, "device or fifo"),
    ],
)
def test_extract_archive_refuses_hostile_members(tmp_path, name, kind, message):
    _hostile_tar(tmp_path / "a.tar", name, kind)
    (tmp_path / "out").mkdir()
    with pytest.raises(TransportError, match=message):
        extract_archive(tmp_path / "a.tar", tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_extract_archive_skips_links(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "out").mkdir()
    extract_archive(tmp_path / "a.tar", tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def test_extract_archive_rejects_garbage(tmp_path):
    (tmp_path / "a.tar").write_bytes(b"no tar here" * 100)
    with pytest.raises(TransportError, match="not a readable tar archive"):
        extract_archive(tmp_path / "a.tar", tmp_path)


# --- oci: ------------------------------------------------------------------------------


def test_write_tags_and_dedups_blobs(tmp_path):
    build = tmp_path / "build"
    first = build_image(build, [{"etc/a": b"a"}, {"etc/b": b"b"}])
    second = build_image(build, [{"etc/a": b"a"}, {"etc/c": b"c"}], created=5)
    dest = tmp_path / "out"
    ocilayout.write(build, first, dest, "one")
    ocilayout.write(build, second, dest, "two")
    assert index_tags(dest) == {"one": first.digest, "two": second.digest}
    # the shared base layer is stored once: 2 manifests + 2 configs + 3 distinct layers
    assert len(blob_files(dest)) == 7
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert ocilayout.read(dest, "two") == (dest, ocilayout.tags(dest)["two"])


def test_write_copies_only_reachable_blobs_and_hardlinks_them(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    stray = ocilayout.put_bytes(build, b"unrelated")
    dest = tmp_path / "out"
    stored = ocilayout.write(build, desc, dest, "t")
    assert stray.removeprefix("sha256:") not in blob_files(dest)
    assert len(blob_files(dest)) == 3
    assert stored.ref_name == "t" and stored.platform == image.debian_platform("amd64")
    for name in blob_files(dest):
        assert os.path.samefile(dest / "blobs/sha256" / name, build / "blobs/sha256" / name)


def test_retag_replaces_the_entry(tmp_path):
    build = tmp_path / "build"
    old, new = build_image(build, created=1), build_image(build, created=2)
    dest = tmp_path / "out"
    ocilayout.write(build, old, dest, "latest")
    ocilayout.write(build, new, dest, "latest")
    ocilayout.write(build, new, dest, "latest")
    assert index_tags(dest) == {"latest": new.digest}
    assert len(ocilayout.load_index(dest)["manifests"]) == 1


def test_untagged_write_adds_the_image_once(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    ocilayout.write(build, desc, tmp_path / "out", None)
    ocilayout.write(build, desc, tmp_path / "out", None)
    root, found = ocilayout.read(tmp_path / "out")
    assert found == desc and root == tmp_path / "out"


def test_writing_into_the_build_layout_itself(tmp_path):
    desc = build_image(tmp_path)
    ocilayout.write(tmp_path, desc, tmp_path, "here")
    assert index_tags(tmp_path) == {"here": desc.digest}


def test_read_errors_name_the_tags(tmp_path):
    build = tmp_path / "build"
    dest = tmp_path / "out"
    ocilayout.write(build, build_image(build, created=1), dest, "a")
    ocilayout.write(build, build_image(build, created=2), dest, "b")
    with pytest.raises(TransportError, match="no image tagged 'c'.*tags here: a, b"):
        ocilayout.read(dest, "c")
    with pytest.raises(TransportError, match="holds 2 images"):
        ocilayout.read(dest)
    with pytest.raises(TransportError, match="not an OCI image layout"):
        ocilayout.read(tmp_path / "nothing")


def test_write_refuses_a_corrupt_source_blob(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    layer = ocilayout.children(build, desc)[1]
    path = ocilayout.blob_path(build, layer.digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(TransportError, match="content hashes to"):
        ocilayout.write(build, desc, dest, "t")
    assert not dest.exists(), "a layout the failed write created was left"


def test_a_failed_write_leaves_an_existing_layout_as_it_was(tmp_path):
    dest = tmp_path / "out"
    ocilayout.write(tmp_path / "first", build_image(tmp_path / "first"), dest, "first")
    before = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    build = tmp_path / "build"
    desc = build_image(build, ({"etc/other": b"other\n"},), created=1)
    layer = ocilayout.children(build, desc)[1]
    path = ocilayout.blob_path(build, layer.digest)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    with pytest.raises(TransportError, match="content hashes to"):
        ocilayout.write(build, desc, dest, "second")
    assert {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == before


def test_a_writer_that_waited_for_a_failed_one_makes_the_layout_again(tmp_path):
    """The failed writer removed the layout it had created, lock file and all, while this one
    waited on that lock file: it must lock the new one, not the removed one."""
    dest, build = tmp_path / "out", tmp_path / "build"
    desc = build_image(build)
    holding = threading.Event()

    def fail_while_holding_the_lock() -> None:
        with ocilayout.locked(dest):
            holding.set()
            time.sleep(0.3)
            shutil.rmtree(dest)

    failing = threading.Thread(target=fail_while_holding_the_lock)
    failing.start()
    holding.wait()
    ocilayout.write(build, desc, dest, "t")
    failing.join()
    assert "t" in ocilayout.tags(dest)
    assert sorted(os.listdir(dest)) == ["blobs", "index.json", "oci-layout"], "nothing but the layout"


def test_a_failed_second_writer_keeps_the_image_the_first_one_finished(tmp_path, monkeypatch):
    """Both writers found no layout; the first finished before the second got the lock, then
    the second failed: the layout is no longer the second's to remove."""
    dest = tmp_path / "out"
    first = build_image(tmp_path / "first")
    second_build = tmp_path / "second"
    second = build_image(second_build, ({"etc/other": b"other\n"},), created=1)
    layer = ocilayout.children(second_build, second)[1]
    path = ocilayout.blob_path(second_build, layer.digest)
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    real_locked = ocilayout.locked
    done = []

    def first_writer_finishes_meanwhile(root):
        if not done:
            done.append(True)
            ocilayout.write(tmp_path / "first", first, dest, "first")
        return real_locked(root)

    monkeypatch.setattr(ocilayout, "locked", first_writer_finishes_meanwhile)
    with pytest.raises(TransportError, match="content hashes to"):
        ocilayout.write(second_build, second, dest, "second")
    assert index_tags(dest) == {"first": first.digest}
    verify_layout_blobs(dest, first)


def verify_layout_blobs(root: Path, desc: Descriptor) -> None:
    for blob in ocilayout.reachable(root, desc):
        ocilayout.check_blob(ocilayout.blob_path(root, blob.digest), blob)


def test_the_lock_is_no_file_of_the_layout(tmp_path):
    dest = tmp_path / "out"
    ocilayout.write(tmp_path / "build", build_image(tmp_path / "build"), dest, "t")
    assert sorted(os.listdir(dest)) == ["blobs", "index.json", "oci-layout"]
    assert sorted(os.listdir(tmp_path)) == ["build", "out"]


def test_write_refuses_a_missing_blob(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    config = ocilayout.children(build, desc)[0]
    ocilayout.blob_path(build, config.digest).unlink()
    with pytest.raises(TransportError, match="is missing"):
        ocilayout.write(build, desc, tmp_path / "out", "t")


def _write_tag(args: tuple[str, str, str]) -> None:
    build, dest, tag = args
    desc = build_image(Path(build) / tag, [{f"etc/{tag}": tag.encode()}])
    ocilayout.write(Path(build) / tag, desc, Path(dest), tag)


def test_concurrent_writers_never_lose_a_tag(tmp_path):
    tags = [f"t{i}" for i in range(24)]
    with multiprocessing.get_context("fork").Pool(6) as pool:
        pool.map(_write_tag, [(str(tmp_path / "builds"), str(tmp_path / "out"), t) for t in tags])
    assert sorted(index_tags(tmp_path / "out")) == sorted(tags)
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_write_dispatch_by_reference(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    write_to(build, desc, parse_reference(f"oci:{tmp_path / 'out'}:x"))
    assert index_tags(tmp_path / "out") == {"x": desc.digest}


# --- oci-archive: ----------------------------------------------------------------------


def test_oci_archive_round_trip_is_reproducible(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    oci_archive.write(build, desc, tmp_path / "a.tar", "bookworm")
    oci_archive.write(build, desc, tmp_path / "b.tar", "bookworm")
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        names = tar.getnames()
        assert all(m.uid == 0 and m.mtime == 0 for m in tar.getmembers())
    assert {"oci-layout", "index.json", "blobs", "blobs/sha256"} <= set(names)
    assert not [n for n in names if "lock" in n]
    with oci_archive.read(tmp_path / "a.tar", "bookworm") as (layout, found):
        assert found.digest == desc.digest and found.ref_name == "bookworm"
        assert ocilayout.read_json(layout, found)["schemaVersion"] == 2
    assert not layout.exists()
    assert sorted(os.listdir(tmp_path)) == ["a.tar", "b.tar", "build"]


@pytest.mark.parametrize("file, name", [("debian.tar", "debian"), ("Debian Bookworm.tar", "debian-bookworm"),
                                        ("img", "img"), ("..tar", "image")])
def test_an_untagged_oci_archive_is_named_after_its_file(tmp_path, file, name):
    build = tmp_path / "build"
    desc = build_image(build)
    write_to(build, desc, parse_reference(f"oci-archive:{tmp_path / file}"))
    with oci_archive.read(tmp_path / file) as (_, found):
        assert found.ref_name == name and found.digest == desc.digest


def test_oci_archive_write_replaces_and_leaves_no_temp_on_failure(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    (tmp_path / "a.tar").write_bytes(b"previous")
    ocilayout.blob_path(build, ocilayout.children(build, desc)[0].digest).unlink()
    with pytest.raises(TransportError):
        oci_archive.write(build, desc, tmp_path / "a.tar", "t")
    assert (tmp_path / "a.tar").read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["a.tar", "build"]


# --- docker-archive: -------------------------------------------------------------------


def test_docker_archive_layout(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build, [{"a": b"1"}, {"b": b"2"}])
    config, *layers = ocilayout.children(build, desc)
    docker_archive.write(build, desc, tmp_path / "d.tar", ["localhost/debian:bookworm"])
    with docker_archive.read(tmp_path / "d.tar") as archive:
        manifest = json.loads((archive.root / "manifest.json").read_text())
        assert manifest == [
            {
                "Config": f"{config.hex}.json",
                "RepoTags": ["localhost/debian:bookworm"],
                "Layers": [f"{layer.hex}.tar.gz" for layer in layers],
            }
        ]
        (img,) = archive.images
        assert img.config.read_bytes() == ocilayout.blob_path(build, config.digest).read_bytes()
        assert [p.read_bytes() for p in img.layers] == [ocilayout.blob_path(build, l.digest).read_bytes() for l in layers]
        assert img.repo_tags == ["localhost/debian:bookworm"]


def test_docker_archive_refuses_multi_platform_index(tmp_path):
    build = tmp_path / "build"
    amd, arm = build_image(build, arch="amd64"), build_image(build, arch="arm64")
    index = ocilayout.put_json(build, image.make_index([amd, arm]), image.MEDIA_TYPE_INDEX)
    with pytest.raises(TransportError, match="one platform.*linux/amd64, linux/arm64/v8"):
        docker_archive.write(build, index, tmp_path / "d.tar", [])
    assert not (tmp_path / "d.tar").exists()
    single = ocilayout.put_json(build, image.make_index([arm]), image.MEDIA_TYPE_INDEX)
    docker_archive.write(build, single, tmp_path / "d.tar", [])
    assert (tmp_path / "d.tar").exists()


@pytest.mark.parametrize(
    "manifest, message",
    [
        (None, "no manifest.json"),
        (b"{", "not valid JSON"),
        (b"[]", "non-empty list"),
        (b'[{"Config": 1, "Layers": []}]', "needs Config"),
        (b'[{"Config": "../x.json", "Layers": []}]', "not a path inside"),
        (b'[{"Config": "gone.json", "Layers": []}]', "gone.json is missing"),
    ],
)
def test_docker_archive_read_rejects_bad_manifests(tmp_path, manifest, message):
    with tarfile.open(tmp_path / "d.tar", "w") as tar:
        if manifest is not None:
            info = tarfile.TarInfo("manifest.json")
            info.size = len(manifest)
            tar.addfile(info, io.BytesIO(manifest))
    with pytest.raises(TransportError, match=message), docker_archive.read(tmp_path / "d.tar"):
        pass


# --- real clients ----------------------------------------------------------------------


def needs(tool: str):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")


def run(*argv: str, **kwargs) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


@needs("skopeo")
def test_skopeo_reads_our_layout_and_archives(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build, [{"etc/a": b"a"}, {"etc/b": b"b"}], media_type=image.MEDIA_TYPE_LAYER_ZSTD)
    ocilayout.write(build, desc, tmp_path / "out", "bookworm")
    ocilayout.write(build, build_image(build, arch="arm64"), tmp_path / "out", "arm")
    config, *layers = ocilayout.children(build, desc)
    info = json.loads(run("skopeo", "inspect", f"oci:{tmp_path / 'out'}:bookworm"))
    assert info["Digest"] == desc.digest
    assert info["Layers"] == [layer.digest for layer in layers]
    assert info["Architecture"] == "amd64" and info["Env"] == [image.DEFAULT_PATH]
    raw = json.loads(run("skopeo", "inspect", "--config", "--raw", f"oci:{tmp_path / 'out'}:bookworm"))
    assert raw == ocilayout.read_json(build, config)

    oci_archive.write(build, desc, tmp_path / "ours.tar", "t")
    assert json.loads(run("skopeo", "inspect", f"oci-archive:{tmp_path / 'ours.tar'}:t"))["Digest"] == desc.digest
    docker_archive.write(build, desc, tmp_path / "d.tar", ["localhost/ocistrap:t"])
    info = json.loads(run("skopeo", "inspect", f"docker-archive:{tmp_path / 'd.tar'}"))
    assert info["Layers"] == raw["rootfs"]["diff_ids"]
    assert info["Architecture"] == "amd64"


@needs("skopeo")
def test_skopeo_copies_our_layout_to_an_archive_we_read(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build)
    ocilayout.write(build, desc, tmp_path / "out", "bookworm")
    run("skopeo", "copy", f"oci:{tmp_path / 'out'}:bookworm", f"oci-archive:{tmp_path / 'sk.tar'}:copied")
    with oci_archive.read(tmp_path / "sk.tar", "copied") as (layout, found):
        assert found.digest == desc.digest
        assert ocilayout.read_json(layout, found) == ocilayout.read_json(build, desc)


@needs("umoci")
def test_umoci_unpacks_our_layout(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build, [{"etc/a": b"first"}, {"etc/a": b"second", "usr/b": b"b"}])
    ocilayout.write(build, desc, tmp_path / "out", "bookworm")
    run("umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'out'}:bookworm", str(tmp_path / "bundle"))
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "etc/a").read_bytes() == b"second"
    assert (rootfs / "usr/b").read_bytes() == b"b"
    runtime = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert runtime["process"]["args"] == ["bash"]


@pytest.mark.e2e
@needs("podman")
def test_podman_loads_our_docker_archive(tmp_path):
    build = tmp_path / "build"
    desc = build_image(build, [{"etc/a": b"a"}, {"etc/hostname": b"ocistrap\n"}])
    config, *layers = ocilayout.children(build, desc)
    diff_ids = ocilayout.read_json(build, config)["rootfs"]["diff_ids"]
    name = f"localhost/ocistrap-test-load:{os.getpid()}"
    docker_archive.write(build, desc, tmp_path / "d.tar", [name])
    env = podman_env_in(tmp_path)
    podman = ("podman", "--log-level=error")
    try:
        assert name in run(*podman, "load", "-i", str(tmp_path / "d.tar"), env=env)
        info = json.loads(run(*podman, "image", "inspect", name, env=env))[0]
        assert info["Id"] == config.hex
        assert info["RootFS"]["Layers"] == diff_ids
        container = run(*podman, "create", name, env=env).strip()
        try:
            run(*podman, "export", "-o", str(tmp_path / "fs.tar"), container, env=env)
        finally:
            run(*podman, "rm", container, env=env)
        with tarfile.open(tmp_path / "fs.tar") as tar:
            assert tar.extractfile("etc/hostname").read() == b"ocistrap\n"
    finally:
        subprocess.run([*podman, "rmi", "--force", name], env=env, capture_output=True)
