"""Bundles and old locks end to end, against bookworm minbase as deb.debian.org serves it.

The air-gapped workflow: locked, bundled into a loopback registry, built `--from` it with the
mirror unreachable (every request to anything but loopback goes to a dead proxy), into the very
image the mirror gives; `verify` passes. A .deb changed in the registry's storage is refused.

An old lock: the mirror moves on (a newer InRelease, its old index and one locked .deb gone)
and the build of the same lock, with a snapshot service on loopback keeping the archive as the
lock knew it, takes those files from there into the very same image. The lock names
deb.debian.org, and a build of a lock is refused another `--mirror` (the image's apt sources
and annotations name the lock's mirror); so the moved-on mirror is what this machine reaches
at that URL: a server on loopback given as the HTTP proxy, as a caching proxy would be.
"""

import os
import shutil
import urllib.parse
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from e2e_helpers import cache_dir, locked, ocistrap, printed_digests, work  # noqa: F401  (shared fixtures)
from registry_fixture import RealRegistry, registry  # noqa: F401  (fixture)
from repo_factory import Mirror, serving

from ocistrap.bundle import ANNOTATION_URL
from ocistrap.debian import lock as lockfile
from ocistrap.debian.lock import LockedPackage, Lockfile
from ocistrap.debian.snapshot import Snapshots, timestamp_of
from ocistrap.oci import ocilayout

pytestmark = [pytest.mark.e2e, pytest.mark.network]

DEAD_PROXY = "http://127.0.0.1:9"


def through_proxy(proxy: str) -> dict[str, str]:
    """The environment of a build whose every request but to loopback goes to PROXY."""
    return {**os.environ, "http_proxy": proxy, "https_proxy": proxy, "no_proxy": "127.0.0.1,localhost"}


@pytest.fixture(scope="module")
def from_mirror(locked: Callable[[str], Path], cache_dir: Path, work: Path) -> tuple[Path, str]:
    """bookworm minbase locked and built from deb.debian.org: (the lockfile, the image's digest)."""
    lock = locked("bookworm")
    built = ocistrap("build", "--lock", str(lock), "--cache-dir", str(cache_dir),
                     "-o", f"oci:{work / 'mirror'}:bookworm")
    (digest,) = printed_digests(built.stdout).values()
    return lock, digest


@pytest.fixture
def bundled(from_mirror: tuple[Path, str], cache_dir: Path, registry: RealRegistry) -> str:
    """The lock's bundle in the loopback registry: its reference."""
    ref = f"{registry.host}/bundles/bookworm:1"
    ocistrap("bundle", str(from_mirror[0]), "--cache-dir", str(cache_dir), "-o", f"docker://{ref}")
    return ref


def test_a_build_from_a_bundle_without_the_mirror_is_the_mirrors_image(
        from_mirror: tuple[Path, str], bundled: str, work: Path) -> None:
    lock, digest = from_mirror
    walled = through_proxy(DEAD_PROXY)
    cut = ocistrap("fetch", str(lock), "--cache-dir", str(work / "walled-cache"), "--snapshot", "off",
                   env=walled, check=False)
    assert cut.returncode == 1 and "cannot fetch" in cut.stderr, f"the wall must cut the mirror off: {cut.stderr}"
    inside = ocistrap("build", "--from", f"docker://{bundled}", "--cache-dir", str(work / "inside-cache"),
                      "-o", f"oci:{work / 'inside'}:bookworm", env=walled)
    assert set(printed_digests(inside.stdout).values()) == {digest}
    ocistrap("verify", f"oci:{work / 'inside'}:bookworm", "--lock", str(lock), env=walled)


def test_a_deb_changed_in_the_registrys_storage_is_refused_naming_the_package(
        from_mirror: tuple[Path, str], bundled: str, registry: RealRegistry, work: Path) -> None:
    package = next(p for p in lockfile.read(from_mirror[0]).architectures["amd64"].packages if p.name == "dash")
    data = registry.root / "storage/docker/registry/v2/blobs/sha256" / package.sha256[:2] / package.sha256 / "data"
    original = data.read_bytes()
    try:
        data.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        refused = ocistrap("build", "--from", f"docker://{bundled}", "--cache-dir", str(work / "tampered-cache"),
                           "-o", f"oci:{work / 'tampered'}:bookworm", env=through_proxy(DEAD_PROXY), check=False)
    finally:
        data.write_bytes(original)
    assert refused.returncode == 1, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("ocistrap: error:")]
    assert len(errors) == 1 and f"dash_{package.version}_amd64.deb" in errors[0], refused.stderr
    assert not (work / "tampered").exists()


# --- an old lock: the mirror has moved on, the snapshot service keeps what the lock names ----------


def served_at(root: Path, url: str) -> Path:
    """Where ROOT holds URL for a server used as the HTTP proxy (repo_factory.served_path)."""
    parts = urllib.parse.urlsplit(url)
    return root / parts.netloc / parts.path.lstrip("/")


def bundled_files(layout: Path) -> dict[str, Path]:
    """The bundle's files by the URL the mirror serves them at: the very bytes the build verified."""
    _, desc = ocilayout.read(layout, "files")
    layers = ocilayout.read_json(layout, desc)["layers"]
    return {d["annotations"][ANNOTATION_URL]: ocilayout.blob_path(layout, d["digest"])
            for d in layers if ANNOTATION_URL in d.get("annotations", {})}


