"""Expanded packages: the same .deb with data.tar plain, made by dpkg-deb, trusted only under our HMAC."""

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest
from lockfetch_support import sha256_file
from repo_factory import build_deb

from ocistrap.debian import cache as cache_module
from ocistrap.debian import expand
from ocistrap.debian.cache import Cache
from ocistrap.errors import ArchiveError
from ocistrap.pipeline import BACKGROUND_NICE, expansion_nice

FIELDS = {"Package": "odd", "Version": "1:1.0-1", "Architecture": "amd64",
          "Maintainer": "x <x@example.org>", "Description": "d"}


def dpkg_deb(*argv: str) -> bytes:
    return subprocess.run(["dpkg-deb", *argv], capture_output=True, check=True).stdout


def make_deb(tmp_path: Path, compression: str = "gzip", name: str = "odd") -> Path:
    files = {f"usr/share/{name}/blob": bytes(range(256)) * 41 + b"x", "usr/bin/odd": b"#!/bin/sh\n"}
    original = build_deb(tmp_path, {**FIELDS, "Package": name}, files)
    if compression == "gzip":
        return original
    raw, rebuilt = tmp_path / f"{name}-raw", tmp_path / f"{name}-{compression}.deb"
    subprocess.run(["dpkg-deb", "--raw-extract", str(original), str(raw)], check=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(raw), str(rebuilt)],
                   check=True, capture_output=True)
    return rebuilt


def expanded_bytes(deb: Path) -> bytes:
    with open(deb, "rb") as f, open(deb.with_suffix(".expanded"), "w+b") as out:
        size = expand.expand(f, out, "odd")
        out.seek(0)
        data = out.read()
    assert size == len(data)
    return data


def member_names(data: bytes) -> list[str]:
    return [m.name for m in expand.members(io.BytesIO(data), "x")]


@pytest.mark.parametrize("compression", ["gzip", "xz", "zstd", "none"])
def test_an_expanded_deb_is_the_same_package_with_plain_data(tmp_path: Path, compression: str) -> None:
    original = make_deb(tmp_path, compression)
    copy = tmp_path / "expanded.deb"
    copy.write_bytes(expanded_bytes(original))
    assert dpkg_deb("--fsys-tarfile", str(copy)) == dpkg_deb("--fsys-tarfile", str(original))
    assert dpkg_deb("--ctrl-tarfile", str(copy)) == dpkg_deb("--ctrl-tarfile", str(original))
    assert dpkg_deb("--field", str(copy), "Version") == b"1:1.0-1\n"
    names = member_names(copy.read_bytes())
    assert names[0] == "debian-binary" and names[1].startswith("control.tar") and names[2:] == ["data.tar"]


def test_plain_data_points_at_the_tar_that_dpkg_reads(tmp_path: Path) -> None:
    copy = tmp_path / "expanded.deb"
    copy.write_bytes(expanded_bytes(make_deb(tmp_path, "xz")))
    member = expand.plain_data(copy, "odd")
    with open(copy, "rb") as f:
        f.seek(member.data)
        bounded = expand.Bounded(f, member.size)
        assert bounded.read() == dpkg_deb("--fsys-tarfile", str(copy))
        assert bounded.read() == b""


def test_plain_data_refuses_a_package_that_was_not_expanded(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="odd is not expanded: its data member is data.tar.xz"):
        expand.plain_data(make_deb(tmp_path, "xz"), "odd")


def test_a_short_file_is_an_eof_error_for_the_unpacker() -> None:
    bounded = expand.Bounded(io.BytesIO(b"abc"), 5)
    assert bounded.read(2) == b"ab"
    assert bounded.read() == b"c"
    with pytest.raises(EOFError, match="ended 2 bytes before"):
        bounded.read()


def test_not_a_deb_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"<html>not found</html>")
    with pytest.raises(ArchiveError, match="junk is not a .deb"), open(tmp_path / "out", "wb") as out, \
            open(junk, "rb") as f:
        expand.expand(f, out, "junk")


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:-40], "dpkg-deb cannot read its data"),
    (lambda data: data[:120] + b"X" * 10 + data[130:], "damaged ar member header at byte 72"),
])
def test_a_damaged_deb_is_refused(tmp_path: Path, damage, message: str) -> None:
    damaged = tmp_path / "damaged.deb"
    damaged.write_bytes(damage(make_deb(tmp_path, "xz").read_bytes()))
    with pytest.raises(ArchiveError, match=message), open(tmp_path / "out", "wb") as out, \
            open(damaged, "rb") as f:
        expand.expand(f, out, "damaged")


