"""`ocistrap lock` against a hostile or broken mirror: the signed Release and the Packages indices.

Every failure must be one ``ocistrap: error:`` line naming the file and the
check, leave only verified blobs in the cache, and not spoil the next honest run.
"""

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from lockfetch_support import SUITE, Archive, archive, assert_cache_verified, assert_one_error, fast_fetcher, template  # noqa: F401  (fixtures)
from repo_factory import SigningKey, sha256_of

INDEX = "main/binary-amd64/Packages.xz"


def flipped(data: bytes, offset: int) -> bytes:
    changed = bytearray(data)
    changed[offset] ^= 0x01
    return bytes(changed)


def assert_recovers(archive: Archive, *extra: str) -> None:
    """After a failure: only verified blobs are cached, and an honest run with that cache works."""
    assert_cache_verified(archive.cache)
    archive.honest_again()
    rc, _, err = archive.lock(*extra)
    assert rc == 0, err
    rc, _, err = archive.fetch()
    assert rc == 0, err
    assert_cache_verified(archive.cache)


def test_honest_lock_and_fetch_use_inrelease_and_the_index(archive: Archive) -> None:
    rc, out, err = archive.lock()
    assert rc == 0, err
    assert "6 packages locked" in out
    assert archive.dist("InRelease") in archive.mirror.requests
    assert archive.dist("Release.gpg") not in archive.mirror.requests
    assert archive.dist(INDEX) in archive.mirror.requests
    rc, out, err = archive.fetch()
    assert rc == 0, err
    assert out.startswith("6 packages verified")


def test_inrelease_with_one_changed_byte_is_refused(archive: Archive) -> None:
    signed = archive.original(archive.dist("InRelease"))
    offset = signed.index(b"Codename: ") + len("Codename: ")
    archive.mirror.tamper(archive.dist("InRelease"), body=flipped(signed, offset))
    rc, _, err = archive.lock()
    assert_one_error(rc, err, "InRelease", "BAD signature")
    assert not archive.lockfile.exists()
    assert_recovers(archive)


def test_inrelease_signed_by_an_unknown_key_is_refused(archive: Archive, other_key: SigningKey) -> None:
    release = archive.original(archive.dist("Release"))
    archive.mirror.tamper(archive.dist("InRelease"), body=other_key.clearsign(release))
    rc, _, err = archive.lock()
    assert_one_error(rc, err, "InRelease", other_key.fingerprint[-16:], "no given keyring holds")
    assert_recovers(archive)


def test_release_with_detached_signature_is_used_when_inrelease_is_missing(archive: Archive) -> None:
    archive.mirror.tamper(archive.dist("InRelease"), status=404)
    rc, _, err = archive.lock()
    assert rc == 0, err
    assert archive.dist("Release.gpg") in archive.mirror.requests
    lock = json.loads(archive.lockfile.read_text())
    assert lock["architectures"]["amd64"]["releases"][0]["path"] == archive.dist("Release")
    rc, _, err = archive.fetch()
    assert rc == 0, err


@pytest.mark.parametrize("how", ["wrong key", "other text"])
def test_bad_release_gpg_is_refused(archive: Archive, other_key: SigningKey, how: str) -> None:
    release = archive.original(archive.dist("Release"))
    signature = (other_key.detach_sign(release) if how == "wrong key"
                 else archive.repo.key.detach_sign(release + b"Extra: field\n"))
    archive.mirror.tamper(archive.dist("InRelease"), status=404)
    archive.mirror.tamper(archive.dist("Release.gpg"), body=signature)
    rc, _, err = archive.lock()
    check = "BAD signature" if how == "other text" else "no given keyring"
    assert_one_error(rc, err, archive.dist("Release"), check)
    assert_recovers(archive)


def test_release_without_its_signature_is_refused(archive: Archive) -> None:
    archive.mirror.tamper(archive.dist("InRelease"), status=404)
    archive.mirror.tamper(archive.dist("Release.gpg"), status=404)
    rc, _, err = archive.lock()
    assert_one_error(rc, err, "Release.gpg", "404")
    assert_recovers(archive)


