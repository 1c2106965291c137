"""Unpacking hostile package data: nothing lands outside the root, refusals name package and member.

Unit tests feed crafted tar streams to ``unpack.unpack`` on a plain temp dir
(no root, no namespace); the .deb tests go through the real ``dpkg-deb
--fsys-tarfile`` to show it passes such members on untouched; the e2e tests
build from a signed generated archive whose essential set holds a hostile .deb.
"""

import gzip
import io
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import ocistrap
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_factory import BuiltDeb, RepoBuilder, control_text, sha256_of

from ocistrap.rootfs import spawn, unpack
from ocistrap.rootfs.unpack import UnpackError

MTIME = 1_700_000_000
IS_ROOT = os.geteuid() == 0


# ---- crafting archives ----

@dataclass(frozen=True)
class M:
    """One member to craft: TYPE is a tarfile type, DATA the content of a regular file."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    pax: tuple[tuple[str, str], ...] = ()


def d(name: str, mode: int = 0o755) -> M:
    return M(name, tarfile.DIRTYPE, mode=mode)


def f(name: str, data: bytes = b"data\n", mode: int = 0o644) -> M:
    return M(name, data=data, mode=mode)


def sym(name: str, target: str) -> M:
    return M(name, tarfile.SYMTYPE, link=target, mode=0o777)


def hard(name: str, target: str) -> M:
    return M(name, tarfile.LNKTYPE, link=target)


def tar_bytes(*members: M, format: int = tarfile.GNU_FORMAT) -> bytes:
    """A tar archive of MEMBERS exactly as given: tarfile writes names like '../x' unchanged."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=format) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.mode, info.mtime, info.uid, info.gid = m.type, m.mode, MTIME, m.uid, m.gid
            info.linkname = m.link
            info.size = len(m.data) if m.type == tarfile.REGTYPE else 0
            info.pax_headers = dict(m.pax)
            tar.addfile(info, io.BytesIO(m.data) if info.size else None)
    return out.getvalue()


def ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n".encode()
    return header + data + (b"\n" if len(data) % 2 else b"")


def hostile_deb(path: Path, package: str, data_tar: bytes, *, version: str = "1.0") -> Path:
    """A .deb put together by hand (ar + tar), since dpkg-deb --build refuses such data."""
    control = control_text({"Package": package, "Version": version, "Architecture": "amd64",
                            "Maintainer": "Mallory <m@example.invalid>", "Essential": "yes",
                            "Priority": "required", "Description": "hostile\n test package"})
    control_tar = tar_bytes(d("."), f("./control", control.encode()))
    path.write_bytes(b"!<arch>\n" + ar_member("debian-binary", b"2.0\n")
                     + ar_member("control.tar.gz", gzip.compress(control_tar, mtime=0))
                     + ar_member("data.tar.gz", gzip.compress(data_tar, mtime=0)))
    return path


# ---- a root with an outside next to it ----

