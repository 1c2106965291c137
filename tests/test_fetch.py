"""`ocistrap fetch` (and the fetcher under `lock`) against broken, slow and hostile mirrors.

Each failure is one ``ocistrap: error:`` line naming the package or file and
the check; the cache keeps only verified blobs and resumable honest prefixes;
the next honest run with the same cache succeeds.
"""

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import repo_factory
import requests
from lockfetch_support import (  # noqa: F401  (fixtures)
    Archive,
    archive,
    assert_cache_verified,
    assert_one_error,
    assert_partials_honest,
    fast_fetcher,
    sha256_file,
    template,
)

from ocistrap.debian import fetch as fetch_module

DEB = "dash"
DEB_FILE = "dash_0.5-1_amd64.deb"
BIG = "bigdata"


@pytest.fixture
def locked(archive: Archive) -> Archive:
    """The suite, locked once with an honest mirror; requests so far are forgotten."""
    rc, _, err = archive.lock()
    assert rc == 0, err
    archive.mirror.requests.clear()
    return archive


@pytest.fixture
def ranges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(path, Range header) of every request the mirror saw with a Range header."""
    seen: list[tuple[str, str]] = []
    original = repo_factory._Handler._range

    def recording(handler, body, status):  # type: ignore[no-untyped-def]
        if wanted := handler.headers.get("Range"):
            seen.append((handler.path.lstrip("/"), wanted))
        return original(handler, body, status)

    monkeypatch.setattr(repo_factory._Handler, "_range", recording)
    return seen


def assert_recovers(archive: Archive) -> None:
    """Nothing unverified was kept, and an honest fetch with the same cache works."""
    assert_cache_verified(archive.cache)
    assert_partials_honest(archive.cache, archive.repo.root)
    archive.honest_again()
    if not archive.lockfile.exists():
        rc, _, err = archive.lock()
        assert rc == 0, err
    rc, out, err = archive.fetch()
    assert rc == 0, err
    assert out.startswith("6 packages verified")
    assert_cache_verified(archive.cache)


def flipped(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0x01
    return bytes(changed)


# .deb files


def test_deb_with_a_flipped_byte_is_refused(locked: Archive) -> None:
    path = locked.deb(DEB)
    locked.mirror.tamper(path, body=flipped(locked.original(path), 100))
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "SHA256 mismatch")
    assert not (locked.cache / "partial" / sha256_file(locked.repo.root / path)).exists()
    assert_recovers(locked)


def test_big_deb_with_a_flipped_byte_is_refused(locked: Archive) -> None:
    path = locked.deb(BIG)
    locked.mirror.tamper(path, body=flipped(locked.original(path), 5000))
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, "bigdata_1.0_amd64.deb", "SHA256 mismatch")
    assert_recovers(locked)


def test_truncated_deb_is_refused(locked: Archive) -> None:
    path = locked.deb(DEB)
    data = locked.original(path)
    locked.mirror.tamper(path, body=data[: len(data) // 2])
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, f"{len(data) // 2} bytes", f"signed size of {len(data)}")
    assert_recovers(locked)


def test_longer_deb_is_refused(locked: Archive) -> None:
    path = locked.deb(DEB)
    data = locked.original(path)
    locked.mirror.tamper(path, body=data + b"trailing junk")
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, f"signed size of {len(data)}")
    assert_recovers(locked)


def test_deb_announced_shorter_is_refused(locked: Archive) -> None:
    path = locked.deb(DEB)
    size = len(locked.original(path))
    locked.mirror.tamper(path, content_length=size - 10)
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, f"{size - 10} bytes", f"signed size of {size}")
    assert_recovers(locked)


def test_deb_announced_longer_is_retried_then_refused(locked: Archive) -> None:
    path = locked.deb(DEB)
    size = len(locked.original(path))
    locked.mirror.tamper(path, content_length=size + 10)
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "gave up after 4 attempts")
    assert locked.mirror.requests.count(path) == 4
    assert_recovers(locked)


def test_missing_deb_is_named(locked: Archive) -> None:
    locked.mirror.tamper(locked.deb(DEB), status=404)
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "404")
    assert_recovers(locked)


def test_interrupted_download_is_resumed_with_a_range_request(locked: Archive, ranges: list) -> None:
    path = locked.deb(BIG)
    size = len(locked.original(path))
    locked.mirror.tamper(path, cut_after=size - 100_000, times=1)
    rc, _, err = locked.fetch()
    assert rc == 0, err
    assert locked.mirror.requests.count(path) == 2
    assert len(ranges) == 1
    got_path, header = ranges[0]
    assert got_path == path
    start = int(header.removeprefix("bytes=").removesuffix("-"))
    assert 0 < start < size
    assert_cache_verified(locked.cache)
    assert not list((locked.cache / "partial").iterdir())


def test_download_cut_in_every_attempt_keeps_an_honest_prefix_for_the_next_run(
        locked: Archive, ranges: list, monkeypatch: pytest.MonkeyPatch) -> None:
    path = locked.deb(BIG)
    size = len(locked.original(path))
    locked.mirror.tamper(path, cut_after=size - 100_000)
    monkeypatch.setattr(fetch_module.Fetcher.__init__, "__kwdefaults__",
                        {**fetch_module.Fetcher.__init__.__kwdefaults__, "attempts": 1})
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, "bigdata_1.0_amd64.deb", "gave up after 1 attempts")
    partial = locked.cache / "partial" / sha256_file(locked.repo.root / path)
    assert 0 < partial.stat().st_size < size
    assert_recovers(locked)
    assert ranges and ranges[-1][0] == path


def test_stale_wrong_partial_file_does_not_spoil_an_honest_run(locked: Archive) -> None:
    """A run killed while a hostile mirror sent bad bytes leaves a wrong prefix behind."""
    path = locked.deb(BIG)
    data = locked.original(path)
    partial = locked.cache / "partial" / sha256_file(locked.repo.root / path)
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(flipped(data[: len(data) // 2], 10))
    rc, _, err = locked.fetch()
    assert rc == 0, err
    assert_cache_verified(locked.cache)


def test_a_link_planted_at_a_partial_download_is_not_written_through(locked: Archive, tmp_path: Path) -> None:
    deb = locked.repo.root / locked.deb("bigdata")
    victim = tmp_path / "victim"
    victim.write_bytes(deb.read_bytes()[:1000])
    victim.chmod(0o600)
    (locked.cache / "partial" / sha256_file(deb)).symlink_to(victim)
    rc, _, err = locked.fetch()
    assert rc == 0, err
    assert victim.read_bytes() == deb.read_bytes()[:1000] and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not (locked.cache / "blobs" / "sha256" / sha256_file(deb)).is_symlink()
    assert_cache_verified(locked.cache)


# retries and timeouts


@pytest.mark.parametrize("status", [500, 502, 503, 429])
@pytest.mark.parametrize("target", ["InRelease", "index", "deb"])
def test_transient_errors_are_retried(archive: Archive, status: int, target: str) -> None:
    path = {"InRelease": archive.dist("InRelease"), "index": archive.dist("main/binary-amd64/Packages.xz"),
            "deb": archive.deb(DEB)}[target]
    archive.mirror.tamper(path, status=status, times=2)
    rc, _, err = archive.lock()
    assert rc == 0, err
    rc, _, err = archive.fetch()
    assert rc == 0, err
    assert archive.mirror.requests.count(path) == 3


def test_persistent_server_error_gives_up_naming_the_file(locked: Archive) -> None:
    locked.mirror.tamper(locked.deb(DEB), status=503)
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "HTTP 503", "gave up after 4 attempts")
    assert locked.mirror.requests.count(locked.deb(DEB)) == 4
    assert_recovers(locked)


def test_client_error_is_not_retried(locked: Archive) -> None:
    locked.mirror.tamper(locked.deb(DEB), status=403)
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "HTTP 403")
    assert locked.mirror.requests.count(locked.deb(DEB)) == 1
    assert_recovers(locked)


@pytest.fixture
def impatient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_module.Fetcher.__init__, "__kwdefaults__",
                        {**fetch_module.Fetcher.__init__.__kwdefaults__, "timeout": 0.3, "attempts": 2})


def test_hanging_mirror_times_out_naming_the_file(archive: Archive, impatient: None) -> None:
    archive.mirror.tamper(archive.dist("InRelease"), delay=30)
    rc, _, err = archive.lock()
    assert_one_error(rc, err, "InRelease", "timed out", "gave up after 2 attempts")
    assert_recovers(archive)


def test_hanging_deb_download_times_out_naming_the_package(locked: Archive, impatient: None) -> None:
    locked.mirror.tamper(locked.deb(DEB), delay=30)
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "timed out")
    assert_recovers(locked)


@pytest.fixture
def deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads time out after 2 s, a request after 1 s, a large body stalls after 1 s."""
    monkeypatch.setattr(fetch_module.Fetcher.__init__, "__kwdefaults__",
                        {**fetch_module.Fetcher.__init__.__kwdefaults__,
                         "timeout": 2.0, "deadline": 1.0, "stall": 1.0, "attempts": 2})


