"""SBOMs: the SPDX document as a pure function of the lockfile, attached to images in oci: layouts and
registries (docker-registry on 127.0.0.1 without the referrers API, the fake one with it), read back."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from image_helpers import build, lockfile

from ocistrap import transports
from ocistrap.cli import main
from ocistrap.debian.lock import LockedArch, LockedArchive, LockedPackage, LockedRelease, Lockfile
from ocistrap.errors import ImageError
from ocistrap.oci import ocilayout, sbom
from ocistrap.oci.image import MEDIA_TYPE_INDEX, make_index
from ocistrap.transports import parse_reference
from ocistrap.transports.registry import api, attachments, upload
from ocistrap.verify import verify

CREATED = "2024-01-02T03:04:05Z"
SPDX_ID = re.compile(r"SPDXRef-[A-Za-z0-9.-]+")


def two_archive_lock() -> Lockfile:
    """amd64 packages from bookworm and bookworm-security, with and without their own source package."""
    releases = (LockedRelease("dists/bookworm/InRelease", "1" * 64, "2024-01-01T00:00:00+00:00", "stable", "bookworm"),
                LockedRelease("dists/bookworm-security/InRelease", "2" * 64, "2024-01-01T00:00:00+00:00",
                              "stable-security", "bookworm-security"))
    packages = (
        LockedPackage("libc6", "2.36-9+deb12u4", "amd64", "pool/updates/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb",
                      2, "a" * 64, "essential", source="glibc", archive=1),
        LockedPackage("bash", "5.2.15-2+b2", "amd64", "pool/main/b/bash/bash_5.2.15-2+b2_amd64.deb", 3, "b" * 64,
                      "essential", source="bash (5.2.15-2)"),
        LockedPackage("mawk", "1.3.4.20200120-3.1", "amd64", "pool/main/m/mawk/mawk_1.3.4.20200120-3.1_amd64.deb", 4,
                      "c" * 64, "essential"),
    )
    return Lockfile(mirror="http://deb.debian.org/debian", suite="bookworm", components=("main",), variant="minbase",
                    include=(), install_recommends=False,
                    archives=(LockedArchive("http://deb.debian.org/debian", "bookworm"),
                              LockedArchive("http://deb.debian.org/debian-security", "bookworm-security")),
                    architectures={"amd64": LockedArch(releases=releases, packages=packages)})


def check_spdx_shape(doc: dict) -> None:
    """The parts of the SPDX 2.3 JSON schema a consumer relies on."""
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["dataLicense"] == "CC0-1.0" and doc["SPDXID"] == "SPDXRef-DOCUMENT"
    assert doc["name"] and re.fullmatch(r"https://\S+", doc["documentNamespace"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", doc["creationInfo"]["created"])
    assert all(re.fullmatch(r"(Tool|Organization|Person): .+", c) for c in doc["creationInfo"]["creators"])
    ids = [p["SPDXID"] for p in doc["packages"]]
    assert len(ids) == len(set(ids)) and all(SPDX_ID.fullmatch(i) for i in ids)
    for package in doc["packages"]:
        assert package["name"] and package["downloadLocation"].startswith("http")
        assert package["filesAnalyzed"] is False
        assert [c["algorithm"] for c in package["checksums"]] == ["SHA256"]
        assert re.fullmatch(r"[0-9a-f]{64}", package["checksums"][0]["checksumValue"])
    known = set(ids) | {"SPDXRef-DOCUMENT"}
    for rel in doc["relationships"]:
        assert rel["spdxElementId"] in known and rel["relatedSpdxElement"] in known
        assert rel["relationshipType"] in ("DESCRIBES", "DESCRIBED_BY")


def test_spdx_lists_every_package_with_source_hash_location_and_release() -> None:
    locked = two_archive_lock()
    doc = sbom.spdx(locked, "amd64", created=CREATED)
    check_spdx_shape(doc)
    debs = {p["name"]: p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-Package-deb-")}
    assert sorted(debs) == ["bash", "libc6", "mawk"]
    libc = debs["libc6"]
    assert libc["versionInfo"] == "2.36-9+deb12u4"
    assert libc["downloadLocation"] == ("http://deb.debian.org/debian-security/"
                                        "pool/updates/main/g/glibc/libc6_2.36-9+deb12u4_amd64.deb")
    assert libc["checksums"][0]["checksumValue"] == "a" * 64
    assert "source package glibc 2.36-9+deb12u4" in libc["sourceInfo"]
    assert libc["externalRefs"][0]["referenceLocator"] == \
        "pkg:deb/debian/libc6@2.36-9+deb12u4?arch=amd64&distro=debian-bookworm&upstream=glibc"
    assert debs["bash"]["externalRefs"][0]["referenceLocator"].endswith("&upstream=bash%405.2.15-2")
    assert "upstream" not in debs["mawk"]["externalRefs"][0]["referenceLocator"]

    releases = {p["SPDXID"]: p for p in doc["packages"] if p["SPDXID"].startswith("SPDXRef-Release-")}
    described_by = {r["spdxElementId"]: releases[r["relatedSpdxElement"]] for r in doc["relationships"]
                    if r["relationshipType"] == "DESCRIBED_BY"}
    security = described_by[libc["SPDXID"]]
    assert security["downloadLocation"] == "http://deb.debian.org/debian-security/dists/bookworm-security/InRelease"
    assert security["checksums"][0]["checksumValue"] == "2" * 64
    assert described_by[debs["bash"]["SPDXID"]]["checksums"][0]["checksumValue"] == "1" * 64
    described = {r["relatedSpdxElement"] for r in doc["relationships"] if r["relationshipType"] == "DESCRIBES"}
    assert described == {p["SPDXID"] for p in debs.values()}


def test_spdx_is_a_function_of_the_lockfile() -> None:
    locked = two_archive_lock()
    first = sbom.document_bytes(sbom.spdx(locked, "amd64", created=CREATED))
    assert first == sbom.document_bytes(sbom.spdx(two_archive_lock(), "amd64", created=CREATED))
    other = replace(locked, include=("hello",))
    assert json.loads(sbom.document_bytes(sbom.spdx(other, "amd64", created=CREATED)))["documentNamespace"] != \
        json.loads(first)["documentNamespace"], "another lock is another document"
    with pytest.raises(ImageError, match="no arm64 packages"):
        sbom.spdx(locked, "arm64", created=CREATED)


def attach(layout: Path, arch: str, locked: Lockfile) -> tuple:
    desc = build(layout, arch, locked)
    attached = sbom.attach_all(layout, locked, [(arch, desc)], created=CREATED)
    return desc, attached


def test_oci_layout_keeps_the_sbom_as_a_referrer_and_a_file(tmp_path: Path, capsys) -> None:
    locked = lockfile(("amd64",))
    desc, attached = attach(tmp_path / "build", "amd64", locked)
    ref = parse_reference(f"oci:{tmp_path / 'out'}:bookworm")
    ocilayout.write(tmp_path / "build", desc, ref.path, "bookworm")
    transports.attach(tmp_path / "build", attached, ref)

    expected = sbom.document_bytes(sbom.spdx(locked, "amd64", created=CREATED))
    assert (tmp_path / "out" / "bookworm.amd64.spdx.json").read_bytes() == expected
    assert main(["-q", "sbom", str(ref)]) == 0
    assert capsys.readouterr().out.encode() == expected
    entries = json.loads((tmp_path / "out" / "index.json").read_text())["manifests"]
    assert len(entries) == 2 and verify(f"oci:{tmp_path / 'out'}").manifests == 1, "the artifact is checked too"
    artifact = ocilayout.read_json(tmp_path / "out", attached[0].manifest)
    assert artifact["subject"]["digest"] == desc.digest and artifact["artifactType"] == sbom.MEDIA_TYPE_SPDX


def test_registry_without_referrers_api_gets_the_tag_fallback_and_sbom_reads_it(registry, tmp_path, capsys) -> None:
    locked = lockfile()
    layout = tmp_path / "build"
    descs = {arch: build(layout, arch, locked) for arch in ("amd64", "arm64")}
    attached = sbom.attach_all(layout, locked, list(descs.items()), created=CREATED)
    top = ocilayout.put_json(layout, make_index(list(descs.values())), MEDIA_TYPE_INDEX)
    ref = parse_reference(f"docker://{registry.host}/debian:multi")
    upload.push(layout, top, ref)
    transports.attach(layout, attached, ref)

    repo, _ = api.open_repository(ref)
    assert repo.get_manifest(attachments.referrers_tag(descs["arm64"].digest)) is not None
    assert main(["-q", "sbom", f"{registry.host}/debian:multi", "--arch", "arm64"]) == 0
    assert capsys.readouterr().out.encode() == sbom.document_bytes(sbom.spdx(locked, "arm64", created=CREATED))
    assert main(["-q", "sbom", f"{registry.host}/debian:multi"]) == 1
    assert "multi-architecture index" in capsys.readouterr().err
    assert main(["-q", "sbom", f"{registry.host}/debian@{descs['amd64'].digest}"]) == 0
    assert b'"name": "debian-bookworm-minbase-amd64"' in capsys.readouterr().out.encode()


def test_registry_with_referrers_api(fake_registry, tmp_path, capsys) -> None:
    fake_registry.state.referrers_api = True
    locked = lockfile(("amd64",))
    desc, attached = attach(tmp_path / "build", "amd64", locked)
    ref = parse_reference(f"docker://{fake_registry.host}/debian:one")
    upload.push(tmp_path / "build", desc, ref)
    transports.attach(tmp_path / "build", attached, ref)
    assert not [t for t in fake_registry.state.tags.get("debian", {}) if t.startswith("sha256-")]
    assert main(["-q", "sbom", f"{fake_registry.host}/debian:one"]) == 0
    assert json.loads(capsys.readouterr().out)["packages"][0]["name"] == "base-files"


def test_image_without_sbom_is_a_clear_error(registry, tmp_path, capsys) -> None:
    desc = build(tmp_path / "build", "amd64", lockfile(("amd64",)))
    upload.push(tmp_path / "build", desc, parse_reference(f"docker://{registry.host}/debian:bare"))
    assert main(["-q", "sbom", f"{registry.host}/debian:bare"]) == 1
    err = capsys.readouterr().err
    assert "no SPDX SBOM is attached" in err and "--sbom spdx" in err


def test_verify_takes_a_bare_registry_reference(fake_registry, tmp_path, capsys) -> None:
    """One reference grammar: what `push`, `sbom` and `--push` take, `verify` takes too."""
    desc = build(tmp_path / "build", "amd64", lockfile(("amd64",)))
    upload.push(tmp_path / "build", desc, parse_reference(f"docker://{fake_registry.host}/debian:bookworm"))
    assert main(["-q", "verify", f"{fake_registry.host}/debian:bookworm"]) == 0
    assert capsys.readouterr().out.startswith(f"docker://{fake_registry.host}/debian:bookworm: OK, 1 image(s)")