@dataclass
class Scene:
    root: Path
    outside: Path

    def unpack(self, data: bytes, *, package: str = "evil", **kwargs: object) -> unpack.Unpacked:
        return unpack.unpack(io.BytesIO(data), self.root, package=package, **kwargs)  # type: ignore[arg-type]

    def outside_listing(self) -> dict[str, bytes]:
        return {str(p.relative_to(self.outside)): p.read_bytes() if p.is_file() else b""
                for p in sorted(self.outside.rglob("*"))}


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    """ROOT to unpack into and OUTSIDE beside it holding a file nothing may touch."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "precious").write_text("original\n")
    s = Scene(root, outside)
    before = s.outside_listing()
    yield s
    assert s.outside_listing() == before, "something was written outside the root"


def refused(scene: Scene, data: bytes, member: str, reason: str) -> None:
    with pytest.raises(UnpackError) as caught:
        scene.unpack(data)
    message = str(caught.value)
    assert caught.value.refused, message
    assert message.startswith("refusing to unpack evil: member "), message
    assert repr(member) in message and reason in message, message


# ---- what a package may do ----

def test_an_ordinary_package_unpacks_with_modes_mtimes_and_links(scene: Scene) -> None:
    data = tar_bytes(d("./"), d("./usr/"), d("./usr/bin/"), f("./usr/bin/tool", b"#!/bin/sh\n", 0o755),
                     hard("./usr/bin/tool2", "./usr/bin/tool"), sym("./usr/bin/t", "tool"),
                     d("./etc/", 0o700), f("./etc/secret", b"s", 0o600))
    result = scene.unpack(data, same_owner=False)
    assert result == unpack.Unpacked(members=8, file_bytes=11)
    tool = scene.root / "usr/bin/tool"
    assert tool.read_bytes() == b"#!/bin/sh\n" and stat.S_IMODE(tool.stat().st_mode) == 0o755
    assert os.path.samefile(tool, scene.root / "usr/bin/tool2")
    assert os.readlink(scene.root / "usr/bin/t") == "tool"
    assert stat.S_IMODE((scene.root / "etc").stat().st_mode) == 0o700
    for path in ("usr/bin/tool", "usr/bin", "etc", "etc/secret", ""):
        assert (scene.root / path).stat().st_mtime == MTIME, path
    assert (scene.root / "usr/bin/t").lstat().st_mtime == MTIME


def test_later_members_replace_files_and_links_but_keep_directories(scene: Scene) -> None:
    (scene.root / "a").write_text("old")
    (scene.root / "b").symlink_to("/nowhere")
    (scene.root / "c").mkdir()
    (scene.root / "c/keep").write_text("k")
    scene.unpack(tar_bytes(f("./a", b"new"), f("./b", b"file"), d("./c", 0o750)), same_owner=False)
    assert (scene.root / "a").read_text() == "new"
    assert not (scene.root / "b").is_symlink() and (scene.root / "b").read_text() == "file"
    assert (scene.root / "c/keep").read_text() == "k"
    assert stat.S_IMODE((scene.root / "c").stat().st_mode) == 0o750


def test_merged_usr_symlinks_are_kept_and_written_through(scene: Scene) -> None:
    (scene.root / "usr/bin").mkdir(parents=True)
    (scene.root / "bin").symlink_to("usr/bin")
    (scene.root / "var").mkdir()
    (scene.root / "run").mkdir()
    (scene.root / "var/run").symlink_to("/run")
    scene.unpack(tar_bytes(d("./bin/"), f("./bin/sh", b"sh"), d("./var/run/"), f("./var/run/pid", b"1")),
                 same_owner=False)
    assert os.readlink(scene.root / "bin") == "usr/bin"
    assert (scene.root / "usr/bin/sh").read_bytes() == b"sh"
    assert (scene.root / "run/pid").read_bytes() == b"1"


MERGED = ("bin", "sbin", "lib", "lib64")


def test_aliased_directories_are_made_merged_when_first_needed(scene: Scene) -> None:
    scene.unpack(tar_bytes(d("./"), d("./bin/", 0o700), f("./bin/sh", b"sh"), f("./lib64/ld.so", b"ld"),
                           d("./etc/"), f("./etc/x")), same_owner=False, aliased=MERGED)
    scene.unpack(tar_bytes(d("./bin/"), f("./bin/ls", b"ls"), d("./usr/"), d("./usr/bin/", 0o755)),
                 same_owner=False, aliased=MERGED)
    for top in ("bin", "lib64"):
        assert os.readlink(scene.root / top) == f"usr/{top}"
        assert stat.S_IMODE((scene.root / "usr" / top).stat().st_mode) == 0o755
    assert (scene.root / "usr/bin/sh").read_bytes() == b"sh" and (scene.root / "usr/bin/ls").read_bytes() == b"ls"
    assert (scene.root / "usr/lib64/ld.so").read_bytes() == b"ld"
    assert not (scene.root / "sbin").exists() and not (scene.root / "lib").exists()
    assert (scene.root / "etc").is_dir() and not (scene.root / "etc").is_symlink()


def test_an_aliased_name_is_a_plain_directory_below_the_top(scene: Scene) -> None:
    scene.unpack(tar_bytes(d("./usr/"), d("./usr/local/"), d("./usr/local/bin/"), f("./opt/lib/x")),
                 same_owner=False, aliased=MERGED)
    assert not (scene.root / "usr/local/bin").is_symlink() and not (scene.root / "opt/lib").is_symlink()
    assert not (scene.root / "bin").exists()


def test_a_package_may_ship_the_alias_itself(scene: Scene) -> None:
    scene.unpack(tar_bytes(f("./bin/sh")), same_owner=False, aliased=MERGED)
    scene.unpack(tar_bytes(sym("./bin", "usr/bin"), sym("./sbin", "usr/sbin")), same_owner=False, aliased=MERGED)
    assert os.readlink(scene.root / "bin") == "usr/bin" and os.readlink(scene.root / "sbin") == "usr/sbin"
    assert (scene.root / "usr/bin/sh").exists()


def test_a_directory_only_under_usr_gets_its_alias_at_the_end(scene: Scene) -> None:
    """As usrmerge's conversion ends: /usr/lib32 alone becomes /lib32 -> usr/lib32 too."""
    scene.unpack(tar_bytes(f("./usr/lib32/x"), f("./bin/sh"), f("./usr/libx32")), same_owner=False,
                 aliased=MERGED)
    unpack.alias_usr_only(scene.root, ("bin", "lib32", "libx32", "libo32"))
    assert os.readlink(scene.root / "lib32") == "usr/lib32" and os.readlink(scene.root / "bin") == "usr/bin"
    assert not os.path.lexists(scene.root / "libx32") and not os.path.lexists(scene.root / "libo32")


