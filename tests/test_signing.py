"""`--sign` and `verify --key` end to end without Debian: small images written to oci: layouts and to
Debian's docker-registry on 127.0.0.1, signed, attested, then checked and refused case by case."""

import json
import subprocess
from pathlib import Path

import pytest
from image_helpers import build, lockfile

from ocistrap import signing, transports
from ocistrap.cli import main
from ocistrap.oci import assemble, keys, ocilayout, provenance, signature
from ocistrap.oci.image import Descriptor
from ocistrap.transports import parse_reference
from ocistrap.transports.registry import api
from ocistrap.verify import check_signatures

pytestmark = pytest.mark.usefixtures("isolated_home")
NAME = "registry.example/debian"
RUN = provenance.Run(started_on=1700000000, invocation_id="00000000-0000-4000-8000-000000000000")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("key")
    keys.generate(directory / "s.key", directory / "s.pub", "")
    return directory / "s.key", directory / "s.pub"


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("other")
    keys.generate(directory / "o.key", directory / "o.pub", "")
    return directory / "o.key", directory / "o.pub"


def multi_arch(layout: Path) -> Descriptor:
    """An index over an amd64 and an arm64 image in LAYOUT, as a build of two architectures makes."""
    locked = lockfile()
    manifests = [build(layout, arch, locked) for arch in ("amd64", "arm64")]
    return assemble.write_index(layout, manifests, {})


def write_signed(layout: Path, top: Descriptor, text: str, key_path: Path, *, attest: bool = True) -> None:
    """What `build --sign -o TEXT` does once the image is in LAYOUT."""
    key = keys.load_private(key_path)
    ref, ctx = parse_reference(text), transports.Context()
    attached = [signing.attest(key, layout, lockfile(), top, signing.places([ref])[0], RUN)] if attest else []
    transports.write(layout, top, ref, ctx)
    transports.attach(layout, attached, ref, ctx)
    signing.sign_image(key, ref, top, ctx)


def verdict(text: str, pub: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["-q", "verify", text, "--key", str(pub)])
    out, err = capsys.readouterr()
    return rc, out, err


# --- oci: layouts ---------------------------------------------------------------------------

def test_a_signed_index_verifies_with_its_key_and_its_provenance(pair, tmp_path, capsys) -> None:
    top = multi_arch(tmp_path / "build")
    write_signed(tmp_path / "build", top, f"oci:{tmp_path}/out:{NAME}:bookworm", pair[0])

    rc, out, err = verdict(f"oci:{tmp_path}/out:{NAME}:bookworm", pair[1], capsys)
    assert (rc, err) == (0, "")
    assert f"3 digest(s) signed by the given key for {NAME}:bookworm" in out
    assert "SLSA v1 provenance signed by the given key, 3 resolved dependencies" in out
    tags = ocilayout.tags(tmp_path / "out")
    assert f"{NAME}:{signature.signature_tag(top.digest)}" in tags
    assert (tmp_path / "out" / f"{NAME.replace('/', '_')}:bookworm.{provenance.FILE_NAME}").is_file()
    assert main(["-q", "verify", f"oci:{tmp_path}/out"]) == 0, "a layout holding signature images still verifies"


