"""`--slim` end to end, as an unprivileged user against deb.debian.org: bookworm minbase with and
without it, from the same signed Release; the slim one also gets `hello` as a diff layer (dpkg
after the bootstrap, as in a derived image) and goes into podman's storage, where a Containerfile
FROM it installs more with apt-get.
"""

import json
import re
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
from e2e_helpers import (  # noqa: F401  (shared fixtures)
    PODMAN,
    cache_dir,
    locked,
    member_name,
    ocistrap,
    podman_env,
    podman_images,
    printed_digests,
    run,
    work,
)

from ocistrap.debian import lock
from ocistrap.oci import ocilayout
from ocistrap.rootfs import slim

pytestmark = [pytest.mark.e2e, pytest.mark.network]

STORAGE_NAME = "localhost/ocistrap-test/debian:slim"
DERIVED = "FROM {image}\nRUN apt-get update && apt-get install -y --no-install-recommends cpio\n"


@dataclass(frozen=True)
class Layer:
    """One layer blob: its member names, kinds and uncompressed size."""

    blob: Path

    @cached_property
    def entries(self) -> dict[str, bool]:
        """Normalized path -> whether dpkg's directory rule applies to it (directory or symlink)."""
        with tarfile.open(self.blob) as tar:
            return {member_name(m.name): m.isdir() or m.issym() for m in tar if member_name(m.name)}

    @cached_property
    def tar_size(self) -> int:
        with tarfile.open(self.blob) as tar:
            return sum(m.size for m in tar) + 512 * len(self.entries)


def layers_of(layout: Path) -> list[Layer]:
    _, desc = ocilayout.read(layout, "bookworm")
    return [Layer(ocilayout.blob_path(layout, d["digest"])) for d in ocilayout.read_json(layout, desc)["layers"]]


@pytest.fixture(scope="module")
def plain(work: Path, cache_dir: Path, locked) -> list[Layer]:
    layout = work / "plain-for-slim"
    ocistrap("build", "--lock", str(locked("bookworm")), "--cache-dir", str(cache_dir), "-o", f"oci:{layout}:bookworm")
    return layers_of(layout)


@pytest.fixture(scope="module")
def slimmed(work: Path, cache_dir: Path, locked, podman_images: list[str]) -> list[Layer]:
    lockfile = work / "slim.lock"
    ocistrap("lock", "bookworm", "--slim", "--layer=hello=hello", "--cache-dir", str(cache_dir), "-o", str(lockfile))
    releases = {a.releases for a in lock.read(lockfile).architectures.values()}
    assert releases == {a.releases for a in lock.read(locked("bookworm")).architectures.values()}, (
        "both images must come from the same signed Releases to be comparable")
    assert lock.read(lockfile).slim
    layout = work / "slim"
    podman_images.append(STORAGE_NAME)
    result = ocistrap("build", "--lock", str(lockfile), "--cache-dir", str(cache_dir), "--sbom", "spdx",
                      "-o", f"oci:{layout}:bookworm", "-o", f"containers-storage:{STORAGE_NAME}")
    assert len(set(printed_digests(result.stdout).values())) == 1, result.stdout
    return layers_of(layout)


# What maintainer scripts do differently when the files are absent: update-alternatives skips the
# slave links of missing manual pages, dash diverts sh.1.gz only if it is there (so dpkg-divert writes
# its file once, leaving no diversions-old), and base-files' postinst writes the info directory itself.
SCRIPTED_ONLY_IN_PLAIN = re.compile(r"(etc/alternatives|var/lib/dpkg/alternatives)/[^/]+\.[a-z]*[1-9]\.gz"
                                    r"|var/lib/dpkg/diversions-old")
SCRIPTED_ONLY_IN_SLIM = {"usr/share/info/dir"}