def test_aliases_at_the_end_never_follow_a_link_out_of_the_root(scene: Scene) -> None:
    (scene.root / "usr").symlink_to(scene.outside)
    (scene.outside / "lib32").mkdir()
    unpack.alias_usr_only(scene.root, ("lib32",))
    assert not os.path.lexists(scene.root / "lib32")
    (scene.outside / "lib32").rmdir()


def test_a_directory_member_replaces_a_symlink_that_is_no_directory(scene: Scene) -> None:
    (scene.root / "file").write_text("x")
    (scene.root / "lib").symlink_to("file")
    scene.unpack(tar_bytes(d("./lib/")), same_owner=False)
    assert (scene.root / "lib").is_dir() and not (scene.root / "lib").is_symlink()


def test_a_read_only_directory_is_filled_before_its_mode_is_set(scene: Scene) -> None:
    scene.unpack(tar_bytes(d("./ro/", 0o555), f("./ro/x")), same_owner=False)
    assert (scene.root / "ro/x").exists() and stat.S_IMODE((scene.root / "ro").stat().st_mode) == 0o555


def test_links_in_the_tree_lead_inside_the_root_as_in_a_chroot(scene: Scene) -> None:
    """A symlink another package left, pointing at an absolute path, is followed inside the root."""
    (scene.root / "escape").symlink_to(scene.outside)
    (scene.root / "up").symlink_to("../../../../../../..")
    scene.unpack(tar_bytes(f("./escape/precious", b"pwned"), f(f"./up{scene.outside}/new", b"pwned")),
                 same_owner=False)
    inside = scene.root / str(scene.outside).lstrip("/")
    assert (inside / "precious").read_bytes() == b"pwned"
    assert (inside / "new").read_bytes() == b"pwned"


def test_names_are_normalised() -> None:
    assert unpack.normalise("./usr//bin/./ls") == "usr/bin/ls"
    assert unpack.normalise("./") == "" == unpack.normalise(".")
    assert unpack.normalise("etc/") == "etc"


@pytest.mark.skipif(not IS_ROOT, reason="owners and file capabilities need root (tar restores them only as root)")
def test_as_root_owners_setuid_bits_and_capabilities_are_applied(scene: Scene) -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw, v2
    data = tar_bytes(d("./", 0o755), M("./ping", data=b"elf", mode=0o4755, uid=0, gid=0,
                                       pax=(("SCHILY.xattr.security.capability", cap.decode("utf-8", "surrogateescape")),
                                            ("SCHILY.xattr.user.other", "dropped"))),
                     M("./mail", tarfile.DIRTYPE, mode=0o2775, uid=8, gid=8),
                     M("./own", tarfile.SYMTYPE, link="ping", uid=5, gid=6),
                     format=tarfile.PAX_FORMAT)
    scene.unpack(data)
    ping = (scene.root / "ping").stat()
    assert stat.S_IMODE(ping.st_mode) == 0o4755
    assert os.getxattr(scene.root / "ping", "security.capability") == cap
    assert "user.other" not in os.listxattr(scene.root / "ping")
    mail = (scene.root / "mail").stat()
    assert (mail.st_uid, mail.st_gid, stat.S_IMODE(mail.st_mode)) == (8, 8, 0o2775)
    own = (scene.root / "own").lstat()
    assert (own.st_uid, own.st_gid) == (5, 6)