def test_refusals_in_a_layout(pair, other, tmp_path, capsys) -> None:
    layout, out = tmp_path / "build", tmp_path / "out"
    top = multi_arch(layout)
    other_image = build(layout, "amd64", lockfile(("amd64",)), annotations={"x": "another image"})
    write_signed(layout, top, f"oci:{out}:{NAME}:bookworm", pair[0])
    transports.write(layout, top, parse_reference(f"oci:{out}:{NAME}:unsigned"))
    transports.write(layout, top, parse_reference(f"oci:{out}:elsewhere/debian:unsigned"))
    transports.write(layout, top, parse_reference(f"oci:{out}:bookworm"))
    write_signed(layout, top, f"oci:{out}:{NAME}:stranger", other[0])
    transports.write(layout, other_image, parse_reference(f"oci:{out}:{NAME}:copied"))
    signatures = ocilayout.tags(out)[f"{NAME}:{signature.signature_tag(top.digest)}"]
    ocilayout.write(out, signatures, out, f"{NAME}:{signature.signature_tag(other_image.digest)}")

    cases = {
        "elsewhere/debian:unsigned": "is unsigned: no signature in sha256-",
        f"{NAME}:copied": f"the signature is for {top.digest}, not {other_image.digest}",
        f"{NAME}:unsigned": f"the signature is for {NAME}:bookworm, which does not match",
        "bookworm": "names no image reference to check signatures against",
    }
    for tag, reason in cases.items():
        rc, _, err = verdict(f"oci:{out}:{tag}", pair[1], capsys)
        assert rc != 0 and reason in err and len(err.splitlines()) == 1, (tag, err)
    rc, _, err = verdict(f"oci:{out}:{NAME}:bookworm", other[1], capsys)
    assert rc == 1 and f"the signature is for {NAME}:stranger, which does not match" in err, \
        "the other key signed this digest, but as another reference"
    assert verdict(f"oci:{out}:{NAME}:stranger", other[1], capsys)[0] == 0


def test_signing_again_keeps_the_signatures_already_there(pair, other, tmp_path, capsys) -> None:
    layout, out = tmp_path / "build", tmp_path / "out"
    top = build(layout, "amd64", lockfile(("amd64",)))
    for tag, key in (("bookworm", pair[0]), ("latest", pair[0]), ("latest", pair[0]), ("latest", other[0])):
        write_signed(layout, top, f"oci:{out}:{NAME}:{tag}", key, attest=False)
    stored = json.loads(ocilayout.blob_path(out, ocilayout.tags(out)[
        f"{NAME}:{signature.signature_tag(top.digest)}"].digest).read_bytes())
    assert len(stored["layers"]) == 3, "bookworm and latest by one key (once), latest by the other"
    for tag in ("bookworm", "latest"):
        rc, out_text, err = verdict(f"oci:{out}:{NAME}:{tag}", pair[1], capsys)
        assert rc == 0, err
        assert "no provenance attestation attached" in out_text


@pytest.mark.parametrize("case", ["another key", "another image"])
def test_provenance_of_another_key_or_image_is_refused(pair, other, tmp_path, case) -> None:
    layout = tmp_path / "build"
    top = build(layout, "amd64", lockfile(("amd64",)))
    elsewhere = build(layout, "arm64", lockfile(("arm64",)))
    ref = parse_reference(f"oci:{tmp_path}/out:{NAME}:bookworm")
    key = keys.load_private(pair[0])
    transports.write(layout, top, ref)
    signing.sign_image(key, ref, top, transports.Context())
    if case == "another key":
        attached = signing.attest(keys.load_private(other[0]), layout, lockfile(("amd64",)), top,
                                  signing.places([ref])[0], RUN)
        message = "the attestation is not signed by the given key"
    else:
        envelope = provenance.attest(key, provenance.statement(NAME, elsewhere.digest, lockfile(("arm64",)), {}, RUN))
        attached = ocilayout.Referrer(provenance.write_artifact(layout, envelope, top), provenance.FILE_NAME)
        message = f"the attestation is about another image, not {top.digest}"
    transports.attach(layout, [attached], ref)
    with pytest.raises(signature.ImageSignatureError, match=message):
        check_signatures(ref, key.public)


# --- what --sign refuses before any work --------------------------------------------------------

@pytest.mark.parametrize("output", ["oci:out:bookworm", "oci:out", "docker-archive:x.tar", "tar:x.tar",
                                    "oci-archive:x.tar:registry.example/debian:bookworm"])
