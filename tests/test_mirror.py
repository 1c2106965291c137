"""Reading a suite's Packages indices: verified first, an .xz one decompressed by a child
process while this one parses, parsed once and then loaded from the cache."""

import lzma
import os
import signal
import subprocess
from pathlib import Path

import pytest
from repo_factory import Mirror, RepoBuilder, SigningKey

from ocistrap.debian import archive, mirror
from ocistrap.debian.cache import Cache
from ocistrap.debian.fetch import Fetcher
from ocistrap.errors import ArchiveError

INDEX = "main/binary-amd64/Packages.xz"
TEXT = b"".join(b"Package: p%d\nDescription: package number %d\n\n" % (n, n * n) for n in range(100_000))
PACKED = lzma.compress(TEXT, preset=0)  # 4 MB of text: a few pieces, more than a pipe holds


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Every decompressing child started, for the test to look at."""
    started: list[subprocess.Popen[bytes]] = []
    start = mirror._start_unxz

    def recording(data: bytes) -> subprocess.Popen[bytes] | None:
        child = start(data)
        if child is not None:
            started.append(child)
        return child

    monkeypatch.setattr(mirror, "_start_unxz", recording)
    return started


def read(data: bytes, path: str = INDEX) -> bytes:
    with mirror._decompressed(data, path) as pieces:
        return b"".join(pieces)


def refusal(data: bytes, path: str = INDEX) -> str:
    with pytest.raises(ArchiveError) as caught:
        read(data, path)
    return str(caught.value)


def test_an_xz_index_is_decompressed_by_a_child(children: list[subprocess.Popen[bytes]]) -> None:
    packed = lzma.compress(TEXT[:1000]) + PACKED + lzma.compress(b"")
    with mirror._decompressed(packed, INDEX) as pieces:
        got = list(pieces)
    assert b"".join(got) == lzma.decompress(packed)
    assert len(got) > 1 and max(map(len, got)) <= mirror.PIPE_SIZE
    (child,) = children
    assert child.returncode == 0


@pytest.mark.parametrize("broken", [PACKED[:-7], PACKED[:5000], PACKED + b"trailing garbage", b"not xz", b""])
def test_a_broken_xz_index_is_refused_by_the_child_as_it_is_here(
        broken: bytes, children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    there = refusal(broken)
    assert children and children[0].returncode == 1
    monkeypatch.setattr(mirror.sys, "executable", "")
    assert refusal(broken) == there
    assert there.startswith(f"{INDEX}: cannot decompress: ") and len(children) == 1


def test_the_child_is_stopped_and_reaped_when_parsing_stops_early(
        children: list[subprocess.Popen[bytes]]) -> None:
    with pytest.raises(ArchiveError, match="a stanza is wrong"):
        with mirror._decompressed(PACKED, INDEX) as pieces:
            next(iter(pieces))
            raise ArchiveError("a stanza is wrong")
    (child,) = children
    assert child.returncode == -signal.SIGKILL and child.stdout.closed  # type: ignore[union-attr]
    with pytest.raises(ChildProcessError):
        os.waitpid(child.pid, os.WNOHANG)


def test_without_a_child_the_index_is_decompressed_here(
        children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror.sys, "executable", "/nonexistent/python3")
    assert read(PACKED) == TEXT
    monkeypatch.setattr(mirror.sys, "executable", "")
    assert read(PACKED) == TEXT
    assert children == []


@pytest.mark.parametrize("path", ["main/binary-amd64/Packages.gz", "main/binary-amd64/Packages"])
def test_other_indices_are_decompressed_here(path: str, children: list[subprocess.Popen[bytes]]) -> None:
    import gzip
    assert read(gzip.compress(TEXT) if path.endswith(".gz") else TEXT, path) == TEXT
    assert children == []


class FakeLibc:
    def __init__(self) -> None:
        self.trimmed: list[int] = []

    def malloc_trim(self, pad: int) -> int:
        self.trimmed.append(pad)
        return 1


def test_freed_memory_is_given_back_where_the_c_library_can(monkeypatch: pytest.MonkeyPatch) -> None:
    glibc = FakeLibc()
    monkeypatch.setattr(mirror.ctypes, "CDLL", lambda name: glibc)
    mirror.give_back_freed_memory()
    assert glibc.trimmed == [0]
    monkeypatch.setattr(mirror.ctypes, "CDLL", lambda name: object())  # musl: no malloc_trim
    mirror.give_back_freed_memory()

    def unloadable(name: object) -> object:
        raise OSError("no C library here")

    monkeypatch.setattr(mirror.ctypes, "CDLL", unloadable)
    mirror.give_back_freed_memory()


# --- load_packages on a signed repository ------------------------------------------------------

@pytest.fixture
def suite(repo: RepoBuilder, http_mirror: Mirror, signing_key: SigningKey,
          tmp_path: Path) -> tuple[mirror.Source, mirror.SignedRelease, Fetcher, Cache]:
    repo.add_deb("base-files", "13.1", essential=True, priority="required")
    repo.add_deb("libfoo1", "2:1.0-1", depends="base-files (>= 13)", extra={"Tag": "role::shared-lib,\n x"})
    repo.add_deb("foo-data", "1.0", architecture="all")
    repo.write("testing")
    source = mirror.Source(mirror=http_mirror.url, suite="testing", keyrings=(signing_key.keyring,))
    fetcher, cache = Fetcher(attempts=1), Cache(tmp_path / "cache", key_file=tmp_path / "cache.key")
    return source, mirror.open_release(source, fetcher, cache), fetcher, cache


def test_an_index_is_parsed_once_then_loaded(suite: tuple[mirror.Source, mirror.SignedRelease, Fetcher, Cache],
                                             repo: RepoBuilder, children: list[subprocess.Popen[bytes]],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    source, signed, fetcher, cache = suite
    glibc = FakeLibc()
    monkeypatch.setattr(mirror.ctypes, "CDLL", lambda name: glibc)
    cold = mirror.load_packages(source, signed, "amd64", fetcher, cache)
    index = (repo.root / "dists/testing/main/binary-amd64/Packages").read_bytes()
    assert cold == archive.parse_packages(index, what=INDEX)
    assert [p.name for p in cold] == ["base-files", "libfoo1", "foo-data"] and len(children) == 1
    assert glibc.trimmed == [0]
    entry = signed.release.files[INDEX]
    assert cache.read(entry.sha256) == (repo.root / "dists/testing" / INDEX).read_bytes()
    monkeypatch.setattr(archive, "parse_package_columns", lambda *a, **k: pytest.fail("parsed again"))
    assert mirror.load_packages(source, signed, "amd64", fetcher, cache) == cold
    assert len(children) == 1 and glibc.trimmed == [0]


def test_an_index_is_parsed_only_once_its_hash_matched(
        suite: tuple[mirror.Source, mirror.SignedRelease, Fetcher, Cache], http_mirror: Mirror,
        repo: RepoBuilder, children: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    source, signed, fetcher, cache = suite
    changed = bytearray((repo.root / "dists/testing" / INDEX).read_bytes())
    changed[len(changed) // 2] ^= 1
    http_mirror.tamper(f"dists/testing/{INDEX}", body=bytes(changed))
    monkeypatch.setattr(archive, "parse_package_columns", lambda *a, **k: pytest.fail("parsed unverified"))
    with pytest.raises(ArchiveError, match="Packages.xz: SHA256 mismatch"):
        mirror.load_packages(source, signed, "amd64", fetcher, cache)
    assert children == [] and list((cache.root / "parsed").iterdir()) == []
