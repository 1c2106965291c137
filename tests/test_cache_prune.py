"""`ocistrap cache`: what the cache holds, and pruning it without breaking a build that needs it."""

import re
from pathlib import Path

import pytest
from lockfetch_support import Archive, archive, assert_cache_verified, assert_one_error, fast_fetcher, template  # noqa: F401  (fixtures)

from ocistrap.debian import expand
from ocistrap.debian.cache import Cache
from ocistrap.errors import ArchiveError


def sizes(out: str) -> dict[str, int]:
    """The file count of each kind in `ocistrap cache` output."""
    return {m[1].strip(): int(m[2]) for m in re.finditer(r"^  (\S.*?)\s+(\d+)\s+[\d.]+ MB$", out, re.M)}


def files(cache: Path, sub: str) -> set[str]:
    directory = cache / sub
    return {p.name for p in directory.iterdir()} if directory.exists() else set()


def expanded(cache: Path) -> set[str]:
    return {name for name in files(cache, "derived/expanded") if not name.endswith(".tag")}


@pytest.fixture
def two_locks(archive: Archive, tmp_path: Path) -> tuple[Path, Path]:
    """The essential set, and the essential set with hello: both fetched (and expanded)."""
    small, large = archive.lockfile, tmp_path / "hello.lock"
    for out, extra in ((small, ()), (large, ("--include", "hello"))):
        rc, _, err = archive.lock(*extra, output=out)
        assert rc == 0, err
        rc, _, err = archive.fetch(lockfile=out)
        assert rc == 0, err
    return small, large


def test_show_counts_each_kind(archive: Archive, two_locks: tuple[Path, Path]) -> None:
    rc, out, err = archive.run("cache", *archive.common())
    assert rc == 0, err
    assert out.splitlines()[0] == f"{archive.cache}:"
    counts = sizes(out)
    # InRelease, Packages.xz, 6 essential .debs, hello and libhello1
    assert counts["verified files"] == 10 and counts["expanded packages"] == 8
    assert counts["parsed indices"] == 1
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")


def test_prune_without_keep_removes_only_what_the_cache_can_make_again(
        archive: Archive, two_locks: tuple[Path, Path]) -> None:
    blobs = files(archive.cache, "blobs/sha256")
    rc, out, err = archive.run("cache", "prune", *archive.common())
    assert rc == 0, err
    assert sizes(out)["expanded packages"] == 8 and sizes(out)["parsed indices"] == 1
    assert files(archive.cache, "blobs/sha256") == blobs and files(archive.cache, "refs")
    assert not expanded(archive.cache) and not files(archive.cache, "parsed")
    assert files(archive.cache, "locks") == {"in-use", "creating"}
    for lockfile in two_locks:
        rc, _, err = archive.fetch("--offline", lockfile=lockfile)
        assert rc == 0, err
    assert len(expanded(archive.cache)) == 8
    assert_cache_verified(archive.cache)


def test_prune_keep_leaves_exactly_what_an_offline_build_of_the_lockfile_reads(
        archive: Archive, two_locks: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    small, large = two_locks
    Cache(archive.cache).set_ref("stale", "0" * 64)
    rc, out, err = archive.run("cache", "prune", "--keep", str(small), *archive.common())
    assert rc == 0, err
    assert sizes(out) == {"verified files": 2, "expanded packages": 2, "refs": 1, "locks": sizes(out)["locks"],
                          "total": 5 + sizes(out)["locks"]}
    assert len(files(archive.cache, "blobs/sha256")) == 8 and len(expanded(archive.cache)) == 6
    monkeypatch.setattr(expand, "expand", lambda *a, **k: pytest.fail("an expansion was made again"))
    rc, _, err = archive.fetch("--offline", lockfile=small)
    assert rc == 0, err
    rc, _, err = archive.lock("--offline", output=small.with_suffix(".again"))
    assert rc == 0, err
    assert small.with_suffix(".again").read_bytes() == small.read_bytes()
    rc, _, err = archive.fetch("--offline", lockfile=large)
    assert_one_error(rc, err, "hello")


def test_dry_run_removes_nothing(archive: Archive, two_locks: tuple[Path, Path]) -> None:
    before = {sub: files(archive.cache, sub) for sub in ("blobs/sha256", "derived/expanded", "parsed", "refs")}
    rc, out, err = archive.run("cache", "prune", "--dry-run", "--keep", str(two_locks[0]),
                               *archive.common())
    assert rc == 0, err
    assert out.startswith("would remove from ") and sizes(out)["verified files"] == 2
    assert {sub: files(archive.cache, sub) for sub in before} == before


def test_prune_refuses_while_another_ocistrap_uses_the_cache(archive: Archive, two_locks: tuple[Path, Path]) -> None:
    in_use = Cache(archive.cache)
    rc, _, err = archive.run("cache", "prune", *archive.common())
    assert_one_error(rc, err, str(archive.cache), "in use by another ocistrap")
    assert len(expanded(archive.cache)) == 8
    del in_use
    rc, _, err = archive.run("cache", "prune", *archive.common())
    assert rc == 0, err


def test_only_a_cache_held_exclusively_prunes(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="without having it to itself"):
        Cache(tmp_path / "c").prune()
    assert Cache(tmp_path / "c", exclusive=True).prune() == []


def test_a_lockfile_the_cache_cannot_vouch_for_is_an_error_and_nothing_goes(
        archive: Archive, two_locks: tuple[Path, Path]) -> None:
    for release in Path(archive.cache, "blobs/sha256").iterdir():
        if release.read_bytes().startswith(b"-----BEGIN PGP SIGNED MESSAGE"):
            release.unlink()
    before = files(archive.cache, "blobs/sha256")
    rc, _, err = archive.run("cache", "prune", "--keep", str(two_locks[0]), *archive.common())
    assert_one_error(rc, err, "Release of unstable", "not in the cache")
    assert files(archive.cache, "blobs/sha256") == before and len(expanded(archive.cache)) == 8


def test_show_takes_no_prune_options(archive: Archive) -> None:
    rc, _, err = archive.run("cache", "show", "--dry-run", *archive.common())
    assert_one_error(rc, err, "ocistrap cache prune")
    assert rc == 2


@pytest.mark.parametrize("action", ["show", "prune"])
def test_a_cache_that_does_not_exist_is_not_made(archive: Archive, action: str) -> None:
    rc, out, err = archive.run("cache", action, *archive.common())
    assert rc == 0, err
    assert out == f"{archive.cache}: no cache there\n" and not archive.cache.exists()