def test_sign_refuses_outputs_that_name_no_identity_before_building(pair, tmp_path, capsys, output) -> None:
    rc = main(["-q", "build", "bookworm", "--offline", "--cache-dir", str(tmp_path / "cache"),
               "--sign", str(pair[0]), "-o", output])
    _, err = capsys.readouterr()
    assert rc == 2 and "--sign:" in err and "names no image reference" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "cache").exists()


# --- registries ------------------------------------------------------------------------------

def test_push_and_index_sign_in_a_registry(registry, pair, other, tmp_path, capsys) -> None:
    locked = lockfile()
    layouts = {arch: tmp_path / arch for arch in ("amd64", "arm64")}
    images = {arch: build(layout, arch, locked) for arch, layout in layouts.items()}
    for arch, layout in layouts.items():
        assert main(["-q", "push", f"oci:{layout}:{arch}", f"{registry.host}/ci/{arch}:1",
                     "--sign", str(pair[0])]) == 0
    assert main(["-q", "push", f"oci:{layouts['amd64']}:amd64", f"{registry.host}/ci/amd64:unsigned"]) == 0
    assert main(["-q", "index", f"{registry.host}/debian:bookworm", f"{registry.host}/ci/amd64:1",
                 f"{registry.host}/ci/arm64:1", "--sign", str(pair[0])]) == 0
    capsys.readouterr()

    rc, out, err = verdict(f"{registry.host}/debian:bookworm", pair[1], capsys)
    assert rc == 0 and "3 digest(s) signed" in out, err
    assert verdict(f"{registry.host}/ci/arm64:1", pair[1], capsys)[0] == 0
    assert verdict(f"{registry.host}/ci/arm64@{images['arm64'].digest}", pair[1], capsys)[0] == 0
    rc, _, err = verdict(f"{registry.host}/ci/amd64:unsigned", pair[1], capsys)
    assert rc == 1 and "does not match" in err, "same digest, signed only as ci/amd64:1"
    rc, _, err = verdict(f"{registry.host}/debian:bookworm", other[1], capsys)
    assert rc == 1 and "not by the given key" in err
    repo, _ = api.open_repository(parse_reference(f"{registry.host}/ci/amd64:1"))
    assert repo.get_manifest(signature.signature_tag(images["amd64"].digest)) is not None


@pytest.mark.parametrize("problem,message", [
    ("wrong passphrase", "wrong passphrase for key"),
    ("public key", "is a public key; signing needs the private key"),
    ("unreadable", "cannot read key"),
    ("another type", "ocistrap signs with ECDSA P-256 keys"),
])
def test_key_problems_are_one_line_exit_2_and_nothing_is_pushed(registry, pair, tmp_path, capsys, monkeypatch,
                                                                problem, message) -> None:
    encrypted = tmp_path / "e"
    keys.generate(encrypted.with_suffix(".key"), encrypted.with_suffix(".pub"), "right")
    rsa = tmp_path / "rsa.key"
    if problem == "another type":
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024",
                        "-out", str(rsa)], check=True, capture_output=True)
    key = {"wrong passphrase": encrypted.with_suffix(".key"), "public key": pair[1],
           "unreadable": tmp_path / "missing.key", "another type": rsa}[problem]
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong")
    build(tmp_path / "src", "amd64", lockfile(("amd64",)))
    rc = main(["-q", "push", f"oci:{tmp_path}/src:amd64", f"{registry.host}/debian:bookworm", "--sign", str(key)])
    _, err = capsys.readouterr()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    repo, _ = api.open_repository(parse_reference(f"{registry.host}/debian:bookworm"))
    assert repo.get_manifest("bookworm") is None

    rc = main(["-q", "build", "bookworm", "--offline", "--cache-dir", str(tmp_path / "cache"), "--sign", str(key),
               "-o", f"oci:{tmp_path}/out:{registry.host}/debian:bookworm"])
    _, err = capsys.readouterr()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists(), "refused before any work"