def test_a_mirror_dripping_the_release_is_cut_off_at_the_deadline(archive: Archive, deadline: None) -> None:
    """A byte every 0.2 s never trips the 2 s read timeout; only the deadline ends it."""
    archive.mirror.tamper(archive.dist("InRelease"), drip=0.2)
    started = time.monotonic()
    rc, _, err = archive.lock()
    assert_one_error(rc, err, "InRelease", "timed out", "gave up after 2 attempts")
    assert time.monotonic() - started < 10
    assert_recovers(archive)


def test_a_mirror_dripping_a_deb_is_cut_off_for_lack_of_progress(locked: Archive, deadline: None) -> None:
    locked.mirror.tamper(locked.deb(BIG), drip=0.2)
    started = time.monotonic()
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, "bigdata_1.0_amd64.deb", "timed out", "gave up after 2 attempts")
    assert time.monotonic() - started < 10
    assert_recovers(locked)


def test_a_release_larger_than_the_cap_is_refused_unread(archive: Archive) -> None:
    archive.mirror.tamper(archive.dist("InRelease"), content_length=100 << 20)
    rc, _, err = archive.lock()
    assert_one_error(rc, err, "InRelease", f"larger than {fetch_module.RELEASE_LIMIT} bytes")
    assert archive.mirror.requests.count(archive.dist("InRelease")) == 1
    assert_recovers(archive)


