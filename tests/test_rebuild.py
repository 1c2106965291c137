"""`verify --rebuild` without building: reading images through the transports, the lock from an
attestation, the settings an image records, and the report of what differs."""

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from image_helpers import build, build_image, lockfile

from ocistrap import rebuild, transports
from ocistrap.cli import main
from ocistrap.errors import ImageError, UsageError
from ocistrap.oci import assemble, image, ocilayout, provenance, signature
from ocistrap.oci.image import Descriptor
from ocistrap.transports import parse_reference


@pytest.fixture
def read() -> Iterator[Callable[[str], rebuild.Image]]:
    """The image at a reference, its store open (its layers readable) until the test ends."""
    with ExitStack() as stack:
        def opened(ref: str) -> rebuild.Image:
            store = stack.enter_context(transports.open_image(parse_reference(ref)))
            return rebuild.read_image(store, parse_reference(ref))
        yield opened


def attach_attestation(layout: Path, subject: Descriptor, statement: dict) -> None:  # type: ignore[type-arg]
    """An unsigned DSSE envelope of STATEMENT, as a referrer of SUBJECT (the signature is not what a rebuild reads)."""
    envelope = json.dumps({"payload": base64.b64encode(json.dumps(statement).encode()).decode(),
                           "payloadType": signature.DSSE_PAYLOAD_TYPE, "signatures": []}).encode()
    ocilayout.put_bytes(layout, envelope)
    artifact = ocilayout.put_artifact(layout, provenance.MEDIA_TYPE_ENVELOPE,
                                      [Descriptor.of(envelope, provenance.MEDIA_TYPE_ENVELOPE)], {}, subject=subject)
    ocilayout.write(layout, artifact, layout)


def statement_of(digest: str, lock) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return provenance.statement("registry.example/debian:bookworm", digest, lock, provenance.parameters_from_lock(lock),
                                provenance.Run(started_on=1700000000, invocation_id="run"))


def test_the_lock_comes_from_the_attestation(tmp_path: Path) -> None:
    locked = lockfile(("amd64",))
    desc = build(tmp_path, "amd64", locked)
    attach_attestation(tmp_path, desc, statement_of(desc.digest, locked))
    ref = parse_reference(f"oci:{tmp_path}:amd64")
    with transports.open_image(ref) as store:
        found = rebuild.lock_from_attestation(store, rebuild.read_image(store, ref), str(ref))
    assert found == locked and found.digest() == locked.digest()


def test_an_attestation_about_another_image_or_none_is_refused(tmp_path: Path) -> None:
    locked = lockfile(("amd64",))
    desc = build(tmp_path, "amd64", locked)
    ref = parse_reference(f"oci:{tmp_path}:amd64")
    with transports.open_image(ref) as store:
        with pytest.raises(UsageError, match="carries no provenance attestation"):
            rebuild.lock_from_attestation(store, rebuild.read_image(store, ref), str(ref))
    attach_attestation(tmp_path, desc, statement_of("sha256:" + "0" * 64, locked))
    with transports.open_image(ref) as store:
        with pytest.raises(ImageError, match="about another image"):
            rebuild.lock_from_attestation(store, rebuild.read_image(store, ref), str(ref))


def test_the_settings_come_back_from_the_image(tmp_path: Path, read: Callable[[str], rebuild.Image]) -> None:
    locked = lockfile(("amd64",))
    build(tmp_path, "amd64", locked, annotations={"org.example.team": "base", image.ANNOTATION_VERSION: "12"})
    recovered = rebuild.recover(read(f"oci:{tmp_path}:amd64"), locked)
    assert recovered.epoch == 1700000000
    assert recovered.compression == "gzip"
    assert recovered.options.env == (image.DEFAULT_PATH,)
    assert recovered.options.cmd == image.DEFAULT_CMD and recovered.options.entrypoint is None
    assert dict(recovered.options.annotations) == {"org.example.team": "base", image.ANNOTATION_VERSION: "12"}
    other = lockfile(("amd64",), release="d" * 64)
    assert rebuild.recover(read(f"oci:{tmp_path}:amd64"), other).options.annotations == \
        recovered.options.annotations, "what the lock decides is never taken from the image"


def test_the_same_image_differs_in_nothing(tmp_path: Path, read: Callable[[str], rebuild.Image]) -> None:
    for name in ("a", "b"):
        desc = build_image(tmp_path / name, created=1700000000)
        ocilayout.write(tmp_path / name, desc, tmp_path / name, "x")
    assert rebuild.compare(read(f"oci:{tmp_path / 'a'}:x"), read(f"oci:{tmp_path / 'b'}:x")) == []


