"""Bundles (`ocistrap bundle`, `fetch --from`) and the snapshot service as the mirror of last resort.

A bundle is served to the same checks as a mirror: a changed .deb, or an
InRelease re-signed by another key (with the bundle's lockfile pinning it), is
refused; a registry is sent only the blobs it lacks. The snapshot service is a
server on loopback keeping the archive as it was when the lock was made.
"""

import hashlib
import json
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import requests
from lockfetch_support import (  # noqa: F401  (fixtures)
    SUITE,
    Archive,
    archive,
    assert_cache_verified,
    assert_one_error,
    fast_fetcher,
    template,
)
from registry_fixture import FakeRegistry, fake_registry  # noqa: F401  (fixture)
from repo_factory import SigningKey, serving

from ocistrap.bundle import ARTIFACT_TYPE, MEDIA_TYPE_DEB, MEDIA_TYPE_LOCKFILE, MEDIA_TYPE_RELEASE
from ocistrap.debian import lock as lockfile
from ocistrap.debian.snapshot import Snapshots, first_import, listing_months, timestamp_of
from ocistrap.oci import ocilayout
from ocistrap.oci.image import MEDIA_TYPE_MANIFEST, Descriptor, canonical_json


@pytest.fixture
def locked(archive: Archive) -> Archive:
    rc, _, err = archive.lock()
    assert rc == 0, err
    return archive


def bundle(archive: Archive, dest: str, lock: Path | None = None) -> str:
    rc, out, err = archive.run("bundle", str(lock or archive.lockfile), "-o", dest, *archive.common())
    assert rc == 0, err
    return out.split()[-1]


def fetch_from(archive: Archive, ref: str, cache: Path, *extra: str) -> tuple[int, str, str]:
    return archive.run("fetch", "--from", ref, "--keyring", str(archive.keyring), "--cache-dir", str(cache), *extra)


def manifest_of(layout: Path, tag: str) -> tuple[Descriptor, dict]:
    _, desc = ocilayout.read(layout, tag)
    return desc, ocilayout.read_json(layout, desc)


def cut_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("network used"))


def test_a_bundle_holds_the_lock_its_releases_indices_and_debs(locked: Archive, tmp_path: Path) -> None:
    bundle(locked, f"oci:{tmp_path / 'b'}:one")
    _, manifest = manifest_of(tmp_path / "b", "one")
    assert manifest["artifactType"] == ARTIFACT_TYPE
    layers = manifest["layers"]
    lock = lockfile.read(locked.lockfile)
    debs = {layer["digest"] for layer in layers if layer["mediaType"] == MEDIA_TYPE_DEB}
    assert debs == {f"sha256:{p.sha256}" for p in lock.architectures["amd64"].packages}
    urls = {layer["annotations"].get("dev.ocistrap.url") for layer in layers}
    assert f"{locked.mirror.url}/dists/{SUITE}/InRelease" in urls
    assert f"{locked.mirror.url}/dists/{SUITE}/main/binary-amd64/Packages.xz" in urls
    assert [layer["mediaType"] for layer in layers].count(MEDIA_TYPE_LOCKFILE) == 1


