"""`ocistrap lock` output and `ocistrap fetch` input: deterministic bytes, and bad lockfiles refused."""

import base64
import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lockfetch_support import Archive, archive, assert_cache_verified, assert_one_error, fast_fetcher, template  # noqa: F401  (fixtures)
from repo_factory import SigningKey

from ocistrap.debian import lock, locking
from ocistrap.errors import ArchiveError


@pytest.fixture
def locked(archive: Archive) -> Archive:
    rc, _, err = archive.lock()
    assert rc == 0, err
    return archive


def packages(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in document["architectures"]["amd64"]["packages"]}


# what lock writes


def test_lock_writes_the_same_bytes_every_time(locked: Archive, tmp_path: Path) -> None:
    first = locked.lockfile.read_bytes()
    rc, out, err = locked.lock(output=tmp_path / "again.lock")
    assert rc == 0, err
    assert (tmp_path / "again.lock").read_bytes() == first
    locked.cache = tmp_path / "cold-cache"
    rc, _, err = locked.lock(output=tmp_path / "cold.lock")
    assert rc == 0, err
    assert (tmp_path / "cold.lock").read_bytes() == first
    assert f"(sha256:{hashlib.sha256(first).hexdigest()})" in out
    assert first.endswith(b"}\n")
    assert lock.loads(first, what="test").dumps() == first


def test_lock_records_the_essential_set_and_the_signed_release(locked: Archive) -> None:
    document = json.loads(locked.lockfile.read_text())
    found = packages(document)
    assert sorted(found) == ["base-files", "bigdata", "coreutils", "dash", "libc6", "mawk"]
    assert {p["stage"] for p in found.values()} == {"essential"}
    release = document["architectures"]["amd64"]["releases"][0]
    inrelease = locked.original(locked.dist("InRelease"))
    assert release["sha256"] == hashlib.sha256(inrelease).hexdigest()
    assert release["path"] == locked.dist("InRelease")
    assert document["archives"] == [{"mirror": locked.mirror.url, "suite": "unstable"}]


def test_include_follows_dependencies_and_virtual_packages(archive: Archive) -> None:
    rc, _, err = archive.lock("--include", "hello,awk", "--variant", "minbase")
    assert rc == 0, err
    found = packages(json.loads(archive.lockfile.read_text()))
    assert {"hello", "libhello1", "mawk"} <= set(found)
    assert found["libhello1"].get("auto") is True
    assert "auto" not in found["hello"]
    rc, _, err = archive.fetch()
    assert rc == 0, err


def test_unknown_package_in_include_is_named(archive: Archive) -> None:
    rc, _, err = archive.lock("--include", "helo")
    assert_one_error(rc, err, "'helo'", "--include", "hello")
    assert not archive.lockfile.exists()


def test_unsatisfiable_dependency_is_named(archive: Archive) -> None:
    rc, _, err = archive.lock("--include", "broken")
    assert_one_error(rc, err, "broken", "missing-lib")
    assert not archive.lockfile.exists()


def test_unknown_version_in_include_is_named(archive: Archive) -> None:
    rc, _, err = archive.lock("--include", "hello=9.9")
    assert_one_error(rc, err, "9.9", "hello", "2.10-3")


def test_unknown_variant_is_named(archive: Archive) -> None:
    rc, _, err = archive.run("lock", "unstable", "--mirror", archive.mirror.url, *archive.common(),
                             "--arch", "amd64", "--variant", "tiny", "-o", str(archive.lockfile))
    assert_one_error(rc, err, "'tiny'", "minbase")


def test_unwritable_output_is_named(archive: Archive, tmp_path: Path) -> None:
    target = tmp_path / "no-such-dir" / "x.lock"
    rc, _, err = archive.lock(output=target)
    assert_one_error(rc, err, str(target), "cannot write lockfile")


# what fetch accepts


Edit = Callable[[dict[str, Any]], None]


def _drop_suite(d: dict[str, Any]) -> None:
    del d["suite"]


def _set_package(field: str, value: object) -> Edit:
    def edit(d: dict[str, Any]) -> None:
        packages(d)["dash"][field] = value
    return edit


def _bad_archive_index(d: dict[str, Any]) -> None:
    packages(d)["dash"]["archive"] = 3


def _extra_key(d: dict[str, Any]) -> None:
    d["trustMe"] = True


def _future_version(d: dict[str, Any]) -> None:
    d["lockfileVersion"] = 2