def ar(*members: tuple[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members:
        out += name.encode().ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        out += str(len(data)).encode().ljust(10) + b"`\n" + data + b"\n" * (len(data) % 2)
    return out


@pytest.mark.parametrize("members, message", [
    ((("debian-binary", b"2.0\n"), ("data.tar.xz", b"x"), ("control.tar.xz", b"x")), "does not start with"),
    ((("debian-binary", b"2.0\n"), ("control.tar.xz", b"x")), "does not start with"),
    ((("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz", b"x"), ("data.tar", b"x")),
     "has 2 data.tar members"),
])
def test_the_member_order_is_dpkgs(members, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        expand.data_member(io.BytesIO(ar(*members)), "odd")


# the cache's expansions

def source_of(deb: Path, what: str = "odd", nice: int = 0) -> expand.Source:
    return expand.Source(sha256_file(deb), deb, what, nice=nice)


def expansion(source: expand.Source, cache: Cache) -> bytes:
    with expand.expanded(source, cache) as f:
        return f.read()


def derived(cache: Cache, sha256: str) -> bytes | None:
    f = cache.open_derived(expand.KIND, sha256)
    if f is None:
        return None
    with f:
        return f.read()


def tar_of(data: bytes, tmp_path: Path) -> bytes:
    path = tmp_path / "some.deb"
    path.write_bytes(data)
    return dpkg_deb("--fsys-tarfile", str(path))


def test_an_expansion_is_made_once_then_reused(tmp_path: Path, monkeypatch) -> None:
    cache = Cache(tmp_path / "cache")
    source = source_of(make_deb(tmp_path, "xz"))
    made = expansion(source, cache)
    assert cache.derived_path(expand.KIND, source.sha256).read_bytes() == made
    assert tar_of(made, tmp_path) == dpkg_deb("--fsys-tarfile", str(source.path))
    monkeypatch.setattr(expand, "expand", lambda *a: pytest.fail("made again"))
    assert expansion(source, cache) == made


@pytest.mark.parametrize("tamper", [
    lambda path, tag, other: path.write_bytes(path.read_bytes()[:-1] + b"!"),
    lambda path, tag, other: tag.write_text(tag.read_text().replace("f", "e")),
    lambda path, tag, other: tag.write_text("nonsense"),
    lambda path, tag, other: (path.write_bytes(other.read_bytes()),
                              tag.write_text(other.with_name(other.name + ".tag").read_text())),
])
def test_a_tampered_expansion_is_made_again_not_used(tmp_path: Path, tamper) -> None:
    cache = Cache(tmp_path / "cache")
    source = source_of(make_deb(tmp_path, "xz"))
    other = source_of(make_deb(tmp_path, "gzip", "other"), "other")
    expansion(other, cache)
    good = expansion(source, cache)
    path = cache.derived_path(expand.KIND, source.sha256)
    tamper(path, path.with_name(path.name + ".tag"), cache.derived_path(expand.KIND, other.sha256))
    assert derived(cache, source.sha256) is None
    assert not path.exists()
    assert expansion(source, cache) == good


def test_an_expansion_made_under_another_key_is_not_trusted(tmp_path: Path) -> None:
    source = source_of(make_deb(tmp_path, "xz"))
    expansion(source, Cache(tmp_path / "cache", key_file=tmp_path / "mine.key"))
    elsewhere = Cache(tmp_path / "cache", key_file=tmp_path / "theirs.key")
    assert derived(elsewhere, source.sha256) is None


def test_expand_all_keeps_the_order(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    sources = [source_of(make_deb(tmp_path, "gzip", f"p{i}"), f"p{i}") for i in range(5)]
    pending = expand.Pending(sources, cache, workers=3)
    try:
        paths = pending.wait()
    finally:
        pending.close()
    assert paths == [cache.derived_path(expand.KIND, s.sha256) for s in sources]
    assert [dpkg_deb("--field", str(p), "Package") for p in paths] == [f"p{i}\n".encode() for i in range(5)]


def test_pending_announces_each_package_in_order_and_stops_at_a_failure(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"junk")
    sources = [source_of(make_deb(tmp_path, "gzip", f"p{i}"), f"p{i}") for i in range(3)]
    pending = expand.Pending([*sources[:2], source_of(junk, "junk"), sources[2]], cache, workers=2)
    try:
        ready = pending.ready()
        assert [next(ready), next(ready)] == [1, 2]
        assert all(derived(cache, s.sha256) for s in sources[:2])
        with pytest.raises(ArchiveError, match="junk is not a .deb"):
            next(ready)
    finally:
        pending.close()


def test_background_expansions_run_dpkg_deb_at_a_lower_priority(tmp_path: Path, monkeypatch) -> None:
    seen: list[list[str]] = []
    run = subprocess.run

    def spy(argv, **kwargs):
        seen.append(list(argv))
        return run(argv, **kwargs)
    deb = make_deb(tmp_path, "xz")
    monkeypatch.setattr(expand.subprocess, "run", spy)
    cache = Cache(tmp_path / "cache")
    made = expansion(source_of(deb, nice=10), cache)
    assert [argv[:5] for argv in seen] == [["nice", "-n", "10", "dpkg-deb", "--fsys-tarfile"]]
    assert tar_of(made, tmp_path) == dpkg_deb("--fsys-tarfile", str(deb))


def test_only_the_first_architectures_essential_set_expands_at_full_priority() -> None:
    assert expansion_nice(0, "essential") == 0
    assert expansion_nice(0, "rest") == expansion_nice(1, "essential") == expansion_nice(1, "rest") == BACKGROUND_NICE


# what is verified is what is used: a file swapped in the cache after its check changes nothing

def swapping_after_the_first_hash(monkeypatch, path: Path, replacement: bytes) -> None:
    """Replace PATH by a file of REPLACEMENT's bytes right after the cache first hashed a file:
    what someone who could write the cache would do between the check and the use."""
    real = cache_module.hash_open
    done: list[bool] = []

    def hash_then_swap(f):  # type: ignore[no-untyped-def]
        result = real(f)
        if not done:
            done.append(True)
            swapped = path.with_name(".swapped")
            swapped.write_bytes(replacement)
            os.replace(swapped, path)
        return result
    monkeypatch.setattr(cache_module, "hash_open", hash_then_swap)


def test_a_deb_swapped_after_its_check_is_not_what_gets_expanded(tmp_path: Path, monkeypatch) -> None:
    deb = make_deb(tmp_path, "xz")
    evil = make_deb(tmp_path, "gzip", "evil")
    cache = Cache(tmp_path / "cache")
    source = source_of(deb)
    verified = dpkg_deb("--fsys-tarfile", str(deb))
    swapping_after_the_first_hash(monkeypatch, deb, evil.read_bytes())
    made = expansion(source, cache)
    assert deb.read_bytes() == evil.read_bytes()  # the swap did happen
    assert tar_of(made, tmp_path) == verified


def test_an_expansion_swapped_after_its_check_is_not_what_the_build_reads(tmp_path: Path, monkeypatch) -> None:
    cache = Cache(tmp_path / "cache")
    source, other = source_of(make_deb(tmp_path, "xz")), source_of(make_deb(tmp_path, "gzip", "evil"), "evil")
    good, evil = expansion(source, cache), expansion(other, cache)
    private = tmp_path / "build"
    private.mkdir(mode=0o700)
    swapping_after_the_first_hash(monkeypatch, cache.derived_path(expand.KIND, source.sha256), evil)
    pending = expand.Pending([source], cache, into=private)
    try:
        (path,) = pending.wait()
    finally:
        pending.close()
    assert cache.derived_path(expand.KIND, source.sha256).read_bytes() == evil  # the swap did happen
    assert path.parent == private and path.read_bytes() == good


def test_an_expansion_others_may_write_is_made_again(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    source = source_of(make_deb(tmp_path, "xz"))
    good = expansion(source, cache)
    cache.derived_path(expand.KIND, source.sha256).chmod(0o666)
    assert derived(cache, source.sha256) is None
    assert expansion(source, cache) == good
    assert stat.S_IMODE(cache.derived_path(expand.KIND, source.sha256).stat().st_mode) == 0o644


def test_a_build_names_the_verified_expansion_without_copying_it(tmp_path: Path) -> None:
    """A warm build reads ~160 MB of expansions: linked, not copied, into its scratch directory."""
    cache = Cache(tmp_path / "cache")
    source = source_of(make_deb(tmp_path, "xz"))
    expansion(source, cache)
    private = tmp_path / "build"
    private.mkdir(mode=0o700)
    pending = expand.Pending([source], cache, into=private)
    try:
        (path,) = pending.wait()
    finally:
        pending.close()
    assert path.stat().st_ino == cache.derived_path(expand.KIND, source.sha256).stat().st_ino