def test_fetch_from_a_layout_bundle_needs_no_network(locked: Archive, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ref = f"oci:{tmp_path / 'b'}:one"
    bundle(locked, ref)
    cut_network(monkeypatch)
    cache = tmp_path / "fresh-cache"
    rc, out, err = fetch_from(locked, ref, cache)
    assert rc == 0, err
    lock = lockfile.read(locked.lockfile)
    for package in lock.architectures["amd64"].packages:
        assert (cache / "blobs" / "sha256" / package.sha256).is_file()
    assert_cache_verified(cache)


def test_a_changed_deb_in_the_bundle_is_refused_naming_the_package(locked: Archive, tmp_path: Path) -> None:
    ref = f"oci:{tmp_path / 'b'}:one"
    bundle(locked, ref)
    dash = next(p for p in lockfile.read(locked.lockfile).architectures["amd64"].packages if p.name == "dash")
    blob = tmp_path / "b" / "blobs" / "sha256" / dash.sha256
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    rc, _, err = fetch_from(locked, ref, tmp_path / "fresh-cache")
    assert_one_error(rc, err, "dash_0.5-1_amd64.deb", "SHA256 mismatch")
    assert_cache_verified(tmp_path / "fresh-cache")


def _replace_layers(layout: Path, tag: str, replace: dict[str, tuple[bytes, str]]) -> None:
    """Swap the layers whose URL annotation (or media type) is a key of REPLACE for new bytes,
    and re-tag a manifest naming them: what someone holding the bundle can do."""
    old_desc, manifest = manifest_of(layout, tag)
    layers = []
    for layer in manifest["layers"]:
        key = layer.get("annotations", {}).get("dev.ocistrap.url", layer["mediaType"])
        if key in replace:
            data, media_type = replace[key]
            ocilayout.put_bytes(layout, data)
            layer = Descriptor.of(data, media_type, annotations=layer.get("annotations", {})).to_json()
        layers.append(layer)
    manifest["layers"] = layers
    desc = ocilayout.put_json(layout, manifest, MEDIA_TYPE_MANIFEST)
    index = ocilayout.load_index(layout)
    index["manifests"] = [desc.with_annotations({**old_desc.annotations}).to_json()]
    (layout / "index.json").write_bytes(canonical_json(index))


def test_an_inrelease_resigned_by_another_key_is_refused_even_when_the_bundled_lock_pins_it(
        locked: Archive, tmp_path: Path, other_key: SigningKey) -> None:
    ref = f"oci:{tmp_path / 'b'}:one"
    bundle(locked, ref)
    url = f"{locked.mirror.url}/dists/{SUITE}/InRelease"
    forged = other_key.clearsign(locked.original(locked.dist("Release")))
    lock = lockfile.read(locked.lockfile)
    text = lock.dumps().decode().replace(lock.architectures["amd64"].releases[0].sha256,
                                         hashlib.sha256(forged).hexdigest())
    _replace_layers(tmp_path / "b", "one", {url: (forged, MEDIA_TYPE_RELEASE),
                                            MEDIA_TYPE_LOCKFILE: (text.encode(), MEDIA_TYPE_LOCKFILE)})
    rc, _, err = fetch_from(locked, ref, tmp_path / "fresh-cache")
    assert_one_error(rc, err, "InRelease", other_key.fingerprint[-16:])


def test_a_second_lock_sends_the_registry_only_the_new_package_and_documents(
        locked: Archive, tmp_path: Path, fake_registry: FakeRegistry) -> None:
    bundle(locked, f"docker://{fake_registry.host}/bundles:one")
    second = tmp_path / "second.lock"
    rc, _, err = locked.lock("--include", "libhello1", output=second)
    assert rc == 0, err
    fake_registry.state.log.clear()
    digest = bundle(locked, f"docker://{fake_registry.host}/bundles:two", lock=second)
    added = next(p for p in lockfile.read(second).architectures["amd64"].packages if p.name == "libhello1")
    uploaded = [path for method, path in fake_registry.state.log if method == "PUT" and "/blobs/uploads/" in path]
    assert len(uploaded) == 2, uploaded  # the .deb of libhello1 and the new lockfile
    assert any(added.sha256 in path for path in uploaded)
    assert len(fake_registry.requests("PUT", "/manifests/")) == 1
    locked.mirror.requests.clear()
    rc, _, err = fetch_from(locked, f"docker://{fake_registry.host}/bundles@{digest}", tmp_path / "fresh-cache")
    assert rc == 0, err
    assert locked.mirror.requests == []


# --- the snapshot service --------------------------------------------------------------------


def _snapshot_of(archive: Archive, root: Path) -> Path:
    """ROOT laid out as snapshot.debian.org keeps the mirror at the lock's Release date."""
    date = lockfile.read(archive.lockfile).architectures["amd64"].releases[0].date
    kept = root / "archive" / "debian" / timestamp_of(date)
    shutil.copytree(archive.repo.root, kept)
    return kept


def _move_on_without_old_dash(archive: Archive) -> None:
    """The mirror publishes dash 0.6-1 and drops 0.5-1, as a stable point release does."""
    (archive.repo.root / archive.deb("dash")).unlink()
    archive.repo.debs = [d for d in archive.repo.debs if not d.filename.endswith("dash_0.5-1_amd64.deb")]
    archive.repo.add_deb("dash", "0.6-1", essential=True, priority="required", pre_depends="libc6 (>= 2.0)")
    archive.repo.write(SUITE)


def test_a_package_gone_from_the_mirror_comes_from_the_snapshot_service(locked: Archive, tmp_path: Path) -> None:
    with serving(tmp_path / "snapshot") as snapshot:
        kept = _snapshot_of(locked, tmp_path / "snapshot")
        _move_on_without_old_dash(locked)
        cache = tmp_path / "fresh-cache"
        rc, _, err = locked.run("fetch", str(locked.lockfile), "--keyring", str(locked.keyring),
                                "--cache-dir", str(cache), "--snapshot-url", snapshot.url)
        assert rc == 0, err
        prefix = kept.relative_to(tmp_path / "snapshot").as_posix()
        assert f"{prefix}/dists/{SUITE}/InRelease" in snapshot.requests
        assert f"{prefix}/{locked.deb('dash')}" not in snapshot.requests  # the mirror's new dash is not asked for
        assert any(r.endswith("dash_0.5-1_amd64.deb") for r in snapshot.requests)  # the locked one, gone, is
        assert_cache_verified(cache)
        rc, _, err = locked.run("fetch", str(locked.lockfile), "--keyring", str(locked.keyring),
                                "--cache-dir", str(tmp_path / "other"), "--snapshot", "off")
        assert_one_error(rc, err, "pins the Release")


def _import_time(date: str, hours: float) -> str:
    return timestamp_of((datetime.fromisoformat(date) + timedelta(hours=hours)).isoformat())


def test_the_first_import_since_the_release_date_is_asked_not_the_one_before(locked: Archive, tmp_path: Path) -> None:
    date = lockfile.read(locked.lockfile).architectures["amd64"].releases[0].date
    imports = tmp_path / "snapshot" / "archive" / "debian"
    before, after, next_one = (_import_time(date, hours) for hours in (-6, 2, 8))
    with serving(tmp_path / "snapshot") as snapshot:
        shutil.copytree(locked.repo.root, imports / after)  # the import that first holds the locked Release
        (imports / before).mkdir()
        (imports / next_one).mkdir()
        old_dash = locked.deb("dash")
        _move_on_without_old_dash(locked)
        rc, _, err = locked.run("fetch", str(locked.lockfile), "--keyring", str(locked.keyring),
                                "--cache-dir", str(tmp_path / "c"), "--snapshot-url", snapshot.url)
        assert rc == 0, err
        assert f"archive/debian/{after}/dists/{SUITE}/InRelease" in snapshot.requests
        assert f"archive/debian/{after}/{old_dash}" in snapshot.requests
        assert not [r for r in snapshot.requests if before in r or next_one in r or timestamp_of(date) in r]


def test_a_429_from_the_snapshot_service_waits_its_retry_after(locked: Archive, tmp_path: Path) -> None:
    with serving(tmp_path / "snapshot") as snapshot:
        kept = _snapshot_of(locked, tmp_path / "snapshot")
        _move_on_without_old_dash(locked)
        path = f"{kept.relative_to(tmp_path / 'snapshot').as_posix()}/dists/{SUITE}/InRelease"
        snapshot.tamper(path, status=429, headers={"Retry-After": "2"}, times=1)
        started = time.monotonic()
        rc, _, err = locked.run("fetch", str(locked.lockfile), "--keyring", str(locked.keyring),
                                "--cache-dir", str(tmp_path / "c"), "--snapshot-url", snapshot.url)
        assert rc == 0, err
        assert time.monotonic() - started >= 2
        assert snapshot.requests.count(path) == 2


def test_a_snapshot_service_that_keeps_refusing_is_one_line(locked: Archive, tmp_path: Path) -> None:
    with serving(tmp_path / "snapshot") as snapshot:
        kept = _snapshot_of(locked, tmp_path / "snapshot")
        _move_on_without_old_dash(locked)
        path = f"{kept.relative_to(tmp_path / 'snapshot').as_posix()}/dists/{SUITE}/InRelease"
        snapshot.tamper(path, status=429, headers={"Retry-After": "0"})
        rc, _, err = locked.run("fetch", str(locked.lockfile), "--keyring", str(locked.keyring),
                                "--cache-dir", str(tmp_path / "c"), "--snapshot-url", snapshot.url)
        assert_one_error(rc, err, "snapshot service still refuses", "HTTP 429", "gave up after 5 attempts")


def test_lock_with_a_snapshot_timestamp_resolves_against_that_snapshot(archive: Archive, tmp_path: Path) -> None:
    stamp = "20240101T000000Z"
    with serving(tmp_path / "snapshot") as snapshot:
        shutil.copytree(archive.repo.root, tmp_path / "snapshot" / "archive" / "debian" / stamp)
        rc, _, err = archive.lock("--snapshot", stamp, "--snapshot-url", snapshot.url)
        assert rc == 0, err
    lock = lockfile.read(archive.lockfile)
    assert lock.mirror == Snapshots(snapshot.url).archive_url(archive.mirror.url, stamp)
    assert archive.mirror.requests == []


def test_snapshot_timestamps_and_archive_names() -> None:
    snapshots = Snapshots("http://snap.example/", "auto")
    assert snapshots.fallback("http://deb.debian.org/debian-security/", "2024-06-10T12:34:56+00:00") == \
        "http://snap.example/archive/debian-security/20240610T123456Z"
    assert Snapshots(when="off").fallback("http://deb.debian.org/debian", "2024-06-10T00:00:00+00:00") is None
    assert Snapshots("http://s", "20200101T000000Z").fallback("http://m/debian", "2024-06-10T00:00:00+00:00") == \
        "http://s/archive/debian/20200101T000000Z"


def test_the_services_imports_are_read_from_its_listing_pages() -> None:
    page = '<a href="20240610T023001Z/">x</a> <a href="20240610T083001Z/">y</a> <a href="20240610T143001Z/">z</a>'
    assert first_import(page, "20240610T081302Z") == "20240610T083001Z"
    assert first_import(page, "20240610T083001Z") == "20240610T083001Z"
    assert first_import(page, "20240611T000000Z") is None
    assert listing_months("20241231T235959Z") == [(2024, 12), (2025, 1)]
    auto = Snapshots("http://snap.example/", "auto")
    assert auto.listing_urls("debian", "20240610T081302Z")[0] == "http://snap.example/archive/debian/?year=2024&month=06"
    assert auto.dated("http://snap.example/archive/debian/20240610T081302Z/pool/x.deb") == ("debian", "20240610T081302Z")
    assert auto.dated("http://mirror.example/archive/debian/20240610T081302Z/pool/x.deb") is None
    fixed = Snapshots("http://snap.example", "20240610T000000Z")
    assert fixed.dated("http://snap.example/archive/debian/20240610T000000Z/pool/x.deb") is None


def test_a_bundle_is_no_trust_root_for_its_keys(locked: Archive, tmp_path: Path) -> None:
    ref = f"oci:{tmp_path / 'b'}:one"
    bundle(locked, ref)
    rc, _, err = fetch_from(locked, ref, tmp_path / "c", "--trust-lock-keyring")
    assert_one_error(rc, err, "--trust-lock-keyring", "--from")
    assert json.loads((tmp_path / "b" / "index.json").read_text())["manifests"]