INVALID: dict[str, tuple[Edit, tuple[str, ...]]] = {
    "missing key": (_drop_suite, ("(top level)", "'suite' is a required property")),
    "uppercase sha256": (_set_package("sha256", "AB" * 32), ("packages/", "sha256")),
    "short sha256": (_set_package("sha256", "ab" * 31), ("packages/", "sha256")),
    "path traversal": (_set_package("filename", "../../../etc/passwd.deb"), ("packages/", "filename")),
    "traversal inside": (_set_package("filename", "pool/../../../x.deb"), ("packages/", "filename")),
    "absolute path": (_set_package("filename", "/etc/x.deb"), ("packages/", "filename")),
    "not a .deb": (_set_package("filename", "pool/main/d/dash/dash.sh"), ("packages/", "filename")),
    "negative size": (_set_package("size", -1), ("packages/", "size")),
    "unknown stage": (_set_package("stage", "later"), ("packages/", "stage")),
    "unknown key": (_extra_key, ("trustMe",)),
    "future version": (_future_version, ("lockfileVersion", "1 was expected")),
    "archive out of range": (_bad_archive_index, ("amd64", "archives")),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_lockfile_is_refused_before_any_download(locked: Archive, case: str) -> None:
    edit, words = INVALID[case]
    document = json.loads(locked.lockfile.read_text())
    edited = copy.deepcopy(document)
    edit(edited)
    locked.lockfile.write_text(json.dumps(edited))
    locked.mirror.requests.clear()
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, f"lockfile {locked.lockfile}", *words)
    assert locked.mirror.requests == []
    assert len(list((locked.cache / "blobs" / "sha256").iterdir())) == 2  # InRelease and Packages.xz only


@pytest.mark.parametrize("content, words", [
    (b"", ("not valid JSON",)),
    (b'{"lockfileVersion": 1, "mirror": ', ("not valid JSON",)),
    (b"\xff\xfe", ("not valid JSON",)),
    (b"[]", ("invalid at (top level)",)),
])
def test_unreadable_lockfile_is_refused(archive: Archive, content: bytes, words: tuple[str, ...]) -> None:
    archive.lockfile.write_bytes(content)
    rc, _, err = archive.fetch()
    assert_one_error(rc, err, str(archive.lockfile), *words)


def test_missing_lockfile_is_named(archive: Archive) -> None:
    rc, _, err = archive.fetch()
    assert_one_error(rc, err, str(archive.lockfile), "cannot read lockfile", "ocistrap lock")


def _other_deb(d: dict[str, Any]) -> None:
    """Point dash's entry at another signed .deb (a valid file, the wrong package)."""
    found = packages(d)
    for key in ("filename", "size", "sha256"):
        found["dash"][key] = found["mawk"][key]


EDITED: dict[str, Edit] = {
    "sha256": _set_package("sha256", "0" * 64),
    "size": _set_package("size", 12345),
    "version": _set_package("version", "0.5-2"),
    "filename": _set_package("filename", "pool/main/d/dash/dash_0.5-2_amd64.deb"),
    "another package's file": _other_deb,
}


@pytest.mark.parametrize("case", sorted(EDITED))
def test_edited_entry_is_refused_because_it_is_not_in_the_signed_index(locked: Archive, case: str) -> None:
    document = json.loads(locked.lockfile.read_text())
    EDITED[case](document)
    locked.lockfile.write_text(json.dumps(document))
    locked.mirror.requests.clear()
    rc, _, err = locked.fetch()
    assert_one_error(rc, err, "dash", "not in the signed index of unstable", "ocistrap lock")
    assert not [r for r in locked.mirror.requests if r.startswith("pool/")]
    assert_cache_verified(locked.cache)


def test_edited_release_pin_is_not_trusted_offline(locked: Archive) -> None:
    document = json.loads(locked.lockfile.read_text())
    document["architectures"]["amd64"]["releases"][0]["sha256"] = "0" * 64
    locked.lockfile.write_text(json.dumps(document))
    rc, _, err = locked.fetch("--offline")
    assert_one_error(rc, err, "Release of unstable", "not in the cache")


def test_slim_is_recorded_in_the_lockfile_only_when_asked(locked: Archive, tmp_path: Path) -> None:
    rc, _, err = locked.lock("--slim", output=tmp_path / "slim.lock")
    assert rc == 0, err
    plain, slim = json.loads(locked.lockfile.read_text()), json.loads((tmp_path / "slim.lock").read_text())
    assert "slim" not in plain and slim.pop("slim") is True
    assert slim == plain
    assert lock.read(tmp_path / "slim.lock").slim and not lock.read(locked.lockfile).slim


def test_slim_build_of_a_lockfile_made_without_slim_is_refused(locked: Archive) -> None:
    rc, out, err = locked.run("build", "--lock", str(locked.lockfile), "--slim", *locked.common())
    assert rc == 2 and out == ""
    assert_one_error(rc, err, "slim true (--slim) disagrees with the lockfile", str(locked.lockfile),
                     "locks slim false", "lock again with it")


