"""SLSA v1 provenance from a lockfile: the schemas, the dependencies, and the signed envelope."""

import copy
import json
from pathlib import Path

import pytest

from ocistrap import schema
from ocistrap.debian.lock import LockedArch, LockedArchive, LockedLayer, LockedPackage, LockedRelease, Lockfile
from ocistrap.errors import ImageError
from ocistrap.oci import keys, provenance, signature

DIGEST = "sha256:" + "12" * 32
FPR = "0123456789ABCDEF0123456789ABCDEF01234567"


def package(name: str, arch: str, archive: int = 0) -> LockedPackage:
    return LockedPackage(name=name, version="1.0", architecture=arch, filename=f"pool/main/{name}_1.0_{arch}.deb",
                         size=10, sha256=(name[0] * 64)[:64].replace(name[0], "a"), stage="essential", archive=archive)


def release(suite: str) -> LockedRelease:
    return LockedRelease(path=f"dists/{suite}/InRelease", sha256="e" * 64, date="2026-01-01T00:00:00+00:00",
                         suite="stable", codename="bookworm", keys=(FPR,))


LOCK = Lockfile(
    mirror="http://deb.example/debian", suite="bookworm", components=("main",), variant="minbase", include=("vim",),
    install_recommends=False,
    archives=(LockedArchive("http://deb.example/debian", "bookworm"),
              LockedArchive("http://deb.example/debian-security", "bookworm-security")),
    architectures={arch: LockedArch(releases=(release("bookworm"), release("bookworm-security")),
                                    packages=(package("base-files", arch), package("tzdata", "all", archive=1)))
                   for arch in ("amd64", "arm64")},
    layers=(LockedLayer("editor", ("vim",)),))
RUN = provenance.Run(started_on=1700000000, invocation_id="run-1")


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> keys.PrivateKey:
    directory = tmp_path_factory.mktemp("key")
    keys.generate(directory / "s.key", directory / "s.pub", "")
    return keys.load_private(directory / "s.key")


def make() -> dict:  # type: ignore[type-arg]
    return provenance.statement("registry.example/debian:bookworm", DIGEST, LOCK, provenance.parameters_from_lock(LOCK), RUN)


def test_statement_is_an_in_toto_statement_with_slsa_provenance() -> None:
    document = make()
    assert document["_type"] == "https://in-toto.io/Statement/v1"
    assert document["predicateType"] == "https://slsa.dev/provenance/v1"
    assert document["subject"] == [{"name": "registry.example/debian:bookworm", "digest": {"sha256": "12" * 32}}]
    run = document["predicate"]["runDetails"]
    assert run["metadata"] == {"invocationId": "run-1", "startedOn": "2023-11-14T22:13:20Z"}
    assert run["builder"]["version"]["ocistrap"]
    assert document["predicate"]["buildDefinition"]["externalParameters"]["layers"] == \
        [{"name": "editor", "packages": ["vim"]}]
    assert document["predicate"]["buildDefinition"]["internalParameters"]["lockfile"]["sha256"] == \
        LOCK.digest().removeprefix("sha256:")


def test_resolved_dependencies_are_every_deb_and_release_once() -> None:
    dependencies = make()["predicate"]["buildDefinition"]["resolvedDependencies"]
    uris = [d["uri"] for d in dependencies]
    assert len(uris) == len(set(uris)) == 2 + 3  # two Releases; base-files twice, tzdata (all) once
    releases = [d for d in dependencies if d["uri"].endswith("/InRelease")]
    assert releases[0]["uri"] == "http://deb.example/debian/dists/bookworm/InRelease"
    assert all(r["annotations"]["keyringFingerprints"] == [FPR] and r["digest"] == {"sha256": "e" * 64}
               for r in releases)
    tzdata = next(d for d in dependencies if d["name"] == "tzdata")
    assert tzdata["uri"] == "http://deb.example/debian-security/pool/main/tzdata_1.0_all.deb"
    assert tzdata["annotations"] == {"version": "1.0", "architecture": "all"}
    assert tzdata["digest"]["sha256"] == LOCK.architectures["amd64"].packages[1].sha256


@pytest.mark.parametrize("breaks", [
    lambda d: d["subject"][0].pop("digest"),
    lambda d: d.update(_type="https://in-toto.io/Statement/v0.1"),
    lambda d: d["predicate"]["buildDefinition"].pop("buildType"),
    lambda d: d["predicate"]["runDetails"]["builder"].pop("id"),
    lambda d: d["predicate"]["runDetails"]["metadata"].update(startedOn="yesterday"),
    lambda d: d["predicate"]["buildDefinition"]["resolvedDependencies"].append({"name": "nothing to find it by"}),
    lambda d: d.update(predicateType="https://spdx.dev/Document"),
])
def test_invalid_statements_fail_the_schemas(breaks) -> None:  # type: ignore[no-untyped-def]
    document = copy.deepcopy(make())
    breaks(document)
    with pytest.raises(schema.SchemaError):
        provenance.validate(document)


def test_attestation_round_trip(signer: keys.PrivateKey) -> None:
    envelope = provenance.attest(signer, make())
    assert json.loads(envelope)["payloadType"] == "application/vnd.in-toto+json"
    assert provenance.verify(envelope, signer.public, DIGEST) == make()


def test_attestation_refusals(signer: keys.PrivateKey, tmp_path: Path) -> None:
    envelope = provenance.attest(signer, make())
    with pytest.raises(signature.ImageSignatureError, match="about another image"):
        provenance.verify(envelope, signer.public, "sha256:" + "34" * 32)
    other = keys.generate(tmp_path / "o.key", tmp_path / "o.pub", "")
    with pytest.raises(signature.ImageSignatureError, match="not signed by the given key"):
        provenance.verify(envelope, other, DIGEST)
    broken = make()
    broken["predicate"]["buildDefinition"].pop("buildType")
    with pytest.raises(signature.ImageSignatureError, match="buildDefinition"):
        provenance.verify(signature.dsse_envelope(signer, json.dumps(broken).encode()), signer.public, DIGEST)


def test_the_statement_carries_the_lockfile_itself() -> None:
    document = make()
    assert provenance.lockfile_bytes(document) == LOCK.dumps()
    resource = document["predicate"]["buildDefinition"]["externalParameters"]["lockfile"]
    assert resource["mediaType"] == provenance.MEDIA_TYPE_LOCKFILE
    assert resource["digest"]["sha256"] == LOCK.digest().removeprefix("sha256:")


def test_a_lockfile_that_is_not_the_stated_one_is_refused() -> None:
    other = make()
    other_lock = provenance.lockfile_resource(Lockfile(**{**vars(LOCK), "include": ("nano",)}))
    other["predicate"]["buildDefinition"]["externalParameters"]["lockfile"]["content"] = other_lock["content"]
    with pytest.raises(ImageError, match="not to the digest"):
        provenance.lockfile_bytes(other)
    del other["predicate"]["buildDefinition"]["externalParameters"]["lockfile"]
    with pytest.raises(ImageError, match="carries no lockfile"):
        provenance.lockfile_bytes(other)


def test_an_unverified_statement_is_read_from_any_envelope(signer: keys.PrivateKey) -> None:
    assert provenance.unverified_statement(provenance.attest(signer, make())) == make()
    with pytest.raises(ImageError, match="not a DSSE envelope"):
        provenance.unverified_statement(b"{}")
    wrong = signature.dsse_envelope(signer, json.dumps(make()).encode(), payload_type="text/plain")
    with pytest.raises(ImageError, match="payload type"):
        provenance.unverified_statement(wrong)