def test_missing_keyring_file_is_named(archive: Archive, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-keyring.gpg"
    rc, _, err = archive.run("lock", SUITE, "--mirror", archive.mirror.url, *archive.common(missing),
                             "--arch", "amd64", "--variant", "essential", "-o", str(archive.lockfile))
    assert_one_error(rc, err, str(missing), "cannot be read")
    assert_recovers(archive)


def test_expired_valid_until_is_refused_unless_allowed(archive: Archive) -> None:
    archive.repo.write(SUITE, valid_until=datetime.now(timezone.utc) - timedelta(days=2))
    rc, _, err = archive.lock()
    assert_one_error(rc, err, "InRelease", "Valid-Until", "--no-check-valid-until")
    assert not archive.lockfile.exists()
    assert_cache_verified(archive.cache)
    rc, _, err = archive.lock("--no-check-valid-until")
    assert rc == 0, err
    rc, _, err = archive.fetch()
    assert rc == 0, err


def test_unexpired_valid_until_is_accepted(archive: Archive) -> None:
    archive.repo.write(SUITE, valid_until=datetime.now(timezone.utc) + timedelta(days=2))
    rc, _, err = archive.lock()
    assert rc == 0, err


def test_unknown_suite_is_named(archive: Archive) -> None:
    rc, _, err = archive.lock(suite="no-such-suite")
    assert_one_error(rc, err, "'no-such-suite'", "not found")
    assert "dists/no-such-suite/InRelease" in archive.mirror.requests
    assert "dists/no-such-suite/Release" in archive.mirror.requests
    assert_recovers(archive)


def test_release_signed_for_another_suite_is_refused(archive: Archive) -> None:
    other = archive.repo.root / "dists" / "experimental"
    other.mkdir()
    for name in ("InRelease", "Release", "Release.gpg"):
        (other / name).write_bytes(archive.original(archive.dist(name)))
    rc, _, err = archive.lock(suite="experimental")
    assert_one_error(rc, err, "experimental", "'unstable'")
    assert_recovers(archive)


def test_stable_suite_needs_its_updates_and_security_suites(archive: Archive) -> None:
    archive.repo.write("stable", codename="bookworm")
    rc, _, err = archive.lock("--security-mirror", archive.mirror.url, suite="stable")
    assert_one_error(rc, err, "'bookworm-updates'", "not found")
    rc, _, err = archive.lock("--no-updates", suite="stable")
    assert rc == 0, err
    archive.repo.write("bookworm-updates")
    archive.repo.write("bookworm-security")
    rc, _, err = archive.lock("--security-mirror", archive.mirror.url, suite="stable")
    assert rc == 0, err
    suites = [a["suite"] for a in json.loads(archive.lockfile.read_text())["archives"]]
    assert suites == ["stable", "bookworm-updates", "bookworm-security"]
    rc, _, err = archive.fetch()
    assert rc == 0, err


# the lockfile's pinned Release


def pinned_sha256(archive: Archive) -> str:
    return json.loads(archive.lockfile.read_text())["architectures"]["amd64"]["releases"][0]["sha256"]


def test_a_newer_release_than_the_pinned_one_is_refused_naming_both(archive: Archive, tmp_path: Path) -> None:
    rc, _, err = archive.lock()
    assert rc == 0, err
    archive.repo.add_deb("newcomer", "1.0")
    archive.repo.write(SUITE)
    served = sha256_of(archive.original(archive.dist("InRelease")))
    archive.mirror.requests.clear()
    archive.cache = tmp_path / "cold-cache"
    rc, _, err = archive.fetch()
    assert_one_error(rc, err, archive.dist("InRelease"), f"pins the Release of {SUITE} at sha256 "
                     f"{pinned_sha256(archive)}", f"serves sha256 {served}", "lock again", "snapshot")
    assert not [r for r in archive.mirror.requests if r.startswith("pool/") or "Packages" in r]
    assert_cache_verified(archive.cache)


def test_a_replayed_expired_release_is_refused_for_a_lock_of_a_newer_one(archive: Archive, tmp_path: Path) -> None:
    archive.repo.write(SUITE, valid_until=datetime.now(timezone.utc) - timedelta(days=2),
                       date=datetime.now(timezone.utc) - timedelta(days=9))
    replayed = archive.original(archive.dist("InRelease"))
    archive.repo.write(SUITE)
    rc, _, err = archive.lock()
    assert rc == 0, err
    archive.mirror.tamper(archive.dist("InRelease"), body=replayed)
    archive.cache = tmp_path / "cold-cache"
    rc, _, err = archive.fetch()
    assert_one_error(rc, err, pinned_sha256(archive), sha256_of(replayed))


def test_the_pinned_release_is_used_past_its_valid_until_wherever_it_comes_from(
        archive: Archive, tmp_path: Path) -> None:
    archive.repo.write(SUITE, valid_until=datetime.now(timezone.utc) - timedelta(days=2))
    rc, _, err = archive.lock("--no-check-valid-until")
    assert rc == 0, err
    rc, _, err = archive.fetch()
    assert rc == 0, err
    archive.cache = tmp_path / "cold-cache"
    rc, _, err = archive.fetch()
    assert rc == 0, err
    assert archive.dist("InRelease") in archive.mirror.requests


def test_a_pinned_detached_release_is_fetched_as_such_when_inrelease_is_back(
        archive: Archive, tmp_path: Path) -> None:
    archive.mirror.tamper(archive.dist("InRelease"), status=404)
    rc, _, err = archive.lock()
    assert rc == 0, err
    archive.honest_again()
    archive.mirror.requests.clear()
    archive.cache = tmp_path / "cold-cache"
    rc, _, err = archive.fetch()
    assert rc == 0, err
    assert archive.dist("Release.gpg") in archive.mirror.requests
    assert archive.dist("InRelease") not in archive.mirror.requests


# Packages indices


@pytest.mark.parametrize("damage, check", [
    (lambda data: flipped(data, len(data) // 2), "SHA256 mismatch"),
    (lambda data: data[: len(data) // 2], "size"),
    (lambda data: data + b"\0", "larger than"),
])
def test_damaged_packages_index_is_refused(archive: Archive, damage, check: str) -> None:  # type: ignore[no-untyped-def]
    archive.mirror.tamper(archive.dist(INDEX), body=damage(archive.original(archive.dist(INDEX))))
    rc, _, err = archive.lock()
    assert_one_error(rc, err, INDEX, check)
    assert_recovers(archive)


def test_packages_index_announced_shorter_is_refused(archive: Archive) -> None:
    size = len(archive.original(archive.dist(INDEX)))
    archive.mirror.tamper(archive.dist(INDEX), content_length=size - 7)
    rc, _, err = archive.lock()
    assert_one_error(rc, err, INDEX, f"size {size - 7}")
    assert_recovers(archive)


def test_packages_index_announced_longer_than_signed_is_refused_unread(archive: Archive) -> None:
    size = len(archive.original(archive.dist(INDEX)))
    archive.mirror.tamper(archive.dist(INDEX), content_length=size + 100)
    rc, _, err = archive.lock()
    assert_one_error(rc, err, INDEX, f"larger than {size} bytes")
    assert archive.mirror.requests.count(archive.dist(INDEX)) == 1
    assert_recovers(archive)


def test_missing_packages_index_is_named(archive: Archive) -> None:
    archive.mirror.tamper(archive.dist(INDEX), status=404)
    rc, _, err = archive.lock()
    assert_one_error(rc, err, INDEX, "404")
    assert_recovers(archive)


def test_architecture_without_an_index_is_named(archive: Archive) -> None:
    rc, _, err = archive.run("lock", SUITE, "--mirror", archive.mirror.url, *archive.common(),
                             "--arch", "arm64", "--variant", "essential", "-o", str(archive.lockfile))
    assert_one_error(rc, err, "'arm64'", "no Packages index")


def test_by_hash_path_is_used_when_the_release_says_so(archive: Archive) -> None:
    archive.repo.write(SUITE, by_hash=True)
    data = archive.original(archive.dist(INDEX))
    rc, _, err = archive.lock()
    assert rc == 0, err
    by_hash = archive.dist(f"main/binary-amd64/by-hash/SHA256/{sha256_of(data)}")
    assert by_hash in archive.mirror.requests
    assert archive.dist(INDEX) not in archive.mirror.requests


def test_by_hash_falls_back_to_the_plain_path_when_absent(archive: Archive) -> None:
    archive.repo.write(SUITE, by_hash=True)
    data = archive.original(archive.dist(INDEX))
    by_hash = archive.dist(f"main/binary-amd64/by-hash/SHA256/{sha256_of(data)}")
    archive.mirror.tamper(by_hash, status=404)
    rc, _, err = archive.lock()
    assert rc == 0, err
    assert archive.mirror.requests.index(by_hash) < archive.mirror.requests.index(archive.dist(INDEX))


def test_damaged_by_hash_index_is_refused(archive: Archive) -> None:
    archive.repo.write(SUITE, by_hash=True)
    data = archive.original(archive.dist(INDEX))
    by_hash = archive.dist(f"main/binary-amd64/by-hash/SHA256/{sha256_of(data)}")
    archive.mirror.tamper(by_hash, body=flipped(data, 10))
    rc, _, err = archive.lock()
    assert_one_error(rc, err, by_hash, "SHA256 mismatch")
    assert_recovers(archive)