def test_the_first_differing_layer_and_path_are_named(tmp_path: Path, read: Callable[[str], rebuild.Image]) -> None:
    base = {"etc/hostname": b"ocistrap\n"}
    for name, top in (("a", b"1\n"), ("b", b"2\n")):
        desc = build_image(tmp_path / name, [base, {"etc/debian_version": top, "etc/issue": b"Debian\n"}])
        ocilayout.write(tmp_path / name, desc, tmp_path / name, "x")
    mine, other = read(f"oci:{tmp_path / 'a'}:x"), read(f"oci:{tmp_path / 'b'}:x")
    lines = rebuild.compare(mine, other)
    assert lines[0].startswith("layer 1 (ocistrap) differs: diff_id sha256:")
    assert lines[1].startswith("/etc/debian_version: content sha256:")
    assert len(lines) == 2
    outcome = rebuild.Outcome("oci:a:x", mine.digest, other.digest, "x.lock (sha256:1)", tuple(lines))
    assert not outcome.reproduced
    assert outcome.report().splitlines()[0] == \
        f"oci:a:x: not reproduced from x.lock (sha256:1): image {mine.digest}, rebuilt {other.digest}"
    assert rebuild.Outcome("oci:a:x", mine.digest, mine.digest, "x.lock (sha256:1)").report() == \
        f"oci:a:x: reproduced {mine.digest} from x.lock (sha256:1)"


def test_the_same_layers_under_another_config(tmp_path: Path, read: Callable[[str], rebuild.Image]) -> None:
    for name, created in (("a", 0), ("b", 86400)):
        desc = build_image(tmp_path / name, created=created)
        ocilayout.write(tmp_path / name, desc, tmp_path / name, "x")
    lines = rebuild.compare(read(f"oci:{tmp_path / 'a'}:x"), read(f"oci:{tmp_path / 'b'}:x"))
    assert 'the config differs at created: "1970-01-01T00:00:00Z" in the image, "1970-01-02T00:00:00Z" rebuilt' \
        in lines


def test_a_docker_archive_is_named_and_compared_by_its_config(tmp_path: Path,
                                                              read: Callable[[str], rebuild.Image]) -> None:
    desc = build_image(tmp_path / "layout", created=1700000000)
    transports.write(tmp_path / "layout", desc, parse_reference(f"docker-archive:{tmp_path / 'd.tar'}"))
    ocilayout.write(tmp_path / "layout", desc, tmp_path / "layout", "x")
    saved, layout = read(f"docker-archive:{tmp_path / 'd.tar'}"), read(f"oci:{tmp_path / 'layout'}:x")
    assert saved.digest == layout.platforms[0].config_digest
    assert rebuild.compare(saved, layout) == []
    other = build_image(tmp_path / "other", [{"etc/hostname": b"other\n"}], created=1700000000)
    ocilayout.write(tmp_path / "other", other, tmp_path / "other", "x")
    lines = rebuild.compare(saved, read(f"oci:{tmp_path / 'other'}:x"))
    assert lines[-1].startswith("/etc/hostname: size 9 in the image, 6 rebuilt; content sha256:")


def test_every_platform_of_an_index_is_compared(tmp_path: Path, read: Callable[[str], rebuild.Image]) -> None:
    locked = lockfile(("amd64", "arm64"))
    for name in ("a", "b"):
        layout = tmp_path / name
        manifests = [build(layout, arch, locked) for arch in ("amd64", "arm64")]
        if name == "b":
            manifests[1] = build(layout, "arm64", locked, annotations={"org.example.changed": "yes"})
        index = assemble.write_index(layout, manifests, {})
        ocilayout.write(layout, index, layout, "both")
    mine, other = read(f"oci:{tmp_path / 'a'}:both"), read(f"oci:{tmp_path / 'b'}:both")
    lines = rebuild.compare(mine, other)
    assert lines[0] == f"linux/amd64: reproduced {mine.platforms[0].digest}"
    assert lines[1] == f"linux/arm64/v8: image {mine.platforms[1].digest}, rebuilt {other.platforms[1].digest}"
    assert lines[2:] == ['  the manifest annotation org.example.changed: none in the image, "yes" rebuilt']


def test_without_a_lock_or_an_attestation_it_is_one_line_exit_2(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path / "layout", "amd64", lockfile(("amd64",)))
    ref = f"oci:{tmp_path / 'layout'}:amd64"
    assert main(["verify", ref, "--rebuild", "--cache-dir", str(tmp_path / "cache")]) == 2
    out, err = capsys.readouterr()
    assert out.startswith(f"{ref}: OK, 1 image(s)")
    assert err.strip().splitlines() == [f"ocistrap: error: {ref} carries no provenance attestation to take the "
                                        "lockfile from (give the lockfile with --lock FILE)"]


def test_a_lock_that_is_not_the_images_is_noted(tmp_path: Path, read: Callable[[str], rebuild.Image]) -> None:
    locked, other = lockfile(("amd64",)), lockfile(("amd64",), release="d" * 64)
    build(tmp_path, "amd64", locked)
    image_read = read(f"oci:{tmp_path}:amd64")
    assert rebuild.lock_notes(image_read, locked, "a.lock") == []
    assert rebuild.lock_notes(image_read, other, "b.lock") == \
        [f"note: the image names lockfile {locked.digest()}, not b.lock ({other.digest()})"]


def test_the_options_of_a_rebuild_are_refused_without_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", f"oci:{tmp_path}:x", "--offline", "--cache-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "ocistrap: error: --cache-dir, --offline only go with --rebuild"