def place(files: dict[str, Path], urls: list[str], to: Callable[[str], Path]) -> None:
    for url in urls:
        target = to(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[url], target)


def dropped_package(lock: Lockfile) -> LockedPackage:
    """A locked .deb of the main suite (not of -updates or -security): the one a point release drops."""
    return min((p for p in lock.architectures["amd64"].packages if p.archive == 0), key=lambda p: p.name)


@pytest.fixture(scope="module")
def moved_on(from_mirror: tuple[Path, str], cache_dir: Path, work: Path) -> Iterator[tuple[Mirror, Mirror, str]]:
    """A mirror as deb.debian.org would be after a point release, and the snapshot service:
    (the mirror, to be given as the HTTP proxy; the snapshot service; the kept archive's path in it).

    Both are made from the files the first build verified (its bundle): the mirror serves all
    but bookworm's index and one .deb, and another InRelease (a newer one would be signed by
    Debian; these bytes are never read past their digest); the snapshot service keeps bookworm's
    pinned InRelease, index and that .deb where snapshot.debian.org keeps them, in its first
    import after the lock's Release date, between an import before it (the Release not yet
    there) and a later one."""
    lock = lockfile.read(from_mirror[0])
    layout = work / "verified-files"
    ocistrap("bundle", str(from_mirror[0]), "--cache-dir", str(cache_dir), "-o", f"oci:{layout}:files")
    files = bundled_files(layout)
    main = lock.archives[0]
    suite_dir = main.url(f"dists/{main.suite}/")
    kept = {url for url in files if url.startswith(suite_dir)} | {lock.package_url(dropped_package(lock))}
    with serving(work / "moved-on") as mirror, serving(work / "snapshot") as snapshot:
        dated = datetime.fromisoformat(lock.architectures["amd64"].releases[0].date)
        before, first, later = (timestamp_of((dated + timedelta(hours=h)).isoformat()) for h in (-6, 2, 8))
        stamp_dir = Snapshots(snapshot.url).archive_url(main.mirror, first).removeprefix(snapshot.url + "/")
        for other in (before, later):
            (work / "snapshot" / stamp_dir.replace(first, other)).mkdir(parents=True)
        place(files, sorted(set(files) - kept), lambda url: served_at(mirror.root, url))
        place(files, sorted(kept), lambda url: work / "snapshot" / stamp_dir / url.removeprefix(main.mirror + "/"))
        inrelease = served_at(mirror.root, main.url(f"dists/{main.suite}/InRelease"))
        inrelease.parent.mkdir(parents=True, exist_ok=True)
        inrelease.write_bytes(files[main.url(f"dists/{main.suite}/InRelease")].read_bytes()
                              .replace(b"\nDate: ", b"\nDate: Sat, 01 Jan 2000 00:00:00 UTC\nX-Old-Date: ", 1))
        yield mirror, snapshot, stamp_dir


def test_an_old_lock_builds_the_same_image_with_what_left_the_mirror_from_the_snapshot_service(
        from_mirror: tuple[Path, str], moved_on: tuple[Mirror, Mirror, str], work: Path) -> None:
    lock_path, digest = from_mirror
    mirror, snapshot, kept = moved_on
    lock = lockfile.read(lock_path)
    gone, suite_dir = dropped_package(lock), f"{kept}/dists/{lock.suite}/"
    built = ocistrap("build", "--lock", str(lock_path), "--cache-dir", str(work / "old-lock-cache"),
                     "--snapshot-url", snapshot.url, "-o", f"oci:{work / 'old-lock'}:bookworm",
                     env=through_proxy(mirror.url))
    assert set(printed_digests(built.stdout).values()) == {digest}
    assert f"{suite_dir}InRelease" in snapshot.requests
    assert any(r.startswith(f"{suite_dir}main/binary-amd64/Packages") for r in snapshot.requests), snapshot.requests
    assert [r for r in snapshot.requests if r.endswith(".deb")] == [f"{kept}/{gone.filename}"]
    assert {r for r in snapshot.requests if not r.startswith(f"{kept}/")} == {kept.rsplit("/", 1)[0] + "/"}, \
        "besides the first import since the Release date, only the service's list of imports is read"
    asked = set(mirror.requests)
    assert all(served_at(Path(), lock.package_url(p)).as_posix() in asked
               for p in lock.architectures["amd64"].packages), "the mirror is asked first, for every .deb"
    assert "gone from the mirror" in built.stderr and "moved on from the pinned Release" in built.stderr


def test_an_old_lock_without_the_snapshot_service_is_refused_naming_the_pin(
        from_mirror: tuple[Path, str], moved_on: tuple[Mirror, Mirror, str], work: Path) -> None:
    mirror, snapshot, _ = moved_on
    asked = len(snapshot.requests)
    refused = ocistrap("fetch", str(from_mirror[0]), "--cache-dir", str(work / "no-snapshot-cache"),
                       "--snapshot", "off", env=through_proxy(mirror.url), check=False)
    assert refused.returncode == 1 and "pins the Release" in refused.stderr, refused.stderr
    assert len(snapshot.requests) == asked