def test_slim_base_is_the_plain_tree_less_exactly_what_the_rules_exclude(plain, slimmed):
    base, = plain
    expected = {path for path, directory in base.entries.items()
                if not slim.skips("/" + path, directory=directory)} | {slim.CONFIG_PATH}
    ours = set(slimmed[0].entries)
    assert ours - expected == SCRIPTED_ONLY_IN_SLIM
    assert sorted(p for p in expected - ours if not SCRIPTED_ONLY_IN_PLAIN.fullmatch(p)) == []


def test_slim_base_keeps_copyrights_and_locale_alias_only(plain, slimmed):
    ours = slimmed[0].entries
    assert [p for p in ours if p.startswith("usr/share/doc/") and "/changelog" in p] == []
    assert [p for p in ours if p.startswith(("usr/share/man/", "usr/share/info/")) and not ours[p]
            and p not in SCRIPTED_ONLY_IN_SLIM] == []
    assert {p for p in ours if p.startswith("usr/share/locale/")} <= {"usr/share/locale/locale.alias"}
    copyrights = {p for p in plain[0].entries if p.startswith("usr/share/doc/") and p.endswith("/copyright")}
    assert len(copyrights) > 50 and copyrights <= set(ours)


def test_slim_image_is_smaller(plain, slimmed):
    before, after = plain[0], slimmed[0]
    print(f"\nbookworm minbase: {before.tar_size} -> {after.tar_size} bytes uncompressed, "
          f"{before.blob.stat().st_size} -> {after.blob.stat().st_size} bytes gzip, "
          f"{len(before.entries)} -> {len(after.entries)} entries")
    assert after.tar_size < 0.85 * before.tar_size
    assert after.blob.stat().st_size < before.blob.stat().st_size


def test_packages_installed_after_the_bootstrap_stay_slim(slimmed):
    _, hello = slimmed
    files = {p for p, directory in hello.entries.items() if not directory}
    assert {"usr/bin/hello", "usr/share/doc/hello/copyright"} <= files
    left_in = [p for p in files if p.startswith(("usr/share/doc/", "usr/share/man/", "usr/share/info/",
                                                  "usr/share/locale/")) and not p.endswith("/copyright")]
    assert left_in == []


def test_apt_get_in_a_derived_image_stays_slim(slimmed, podman_env, podman_images, tmp_path):
    config = run(*PODMAN, "run", "--rm", STORAGE_NAME, "cat", "/" + slim.CONFIG_PATH, env=podman_env)
    assert config == slim.config_text()
    (tmp_path / "Containerfile").write_text(DERIVED.format(image=STORAGE_NAME))
    tag = "localhost/ocistrap-test/derived:slim"
    podman_images.append(tag)
    run(*PODMAN, "build", "--layers=false", "--pull=never", "-t", tag, str(tmp_path), env=podman_env)
    found = run(*PODMAN, "run", "--rm", tag, "sh", "-c",
                "ls /usr/share/doc/cpio; ls /usr/share/man/man1/cpio.1.gz /usr/share/info/cpio.info.gz "
                "/usr/share/locale/de/LC_MESSAGES/cpio.mo 2>/dev/null; command -v cpio", env=podman_env)
    assert found.split() == ["copyright", "/usr/bin/cpio"]


def test_sbom_of_the_build_lists_the_locked_packages(slimmed, work):
    """(--sbom spdx rides along on the slim build.)"""
    printed = ocistrap("sbom", f"oci:{work / 'slim'}:bookworm").stdout
    assert printed == (work / "slim" / "bookworm.amd64.spdx.json").read_text()
    document = json.loads(printed)
    debs = {p["name"]: p for p in document["packages"] if p["SPDXID"].startswith("SPDXRef-Package-deb-")}
    locked = lock.read(work / "slim.lock").architectures["amd64"].packages
    assert {(p.name, p.version, p.sha256) for p in locked} == {
        (d["name"], d["versionInfo"], d["checksums"][0]["checksumValue"]) for d in debs.values()}
    assert "ok" in ocistrap("verify", f"oci:{work / 'slim'}", "--lock", str(work / "slim.lock")).stdout.lower()