def test_a_lock_just_made_is_not_checked_against_the_indices_again(
        archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """`build` without --lock: the lockfile object make_lock returned needs no second reading of
    the indices, and vouches for the same stanzas that reading would find; a copy of it, or the
    same lockfile with other keyrings, is checked as usual."""
    from ocistrap.debian.cache import Cache
    from ocistrap.debian.fetch import Fetcher
    from ocistrap.debian.mirror import Source

    source = Source(mirror=archive.mirror.url, suite="unstable", components=("main",), keyrings=(archive.keyring,))
    fetcher, cache = Fetcher(), Cache(archive.cache)
    made = locking.make_lock(source, locking.Selection(variant="essential"), ("amd64",), fetcher, cache)
    checked = locking.check_lock_against_archive(copy.deepcopy(made), source.keyrings, fetcher, cache)
    assert sorted(checked["amd64"]) == sorted(p.name for p in made.architectures["amd64"].packages)

    def no_reading(*_: object) -> None:
        raise AssertionError("the indices were read again")

    monkeypatch.setattr(locking, "load_universe", no_reading)
    assert locking.check_lock_against_archive(made, source.keyrings, fetcher, cache) == checked
    with pytest.raises(AssertionError, match="read again"):
        locking.check_lock_against_archive(copy.deepcopy(made), source.keyrings, fetcher, cache)
    with pytest.raises(AssertionError, match="read again"):
        locking.check_lock_against_archive(made, (archive.keyring, archive.keyring), fetcher, cache)


def test_install_order_is_the_essential_set_then_the_rest_whatever_the_file_order() -> None:
    from ocistrap.debian.lock import LockedArch, LockedPackage

    def package(name: str, stage: str) -> LockedPackage:
        return LockedPackage(name=name, version="1", architecture="amd64", filename=f"{name}.deb", size=1,
                             sha256="00" * 32, stage=stage)
    entry = LockedArch(releases=(), packages=(package("apt", "rest"), package("bash", "essential"),
                                              package("curl", "rest"), package("dash", "essential")))
    assert [p.name for p in entry.install_order()] == ["bash", "dash", "apt", "curl"]


# the keys that verified each Release


def test_lock_records_the_key_that_verified_each_release(locked: Archive, signing_key: SigningKey) -> None:
    document = json.loads(locked.lockfile.read_text())
    assert [r["keys"] for r in document["architectures"]["amd64"]["releases"]] == [[signing_key.fingerprint]]
    assert "keyrings" not in document


def test_a_lock_without_fingerprints_still_loads_and_keeps_its_bytes(locked: Archive, tmp_path: Path) -> None:
    document = json.loads(locked.lockfile.read_text())
    for entry in document["architectures"]["amd64"]["releases"]:
        entry.pop("keys")
    old = tmp_path / "old.lock"
    old.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    assert lock.read(old).dumps() == old.read_bytes()


def test_embed_keyring_and_trust_it_only_when_asked(archive: Archive, other_key: SigningKey, tmp_path: Path) -> None:
    rc, _, err = archive.lock("--embed-keyring")
    assert rc == 0, err
    (embedded,) = json.loads(archive.lockfile.read_text())["keyrings"]
    assert base64.b64decode(embedded["data"]) == archive.keyring.read_bytes()
    assert lock.read(archive.lockfile).keyrings[0].data == archive.keyring.read_bytes()
    with_other_key = ("fetch", str(archive.lockfile), *archive.common(keyring=other_key.keyring))
    rc, _, err = archive.run(*with_other_key)
    assert_one_error(rc, err, "no given keyring holds")
    rc, _, err = archive.run(*with_other_key, "--trust-lock-keyring")
    assert rc == 0, err


def test_trust_lock_keyring_needs_an_embedded_keyring(locked: Archive) -> None:
    rc, _, err = locked.fetch("--trust-lock-keyring")
    assert rc == 2
    assert_one_error(rc, err, "carries no keyring", "--embed-keyring")


def test_an_embedded_keyring_that_does_not_match_its_digest_is_refused(archive: Archive) -> None:
    rc, _, err = archive.lock("--embed-keyring")
    assert rc == 0, err
    document = json.loads(archive.lockfile.read_text())
    document["keyrings"][0]["data"] = base64.b64encode(b"\x99other key").decode()
    archive.lockfile.write_text(json.dumps(document))
    with pytest.raises(ArchiveError, match="does not match its sha256"):
        lock.read(archive.lockfile)
