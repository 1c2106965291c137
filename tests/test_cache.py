"""The content-addressed cache: only verified bytes enter it, damage is noticed, sharing is safe."""

import errno
import hashlib
import marshal
import os
import re
import stat
import threading
import time
from pathlib import Path

import pytest
from lockfetch_support import (  # noqa: F401  (fixtures)
    Archive,
    archive,
    assert_cache_verified,
    assert_one_error,
    fast_fetcher,
    sha256_file,
    template,
)

from ocistrap.debian import archive as archive_module
from ocistrap.debian import cache as cache_module
from ocistrap.debian.cache import Cache
from ocistrap.debian.fetch import Fetcher, Wanted
from ocistrap.errors import ArchiveError


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def reject(data: object) -> None:
    raise ArchiveError("rejected by the test")


def leftovers(cache: Cache) -> list[Path]:
    return [p for sub in ("blobs/sha256", "partial") for p in (cache.root / sub).iterdir()]


# the store itself


def test_a_relative_cache_directory_gives_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blob paths go to programs with another working directory (the host's dpkg in chrootless mode)."""
    monkeypatch.chdir(tmp_path)
    cache = Cache(Path("cache"), key_file=tmp_path / "key")
    path = cache.put_bytes(b"x", lambda data: None)
    assert cache.root == tmp_path / "cache" and path.is_absolute()


def test_put_bytes_stores_under_the_sha256(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    path = cache.put_bytes(b"verified", lambda data: None)
    assert path == cache.blob_path(sha(b"verified"))
    assert cache.read(sha(b"verified")) == b"verified"
    assert cache.lookup(sha(b"verified"), len(b"verified")) == path


def test_rejected_bytes_leave_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    with pytest.raises(ArchiveError):
        cache.put_bytes(b"unverified", reject)
    assert leftovers(cache) == []
    assert cache.read(sha(b"unverified")) is None


def test_rejected_partial_is_not_committed(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    digest = sha(b"the real thing")
    cache.partial_path(digest).write_bytes(b"something else")
    with pytest.raises(ArchiveError):
        cache.commit_partial(digest, reject)
    assert cache.lookup(digest, len(b"the real thing")) is None
    assert not cache.blob_path(digest).exists()


def test_lookup_refuses_a_blob_of_the_wrong_size(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    cache.put_bytes(b"12345", lambda data: None)
    assert cache.lookup(sha(b"12345"), 4) is None
    assert cache.lookup(sha(b"absent"), 6) is None


def test_damaged_blob_is_removed_when_read(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    path = cache.put_bytes(b"original", lambda data: None)
    path.write_bytes(b"origina1")
    with pytest.raises(ArchiveError, match="damaged on disk and has been removed"):
        cache.read(sha(b"original"))
    assert not path.exists()


def test_refs_and_parsed_values_round_trip(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    assert cache.get_ref("http://m unstable") is None
    cache.set_ref("http://m unstable", "ab" * 32)
    assert cache.get_ref("http://m unstable") == "ab" * 32
    assert cache.load_parsed("cd" * 32) is None
    cache.store_parsed("cd" * 32, [("a", 1)])
    assert cache.load_parsed("cd" * 32) == [("a", 1)]
    (cache.root / "parsed" / f"{'cd' * 32}.marshal").write_bytes(b"\xff not marshal")
    assert cache.load_parsed("cd" * 32) is None
    assert leftovers(cache) == []


def test_unusable_cache_directory_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ArchiveError, match=str(blocker)):
        Cache(blocker / "cache")


# one blob, two downloaders


def test_concurrent_downloads_of_one_blob_take_turns(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second downloader waits for the first and then finds the blob; nobody shares partial/HEX."""
    deb = next(d for d in archive.repo.debs if "bigdata" in d.filename)
    data = archive.original(deb.filename)
    wanted = Wanted(url=f"{archive.mirror.url}/{deb.filename}", size=len(data), sha256=sha(data), what="bigdata")
    cache = Cache(archive.cache)
    inside, most = [0], [0]
    guard = threading.Lock()
    original = Fetcher._download_once

    def slow_download(self: Fetcher, want: Wanted, into: Cache) -> None:
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            time.sleep(0.3)
            original(self, want, into)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(Fetcher, "_download_once", slow_download)
    results: list[object] = []

    def one() -> None:
        try:
            results.append(Fetcher().download(wanted, cache))
        except Exception as e:  # collected and asserted below
            results.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [cache.blob_path(wanted.sha256)] * 3
    assert most[0] == 1
    assert archive.mirror.requests.count(deb.filename) == 1
    assert_cache_verified(archive.cache)


# damage and the CLI


def test_damaged_cached_release_is_named_and_fetched_again(archive: Archive) -> None:
    rc, _, err = archive.lock()
    assert rc == 0, err
    inrelease = archive.cache / "blobs" / "sha256" / sha(archive.original(archive.dist("InRelease")))
    damaged = bytearray(inrelease.read_bytes())
    damaged[50] ^= 1
    inrelease.write_bytes(bytes(damaged))
    rc, _, err = archive.lock("--offline")
    assert_one_error(rc, err, inrelease.name, "damaged on disk")
    assert_cache_verified(archive.cache)
    rc, _, err = archive.lock()
    assert rc == 0, err
    rc, _, err = archive.lock("--offline")
    assert rc == 0, err


def test_cache_dir_that_cannot_be_created_is_named(archive: Archive, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    archive.cache = blocker / "cache"
    rc, _, err = archive.lock()
    assert_one_error(rc, err, str(archive.cache), "--cache-dir")


def test_only_verified_blobs_after_a_full_run(archive: Archive) -> None:
    assert archive.lock()[0] == 0
    assert archive.fetch()[0] == 0
    blobs = {p.name for p in (archive.cache / "blobs" / "sha256").iterdir()}
    served = {sha256_file(p) for p in archive.repo.root.rglob("*") if p.is_file()}
    assert blobs <= served
    assert len(blobs) == 8  # InRelease, Packages.xz and the six .debs of the essential set
    assert_cache_verified(archive.cache)


# the parsed-index cache


def test_second_lock_does_not_parse_the_index_again(archive: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _, err = archive.lock()
    assert rc == 0, err
    first = archive.lockfile.read_bytes()
    monkeypatch.setattr(archive_module, "parse_package_columns",
                        lambda *a, **k: pytest.fail("the index was parsed again"))
    rc, _, err = archive.lock()
    assert rc == 0, err
    assert archive.lockfile.read_bytes() == first


def test_parsed_index_from_another_package_layout_is_not_trusted(archive: Archive) -> None:
    """A cache written by an ocistrap whose Package had other fields or another layout, or with a
    column cut short, must be re-parsed, not misread."""
    rc, _, err = archive.lock()
    assert rc == 0, err
    honest = archive.lockfile.read_bytes()
    (parsed,) = (archive.cache / "parsed").iterdir()
    cache, index = Cache(archive.cache), parsed.name.removesuffix(".marshal")
    value = cache.load_parsed(index)
    fields, columns = value["fields"], value["columns"]
    others = [
        {"fields": fields[:1] + ["extra"] + fields[1:],
         "columns": columns[:1] + [["x"] * len(columns[0])] + columns[1:]},
        {"fields": fields, "columns": [column[:-1] if n == 3 else column for n, column in enumerate(columns)]},
        {"fields": fields, "rows": [list(row) for row in zip(*columns)]},  # the layout of earlier versions
    ]
    for other in others:
        cache.store_parsed(index, other)
        rc, _, err = archive.lock()
        assert rc == 0, err
        assert archive.lockfile.read_bytes() == honest


def test_damaged_parsed_index_is_parsed_again(archive: Archive) -> None:
    assert archive.lock()[0] == 0
    honest = archive.lockfile.read_bytes()
    (parsed,) = (archive.cache / "parsed").iterdir()
    parsed.write_bytes(parsed.read_bytes()[:40])
    rc, _, err = archive.lock()
    assert rc == 0, err
    assert archive.lockfile.read_bytes() == honest


def test_parsed_index_is_written_only_after_verification(archive: Archive) -> None:
    index = archive.dist("main/binary-amd64/Packages.xz")
    data = bytearray(archive.original(index))
    data[len(data) // 2] ^= 1
    archive.mirror.tamper(index, body=bytes(data))
    rc, _, err = archive.lock()
    assert_one_error(rc, err, "Packages.xz", "SHA256 mismatch")
    assert list((archive.cache / "parsed").iterdir()) == []



# parsed and derived files: trusted only under the account's own key

def test_parsed_values_written_under_another_key_are_not_loaded(tmp_path: Path) -> None:
    mine = Cache(tmp_path / "c", key_file=tmp_path / "mine.key")
    mine.store_parsed("cd" * 32, {"a": [1, 2]})
    assert Cache(tmp_path / "c", key_file=tmp_path / "mine.key").load_parsed("cd" * 32) == {"a": [1, 2]}
    assert Cache(tmp_path / "c", key_file=tmp_path / "theirs.key").load_parsed("cd" * 32) is None
    path = tmp_path / "c" / "parsed" / f"{'cd' * 32}.marshal"
    data = path.read_bytes()
    path.write_bytes(data[:32] + marshal.dumps({"a": [6, 6, 6]}))
    assert mine.load_parsed("cd" * 32) is None


def test_parsed_values_are_bound_to_their_index(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c", key_file=tmp_path / "k")
    cache.store_parsed("cd" * 32, ["cd"])
    parsed = tmp_path / "c" / "parsed"
    (parsed / f"{'ef' * 32}.marshal").write_bytes((parsed / f"{'cd' * 32}.marshal").read_bytes())
    assert cache.load_parsed("ef" * 32) is None


def test_the_key_lives_outside_the_cache_readable_only_by_its_owner(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cache = Cache(tmp_path / "c")
    cache.store_parsed("cd" * 32, [1])
    key = tmp_path / "state" / "ocistrap" / "cache.key"
    assert cache.key_file == key and key.stat().st_mode & 0o777 == 0o600 and len(key.read_bytes()) == 32
    assert Cache(tmp_path / "c").load_parsed("cd" * 32) == [1]
    assert not any(p.name == "cache.key" for p in (tmp_path / "c").rglob("*"))


def test_without_a_writable_key_place_nothing_derived_outlives_the_process(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = Cache(tmp_path / "c", key_file=blocker / "cache.key")
    cache.store_parsed("cd" * 32, [1])
    assert cache.load_parsed("cd" * 32) == [1]
    assert Cache(tmp_path / "c", key_file=blocker / "cache.key").load_parsed("cd" * 32) is None


def test_racing_processes_agree_on_one_key(tmp_path: Path) -> None:
    from ocistrap.debian.cache import load_key
    keys = []
    threads = [threading.Thread(target=lambda: keys.append(load_key(tmp_path / "s" / "cache.key"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and keys[0] is not None


def test_temp_files_of_killed_writers_are_swept_but_not_those_being_written(tmp_path: Path) -> None:
    import fcntl

    from ocistrap.debian.cache import sweep_orphans
    cache = Cache(tmp_path / "c")
    partial, locks = cache.root / "partial", cache.root / "locks"
    for name in (".tmp-orphan", ".tmp-written", "ab" * 32):
        (partial / name).write_bytes(b"x")
    with open(partial / ".tmp-written", "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        assert sweep_orphans(partial, locks) == [".tmp-orphan"]
    assert sorted(p.name for p in partial.iterdir()) == [".tmp-written", "ab" * 32]
    assert sweep_orphans(partial, locks) == [".tmp-written"]
    assert [p.name for p in partial.iterdir()] == ["ab" * 32]


def test_a_sweep_waits_for_a_writer_making_its_temp_file(tmp_path: Path) -> None:
    """Between creating its temp file and locking it a writer holds locks/creating: a sweep in
    that moment would take the unlocked file for an orphan."""
    import fcntl

    from ocistrap.debian.cache import sweep_orphans
    cache = Cache(tmp_path / "c")
    swept: list[list[str]] = []
    with open(cache.root / "locks" / "creating", "rb") as creating:
        fcntl.flock(creating, fcntl.LOCK_SH)
        (cache.root / "partial" / ".tmp-just-made").write_bytes(b"")
        sweeper = threading.Thread(target=lambda: swept.append(sweep_orphans(cache.root / "partial",
                                                                             cache.root / "locks")))
        sweeper.start()
        sweeper.join(0.3)
        assert sweeper.is_alive() and (cache.root / "partial" / ".tmp-just-made").exists()
    sweeper.join()
    assert swept == [[".tmp-just-made"]]


def test_a_new_cache_sweeps_what_a_killed_build_left_at_once(tmp_path: Path) -> None:
    """A cache copied or used right after a build was killed holds its fresh temp files: the next
    process removes them, so that a failed build leaves the cache as it found it."""
    Cache(tmp_path / "c")
    orphan = tmp_path / "c" / "partial" / ".tmp-orphan"
    orphan.write_bytes(b"half an expansion")
    Cache(tmp_path / "c")
    assert not orphan.exists()


# who may write the cache: its owner alone, and never through a link

@pytest.mark.parametrize("sub", ["", "partial", "blobs/sha256", "derived/expanded", "locks"])
def test_a_cache_directory_others_may_write_is_refused_naming_it(tmp_path: Path, sub: str) -> None:
    Cache(tmp_path / "c")
    loose = tmp_path / "c" / sub
    loose.chmod(0o775)
    with pytest.raises(ArchiveError, match=rf"^refusing the cache directory {re.escape(str(loose))}: other users "
                                         rf"may write to it \(run `chmod go-w"):
        Cache(tmp_path / "c")


def test_a_way_to_the_cache_others_may_change_is_refused_unless_sticky(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ArchiveError, match=f"refusing the cache directory {re.escape(str(shared))}: other users"):
        Cache(shared / "c")
    shared.chmod(0o1777)  # as /tmp: others cannot rename what is ours
    Cache(shared / "c")


def test_a_directory_of_another_user_cannot_hold_a_cache() -> None:
    from ocistrap.debian.cache import directory_problem
    def st(mode: int, uid: int) -> os.stat_result:
        return os.stat_result((mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))
    other = os.geteuid() + 1 if os.geteuid() else 1000
    assert directory_problem(st(stat.S_IFDIR | 0o755, other)) == f"it belongs to another user (uid {other})"
    assert directory_problem(st(stat.S_IFDIR | 0o755, 0)) is None
    assert directory_problem(st(stat.S_IFDIR | 0o700, os.geteuid())) is None
    assert directory_problem(st(stat.S_IFDIR | 0o1777, 0), sticky_ok=True) is None
    assert directory_problem(st(stat.S_IFDIR | 0o1777, 0)) == "other users may write to it"
    assert directory_problem(st(stat.S_IFLNK | 0o777, os.geteuid())) == "it is a symbolic link"


def test_a_linked_partial_directory_is_refused_and_nothing_is_swept_where_it_leads(tmp_path: Path) -> None:
    Cache(tmp_path / "c")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "build-precious").mkdir(parents=True)
    (elsewhere / ".tmp-precious").write_bytes(b"mine")
    os.utime(elsewhere / ".tmp-precious", (time.time() - 3600,) * 2)
    partial = tmp_path / "c" / "partial"
    partial.rmdir()
    partial.symlink_to(elsewhere)
    with pytest.raises(ArchiveError, match=f"refusing the cache directory {re.escape(str(partial))}: it is a symbolic"):
        Cache(tmp_path / "c")
    assert sorted(p.name for p in elsewhere.iterdir()) == [".tmp-precious", "build-precious"]


def test_a_link_in_place_of_a_blob_or_a_lock_is_removed_not_followed(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    honest = tmp_path / "honest"
    honest.write_bytes(b"verified")
    cache.blob_path(sha(b"verified")).symlink_to(honest)
    assert cache.lookup(sha(b"verified"), len(b"verified")) is None
    assert cache.read(sha(b"verified")) is None
    (cache.root / "locks" / ("ab" * 32)).symlink_to(tmp_path / "made-elsewhere")
    with cache.claim("ab" * 32):
        pass
    assert not (tmp_path / "made-elsewhere").exists() and honest.read_bytes() == b"verified"


def test_a_blob_others_may_write_is_not_used(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "c")
    path = cache.put_bytes(b"verified", lambda data: None)
    path.chmod(0o666)
    assert cache.lookup(sha(b"verified"), len(b"verified")) is None
    assert not path.exists()


def test_a_derived_file_that_fails_after_it_was_written_leaves_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    """The disk fills up while the tag is written, after the expansion itself was: both go."""
    cache = Cache(tmp_path / "c")
    replace = os.replace

    def full_for_tags(source, target, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(target).endswith(".tag"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return replace(source, target, *args, **kwargs)
    monkeypatch.setattr(os, "replace", full_for_tags)
    with pytest.raises(ArchiveError, match="No space left on device"):
        cache.derive("expanded", "ab" * 32, lambda out: out.write(b"x" * 100_000))
    assert list((cache.root / "partial").iterdir()) == []
    assert list((cache.root / "derived" / "expanded").iterdir()) == []


@pytest.mark.parametrize(("uid_map", "seen"), [
    ("         0          0 4294967295\n", 0),
    ("         0       1000          1\n", 65534),
    ("         0     100000      65536\n", 65534),
    ("      1000          0          1\n         0     100000       1000\n", 1000),
])
def test_root_of_the_host_as_a_user_namespace_shows_it(uid_map: str, seen: int) -> None:
    """Inside `unshare --map-current-user` (a CI container) / belongs to the overflow uid: that is
    root of the host, not another user, so a cache below it is not refused."""
    assert cache_module.root_seen_as(uid_map, 65534) == seen