def test_where_own_ids_stand_for_root_only_other_owners_and_directories_are_chowned(
        scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    chowned: list[tuple[int, int]] = []
    monkeypatch.setattr(unpack.os, "chown", lambda _path, uid, gid, **_kw: chowned.append((uid, gid)))
    monkeypatch.setattr(unpack.os, "fchown", lambda _fd, uid, gid: chowned.append((uid, gid)))
    data = tar_bytes(d("./etc/"), f("./etc/x"), sym("./l", "etc/x"), M("./etc/shadow", data=b"s", uid=0, gid=42),
                     M("./own", tarfile.SYMTYPE, link="etc", uid=5, gid=6))
    scene.unpack(data, same_owner=True, own_shown_as_root=True)
    assert sorted(chowned) == [(0, 0), (0, 42), (5, 6)]
    scene.unpack(tar_bytes(f("./etc/x")), same_owner=True, own_shown_as_root=False)
    assert sorted(chowned) == [(0, 0), (0, 0), (0, 42), (5, 6)]


# ---- what a package may not do ----

@pytest.mark.parametrize("name", ["../outside/pwned", "./../outside/pwned", "usr/../../outside/pwned",
                                  "a/b/../../../outside/pwned"])
def test_dot_dot_names_are_refused(scene: Scene, name: str) -> None:
    refused(scene, tar_bytes(d("./"), f(name, b"pwned")), name, "has '..' in its path")


def test_absolute_names_are_refused(scene: Scene) -> None:
    name = str(scene.outside / "pwned")
    refused(scene, tar_bytes(f(name, b"pwned")), name, "has an absolute path")


@pytest.mark.parametrize("target", ["ABSOLUTE", "../outside", "./../outside", "sub/../../outside"])
def test_writing_through_a_symlink_the_package_points_outside_is_refused(scene: Scene, target: str) -> None:
    link = str(scene.outside) if target == "ABSOLUTE" else target
    data = tar_bytes(d("./sub/"), sym("./escape", link), f("./escape/precious", b"pwned"))
    refused(scene, data, "./escape/precious", "goes through the symlink /escape, which this package made")


def test_a_directory_through_an_escaping_symlink_of_the_package_is_refused(scene: Scene) -> None:
    data = tar_bytes(sym("./escape", str(scene.outside)), d("./escape/newdir/"))
    refused(scene, data, "./escape/newdir", "goes through the symlink /escape")


def test_a_symlink_chain_cannot_climb_out(scene: Scene) -> None:
    data = tar_bytes(sym("./a", "b"), sym("./b", "/"), f("./a/outside/precious", b"pwned"))
    refused(scene, data, "./a/outside/precious", "goes through the symlink /b")


def test_a_symlink_loop_is_refused(scene: Scene) -> None:
    (scene.root / "x").symlink_to("y")
    (scene.root / "y").symlink_to("x")
    refused(scene, tar_bytes(f("./x/file")), "./x/file", "too many symlinks")


@pytest.mark.parametrize("target,reason", [
    ("../outside/precious", "has '..' in its path"),
    ("OUTSIDE", "has an absolute path"),
    ("./etc/passwd", "no file this package unpacked before it"),
])
def test_hard_links_must_name_a_file_of_the_same_package(scene: Scene, target: str, reason: str) -> None:
    (scene.root / "etc").mkdir()
    (scene.root / "etc/passwd").write_text("root:x:0:0\n")
    target = str(scene.outside / "precious") if target == "OUTSIDE" else target
    refused(scene, tar_bytes(hard("./link", target)), "./link", reason)
    assert not (scene.root / "link").exists()


def test_a_hard_link_through_a_symlink_to_outside_is_refused(scene: Scene) -> None:
    data = tar_bytes(sym("./escape", str(scene.outside)), hard("./link", "./escape/precious"))
    refused(scene, data, "./link", "no file this package unpacked before it")


@pytest.mark.parametrize("kind,reason", [(tarfile.CHRTYPE, "is a device node"),
                                         (tarfile.BLKTYPE, "is a device node"),
                                         (tarfile.FIFOTYPE, "is a FIFO")])
def test_device_nodes_and_fifos_are_refused(scene: Scene, kind: bytes, reason: str) -> None:
    refused(scene, tar_bytes(d("./dev/"), M("./dev/sda", kind)), "./dev/sda", reason)
    assert not (scene.root / "dev/sda").exists()


def test_a_regular_member_cannot_replace_a_full_directory(scene: Scene) -> None:
    (scene.root / "etc").mkdir()
    (scene.root / "etc/keep").write_text("k")
    refused(scene, tar_bytes(f("./etc", b"x")), "./etc", "would replace the directory /etc")


def test_too_many_members_are_refused(scene: Scene) -> None:
    data = tar_bytes(*(f(f"./f{i}", b"") for i in range(101)))
    with pytest.raises(UnpackError, match=r"member './f100' is one more than the 100 members"):
        scene.unpack(data, max_members=100, same_owner=False)
    assert len(list(scene.root.iterdir())) == 100


def test_a_huge_member_with_a_short_body_is_an_error_not_a_huge_file(scene: Scene) -> None:
    header = tarfile.TarInfo("./huge")
    header.size = 1 << 40
    data = header.tobuf(tarfile.GNU_FORMAT) + b"x" * 4096
    with pytest.raises(UnpackError, match="cannot unpack evil: its data is not a valid tar archive after member './huge'") as caught:
        scene.unpack(data, same_owner=False)
    assert not caught.value.refused
    assert (scene.root / "huge").stat().st_size <= 4096


@pytest.mark.parametrize("data", [b"", b"garbage" * 100, b"\0" * 100])
def test_what_is_not_a_tar_stream_is_an_unpack_error(scene: Scene, data: bytes) -> None:
    with pytest.raises(UnpackError, match="^cannot unpack evil: "):
        scene.unpack(data, same_owner=False)


# ---- through dpkg-deb, as bootstrap runs it ----

def test_dpkg_deb_passes_hostile_members_on_and_unpack_refuses_them(scene: Scene, tmp_path: Path) -> None:
    deb = hostile_deb(tmp_path / "evil.deb", "evil", tar_bytes(d("./"), f("./../outside/pwned", b"pwned")))
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as dpkg_deb:
        assert dpkg_deb.stdout is not None
        with pytest.raises(UnpackError, match=r"refusing to unpack evil: member './../outside/pwned'"):
            unpack.unpack(dpkg_deb.stdout, scene.root, package="evil", same_owner=False)


# ---- fuzz: anything else than our error is a bug ----

SEED = tar_bytes(d("./"), d("./usr/"), f("./usr/x", b"abc" * 200), sym("./l", "usr/x"), hard("./h", "./usr/x"),
                 format=tarfile.PAX_FORMAT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=8),
       st.integers(0, len(SEED)))