def test_slow_answer_within_the_timeout_is_fine(locked: Archive, impatient: None) -> None:
    locked.mirror.tamper(locked.deb(DEB), delay=0.1)
    rc, _, err = locked.fetch()
    assert rc == 0, err


# --offline


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise requests.ConnectionError("the network is off in this test")

    monkeypatch.setattr(requests.Session, "request", refuse)


def test_offline_lock_and_fetch_work_from_the_cache(locked: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _, err = locked.fetch()
    assert rc == 0, err
    online = locked.lockfile.read_bytes()
    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("network used"))
    offline = locked.lockfile.with_name("offline.lock")
    rc, _, err = locked.lock("--offline", output=offline)
    assert rc == 0, err
    assert offline.read_bytes() == online
    rc, out, err = locked.fetch("--offline", lockfile=offline)
    assert rc == 0, err
    assert out.startswith("6 packages verified")


def test_offline_works_after_release_gpg(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    archive.mirror.tamper(archive.dist("InRelease"), status=404)
    assert archive.lock()[0] == 0
    assert archive.fetch()[0] == 0
    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("network used"))
    rc, _, err = archive.lock("--offline")
    assert rc == 0, err
    rc, _, err = archive.fetch("--offline")
    assert rc == 0, err


def test_offline_fetch_with_an_empty_cache_names_what_is_missing(locked: Archive, tmp_path: Path,
                                                                 no_network: None) -> None:
    locked.cache = tmp_path / "empty-cache"
    rc, _, err = locked.fetch("--offline")
    assert_one_error(rc, err, "Release of unstable", "not in the cache")


def test_offline_fetch_names_the_missing_package(locked: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    locked.mirror.tamper(locked.deb(DEB), status=404)
    assert locked.fetch()[0] != 0
    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("network used"))
    rc, _, err = locked.fetch("--offline")
    assert_one_error(rc, err, DEB_FILE, "not in the cache", "--offline")