def test_mangled_archives_unpack_or_raise_unpack_error(tmp_path: Path, flips: list[tuple[int, int]],
                                                       cut: int) -> None:
    data = bytearray(SEED[:cut] if cut else SEED)
    for offset, value in flips:
        if offset < len(data):
            data[offset] = value
    root = tmp_path / f"r{os.urandom(6).hex()}"
    root.mkdir()
    try:
        unpack.unpack(io.BytesIO(bytes(data)), root, package="fuzz", same_owner=False)
    except UnpackError:
        pass
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(tmp_path) or path.is_symlink()


PARTS = ["..", ".", "", "a", "b", "escape", "OUT", "a\0b"]
KINDS = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.FIFOTYPE]
paths = st.lists(st.sampled_from(PARTS), min_size=1, max_size=4)
members = st.tuples(st.booleans(), paths, st.sampled_from(KINDS), st.booleans(), paths, st.integers(-1, 2**33))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(members, max_size=8))
def test_hostile_member_lists_never_reach_outside(tmp_path: Path, specs: list) -> None:
    """Random mixes of '..', absolute names, symlinks and hard links to OUTSIDE, odd types and
    ids: each either unpacks or raises UnpackError, and OUTSIDE never changes."""
    case = tmp_path / os.urandom(6).hex()
    s = Scene(case / "root", case / "outside")
    s.root.mkdir(parents=True)
    s.outside.mkdir()
    (s.outside / "precious").write_text("original\n")
    before = s.outside_listing()

    def text(absolute: bool, parts: list[str]) -> str:
        joined = "/".join(str(s.outside) if p == "OUT" else p for p in parts)
        return "/" + joined if absolute else joined

    crafted = [M(text(absolute, name), kind, b"x" if kind == tarfile.REGTYPE else b"",
                 link=text(link_absolute, link), uid=number % 70000, mode=number % 0o10000)
               for absolute, name, kind, link_absolute, link, number in specs]
    try:
        s.unpack(tar_bytes(*crafted, format=tarfile.PAX_FORMAT))
    except UnpackError:
        pass
    assert s.outside_listing() == before


# ---- e2e: a signed archive whose essential set holds a hostile .deb ----

def add_prebuilt(builder: RepoBuilder, deb: Path, package: str) -> None:
    """Put a hand-made .deb into the pool and the index (repo_factory builds only honest ones)."""
    pool = builder.root / "pool/main" / package[0] / package
    pool.mkdir(parents=True, exist_ok=True)
    target = pool / deb.name
    target.write_bytes(deb.read_bytes())
    data = target.read_bytes()
    fields = {"Package": package, "Version": "1.0", "Architecture": "amd64", "Essential": "yes",
              "Priority": "required", "Maintainer": "Mallory <m@example.invalid>",
              "Description": "hostile\n test package"}
    filename = target.relative_to(builder.root).as_posix()
    stanza = control_text(fields) + f"Filename: {filename}\nSize: {len(data)}\nSHA256: {sha256_of(data)}\n"
    builder.debs.append(BuiltDeb(component="main", architecture="amd64", filename=filename, stanza=stanza))


ATTACKS = {
    "dot-dot": lambda home: (tar_bytes(d("./"), f("./" + "../" * 30 + str(home / "pwned").lstrip("/"), b"pwned")),
                             "has '..' in its path"),
    "absolute": lambda home: (tar_bytes(d("./"), f(str(home / "precious"), b"pwned")), "has an absolute path"),
    "symlink": lambda home: (tar_bytes(d("./"), sym("./escape", str(home)), f("./escape/precious", b"pwned")),
                             "goes through the symlink /escape"),
    "hard-link": lambda home: (tar_bytes(d("./"), hard("./link", "../" * 30 + str(home / "precious").lstrip("/"))),
                               "has '..' in its path"),
}


@pytest.mark.userns
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_build_with_a_hostile_essential_deb_fails_and_touches_nothing(attack: str, repo: RepoBuilder,
                                                                      http_mirror, signing_key, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious").write_text("original\n")
    data, reason = ATTACKS[attack](home)
    repo.add_deb("base-files", "13", essential=True, priority="required")
    add_prebuilt(repo, hostile_deb(tmp_path / "evil_1.0_amd64.deb", "evil", data), "evil")
    repo.write("unstable")
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = ocistrap("-q", "build", "unstable", "--mirror", http_mirror.url, "--keyring", str(signing_key.keyring),
                      "--variant", "essential", "--arch", "amd64", "-o", f"tar:{out / 'rootfs.tar'}",
                      env=env, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert "refusing to unpack evil: member " in lines[0] and reason in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in home.iterdir()) == ["precious"]
    assert (home / "precious").read_text() == "original\n"
    assert list(out.iterdir()) == []


CHECKS_BROKEN = """
import os, sys
from pathlib import Path
from ocistrap.rootfs import bootplan, innerboot, mounting, unpack

def resolve_nothing(self, path, *, create):
    os.makedirs("/" + path, exist_ok=True)
    return path

unpack.normalise = lambda name: name.removeprefix("./")
unpack._Tree.resolve = resolve_nothing
deb, root, home = sys.argv[1:]
mounting.mount_staging(Path(root))
innerboot._extract_all([bootplan.Deb(name="evil", path=deb)], Path(root))
print(Path(root, home.lstrip("/"), "pwned").read_text())
"""


@pytest.mark.userns
def test_the_chroot_holds_even_with_the_member_checks_switched_off(tmp_path: Path) -> None:
    """The second wall alone: '..' stops at the chroot's /, so the write lands inside the staging root."""
    from ocistrap.debian import expand
    home = tmp_path / "home"
    home.mkdir()
    deb = hostile_deb(tmp_path / "evil.deb", "evil",
                      tar_bytes(d("./"), f("./" + "../" * 30 + str(home / "pwned").lstrip("/"), b"pwned")))
    expanded = tmp_path / "evil.expanded.deb"
    with open(expanded, "wb") as out, open(deb, "rb") as packed:
        expand.expand(packed, out, "evil")
    proc = spawn.spawn([sys.executable, "-c", CHECKS_BROKEN, str(expanded), str(tmp_path / "root"), str(home)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert out == b"pwned\n"
    assert list(home.iterdir()) == []