def test_offline_lock_with_an_empty_cache_fails(archive: Archive, no_network: None) -> None:
    rc, _, err = archive.lock("--offline")
    assert_one_error(rc, err, "unstable", "in the cache")


def test_offline_lock_without_the_index_names_it(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    archive.mirror.tamper(archive.dist("main/binary-amd64/Packages.xz"), status=404)
    assert archive.lock()[0] != 0
    monkeypatch.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("network used"))
    rc, _, err = archive.lock("--offline")
    assert_one_error(rc, err, "Packages.xz", "--offline")


# two processes, one cache


def test_two_fetch_processes_share_one_cache(locked: Archive) -> None:
    """Both run at once (the mirror holds every .deb back a little so they overlap)."""
    for deb in locked.repo.debs:
        locked.mirror.tamper(deb.filename, delay=0.5)
    command = [sys.executable, "-m", "ocistrap", "-q", "fetch", str(locked.lockfile), *locked.common()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    results = [run.communicate(timeout=60) + (run.returncode,) for run in runs]
    for out, err, rc in results:
        assert rc == 0, err
        assert out.startswith("6 packages verified")
    assert_cache_verified(locked.cache)
    assert_partials_honest(locked.cache, locked.repo.root)
    locked.honest_again()
    rc, _, err = locked.fetch("--offline")
    assert rc == 0, err


def test_cached_deb_damaged_on_disk_is_never_used(locked: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    assert locked.fetch()[0] == 0
    blob = locked.cache / "blobs" / "sha256" / sha256_file(locked.repo.root / locked.deb(DEB))
    damaged = bytearray(blob.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    with monkeypatch.context() as offline:
        offline.setattr(requests.Session, "request", lambda *a, **k: pytest.fail("network used"))
        rc, _, err = locked.fetch("--offline")
        assert_one_error(rc, err, DEB_FILE, "not in the cache")
    assert not blob.exists()
    assert locked.fetch()[0] == 0
    assert_cache_verified(locked.cache)


# redirects


@pytest.fixture
def elsewhere(tmp_path: Path, locked: Archive) -> Iterator[repo_factory.Mirror]:
    """A second server holding a copy of the archive, for the first to redirect to."""
    root = tmp_path / "elsewhere"
    shutil.copytree(locked.repo.root, root)
    with repo_factory.serving(root) as mirror:
        yield mirror


def test_redirect_to_another_host_serving_the_same_files_is_followed(
        locked: Archive, elsewhere: repo_factory.Mirror) -> None:
    path = locked.deb(DEB)
    locked.mirror.tamper(path, redirect=f"{elsewhere.url}/{path}")
    inrelease = locked.dist("InRelease")
    locked.mirror.tamper(inrelease, redirect=f"{elsewhere.url}/{inrelease}")
    rc, out, err = locked.fetch()
    assert rc == 0, err
    assert path in elsewhere.requests
    rc, _, err = locked.lock(output=locked.lockfile.with_suffix(".again"))
    assert rc == 0, err
    assert inrelease in elsewhere.requests
    assert_cache_verified(locked.cache)


def test_redirect_to_a_host_serving_other_bytes_fails_on_the_hash(
        locked: Archive, elsewhere: repo_factory.Mirror) -> None:
    path = locked.deb(DEB)
    (elsewhere.root / path).write_bytes(flipped(locked.original(path), 100))
    locked.mirror.tamper(path, redirect=f"{elsewhere.url}/{path}")
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "SHA256 mismatch")
    assert not (locked.cache / "partial" / sha256_file(locked.repo.root / path)).exists()
    assert_recovers(locked)


def test_redirect_loop_gives_up_naming_the_file(locked: Archive) -> None:
    path = locked.deb(DEB)
    locked.mirror.tamper(path, redirect=f"/{path}")
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "more than 5 redirects")
    assert_recovers(locked)


def test_redirect_to_another_scheme_is_refused_naming_file_and_target(locked: Archive) -> None:
    path = locked.deb(DEB)
    locked.mirror.tamper(path, redirect=f"ftp://127.0.0.1/{path}")
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, DEB_FILE, "refused the redirect", f"ftp://127.0.0.1/{path}")
    assert_recovers(locked)
