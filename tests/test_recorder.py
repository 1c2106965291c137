"""ocistrap.recorder: what a call asks for, the records, the seccomp filter, and (e2e) the
supervisor answering real chown/mknod/stat calls in a single-uid user namespace."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ocistrap.errors import BuildError
from ocistrap.rootfs import idmaps, recorder, spawn
from ocistrap.rootfs.recorder import (
    AT_EMPTY_PATH,
    AT_REMOVEDIR,
    AT_SYMLINK_NOFOLLOW,
    AUDIT_ARCH_AARCH64,
    AUDIT_ARCH_I386,
    AUDIT_ARCH_X86_64,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_USER_NOTIF,
    SYSCALLS,
    Chown,
    Mknod,
    Recorded,
    Records,
    Remove,
    Rename,
    Stat,
    Where,
)

ARCHES = (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, AUDIT_ARCH_AARCH64)
PATH, DEST, BUF, FD, FD2 = 0x1000, 0x2000, 0x3000, 5, 6
CHR_NULL = stat.S_IFCHR | 0o666
DEV_1_3 = os.makedev(1, 3)


def _as_u64(value: int) -> int:
    """VALUE as a register holds it (negative numbers sign-extended)."""
    return value & 0xFFFFFFFFFFFFFFFF


# ---- decode ----

def _expected(name: str, arch: int) -> tuple[tuple[int, ...], recorder.Call]:
    """Arguments for syscall NAME and the call decode must make of them."""
    base = name.removesuffix("16")
    at_fdcwd = _as_u64(recorder.AT_FDCWD)
    table: dict[str, tuple[tuple[int, ...], recorder.Call]] = {
        "chown": ((PATH, 42, 43), Chown(Where(None, PATH), 42, 43)),
        "lchown": ((PATH, 42, 43), Chown(Where(None, PATH, follow=False), 42, 43)),
        "fchown": ((FD, 42, 43), Chown(Where(FD, None), 42, 43)),
        "fchownat": ((FD, PATH, 42, 43, 0), Chown(Where(FD, PATH), 42, 43)),
        "mknod": ((PATH, CHR_NULL, DEV_1_3), Mknod(Where(None, PATH, follow=False), CHR_NULL, DEV_1_3)),
        "mknodat": ((at_fdcwd, PATH, CHR_NULL, DEV_1_3),
                    Mknod(Where(None, PATH, follow=False), CHR_NULL, DEV_1_3)),
        "unlink": ((PATH,), Remove(Where(None, PATH, follow=False), directory=False)),
        "rmdir": ((PATH,), Remove(Where(None, PATH, follow=False), directory=True)),
        "unlinkat": ((FD, PATH, 0), Remove(Where(FD, PATH, follow=False), directory=False)),
        "rename": ((PATH, DEST), Rename(Where(None, PATH, follow=False), Where(None, DEST, follow=False), 0)),
        "renameat": ((FD, PATH, FD2, DEST),
                     Rename(Where(FD, PATH, follow=False), Where(FD2, DEST, follow=False), 0)),
        "renameat2": ((FD, PATH, at_fdcwd, DEST, RENAME_NOREPLACE),
                      Rename(Where(FD, PATH, follow=False), Where(None, DEST, follow=False), RENAME_NOREPLACE)),
        "stat": ((PATH, BUF), Stat(Where(None, PATH), BUF, arch)),
        "lstat": ((PATH, BUF), Stat(Where(None, PATH, follow=False), BUF, arch)),
        "fstat": ((FD, BUF), Stat(Where(FD, None), BUF, arch)),
        "newfstatat": ((FD, PATH, BUF, 0), Stat(Where(FD, PATH), BUF, arch)),
        "statx": ((FD, PATH, AT_SYMLINK_NOFOLLOW | 0x2000, 0x7FF, BUF),
                  Stat(Where(FD, PATH, follow=False), BUF, arch, statx=(AT_SYMLINK_NOFOLLOW | 0x2000, 0x7FF))),
    }
    args, call = table[base]
    return args + (0,) * (6 - len(args)), call


ALL_CALLS = [(arch, name, nr) for arch in ARCHES for name, nr in SYSCALLS[arch].items()]


@pytest.mark.parametrize(("arch", "name", "nr"), ALL_CALLS,
                         ids=[f"{hex(a)}-{n}" for a, n, _ in ALL_CALLS])
def test_decode_each_syscall_of_each_arch(arch: int, name: str, nr: int) -> None:
    args, call = _expected(name, arch)
    assert recorder.decode(arch, nr, args) == call


def test_the_tables_hold_what_each_arch_has() -> None:
    chowns = {"chown", "fchown", "lchown", "fchownat"}
    assert chowns | {"chown16", "fchown16", "lchown16"} <= set(SYSCALLS[AUDIT_ARCH_I386])
    assert chowns | {"mknod", "unlink", "rmdir", "rename", "stat", "lstat"} <= set(SYSCALLS[AUDIT_ARCH_X86_64])
    assert {"fchown", "fchownat", "mknodat", "unlinkat", "renameat", "renameat2", "newfstatat", "fstat",
            "statx"} == set(SYSCALLS[AUDIT_ARCH_AARCH64])


@pytest.mark.parametrize("arch", ARCHES)
def test_decode_unknown_syscall_and_arch_is_none(arch: int) -> None:
    unknown = next(nr for nr in range(1000) if nr not in SYSCALLS[arch].values())
    assert recorder.decode(arch, unknown, (0,) * 6) is None
    assert recorder.decode(0x12345678, SYSCALLS[arch]["fchown"], (FD, 1, 1, 0, 0, 0)) is None


@pytest.mark.parametrize(("name", "uid", "gid", "want"), [
    ("chown16", 0xFFFF, 7, (None, 7)),
    ("chown16", 7, 0xFFFFFFFF, (7, None)),              # a 16-bit -1 sign-extended to 32 bits
    ("chown16", 0x1FFFE, 0xFFFE, (0xFFFE, 0xFFFE)),     # only the low 16 bits count
    ("lchown16", 0xFFFF, 0xFFFF, (None, None)),
    ("fchown16", 3, 0xFFFF, (3, None)),
    ("chown", 0xFFFF, 0xFFFFFFFF, (0xFFFF, None)),      # the 32-bit calls: 65535 is an id
    ("lchown", 0xFFFFFFFF, 100000, (None, 100000)),
])
def test_decode_i386_ids(name: str, uid: int, gid: int, want: tuple[int | None, int | None]) -> None:
    nr = SYSCALLS[AUDIT_ARCH_I386][name]
    first = FD if name.startswith("f") else PATH
    call = recorder.decode(AUDIT_ARCH_I386, nr, (first, uid, gid, 0, 0, 0))
    assert isinstance(call, Chown)
    assert (call.uid, call.gid) == want


@pytest.mark.parametrize("minus_one", [0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF])
def test_decode_64bit_minus_one_is_unchanged(minus_one: int) -> None:
    for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64):
        call = recorder.decode(arch, SYSCALLS[arch]["fchownat"], (FD, PATH, minus_one, 5, 0, 0))
        assert call == Chown(Where(FD, PATH), None, 5)


@pytest.mark.parametrize("arch", [AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64, AUDIT_ARCH_I386])
def test_decode_at_flags_and_fdcwd(arch: int) -> None:
    nr = SYSCALLS[arch]["fchownat"]
    for fdcwd in (0xFFFFFF9C, 0xFFFFFFFFFFFFFF9C):
        assert recorder.decode(arch, nr, (fdcwd, PATH, 1, 2, 0, 0)).target == Where(None, PATH)
    assert recorder.decode(arch, nr, (FD, PATH, 1, 2, AT_SYMLINK_NOFOLLOW, 0)).target == \
        Where(FD, PATH, follow=False)
    assert recorder.decode(arch, nr, (FD, PATH, 1, 2, AT_EMPTY_PATH, 0)).target == \
        Where(FD, PATH, empty_path=True)
    assert recorder.decode(arch, nr, (FD, PATH, 1, 2, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, 0)).target == \
        Where(FD, PATH, follow=False, empty_path=True)
    unlinkat = SYSCALLS[arch]["unlinkat"]
    assert recorder.decode(arch, unlinkat, (FD, PATH, AT_REMOVEDIR, 0, 0, 0)) == \
        Remove(Where(FD, PATH, follow=False), directory=True)
    assert recorder.decode(arch, unlinkat, (0xFFFFFF9C, PATH, 0, 0, 0, 0)) == \
        Remove(Where(None, PATH, follow=False), directory=False)
    mknodat = SYSCALLS[arch]["mknodat"]
    high = (1 << 32) | CHR_NULL
    assert recorder.decode(arch, mknodat, (FD, PATH, high, DEV_1_3, 0, 0)) == \
        Mknod(Where(FD, PATH, follow=False), CHR_NULL, DEV_1_3)


def test_decode_stat_flags() -> None:
    for arch in (AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64):
        at = SYSCALLS[arch]["newfstatat"]
        assert recorder.decode(arch, at, (FD, PATH, BUF, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, 0, 0)) == \
            Stat(Where(FD, PATH, follow=False, empty_path=True), BUF, arch)
        statx = SYSCALLS[arch]["statx"]
        assert recorder.decode(arch, statx, (0xFFFFFF9C, PATH, AT_EMPTY_PATH, 0xFFF, BUF, 0)) == \
            Stat(Where(None, PATH, empty_path=True), BUF, arch, statx=(AT_EMPTY_PATH, 0xFFF))


# ---- Records ----

def _st(ino: int = 1, *, mode: int = stat.S_IFREG | 0o644, dev: int = 7, nlink: int = 1, uid: int = 0,
        gid: int = 0, size: int = 5, rdev: int = 0) -> os.stat_result:
    """A stat result with distinct values in every field (so a changed one shows)."""
    extra = {"st_atime": 11.5, "st_mtime": 12.5, "st_ctime": 13.5, "st_atime_ns": 11_500_000_000,
             "st_mtime_ns": 12_500_000_000, "st_ctime_ns": 13_500_000_000, "st_blksize": 4096,
             "st_blocks": 8, "st_rdev": rdev}
    return os.stat_result((mode, ino, dev, nlink, uid, gid, size, 11, 12, 13), extra)


def _fields(st: os.stat_result) -> dict[str, Any]:
    return {name: getattr(st, name) for name in dir(st) if name.startswith("st_")}


def test_records_chown_with_none_keeps_the_other_id() -> None:
    records = Records()
    f = _st()
    records.chown(f, 42, None)
    assert records.owner(f) == (42, 0)
    records.chown(f, None, 43)
    assert records.owner(f) == (42, 43)
    records.chown(f, None, None)
    assert records.table == {(7, 1): Recorded(42, 43)}


def test_records_chown_to_root_of_unrecorded_file_keeps_table_empty() -> None:
    records = Records()
    records.chown(_st(), 0, 0)
    records.chown(_st(2), None, None)
    assert records.table == {} and not records
    records.chown(_st(), 5, 5)
    assert records and _st() in records
    records.chown(_st(), 0, 0)
    assert records.table == {}


def test_records_are_by_device_and_inode() -> None:
    records = Records()
    records.chown(_st(1, dev=7), 5, 6)
    assert _st(1, dev=8) not in records and _st(2, dev=7) not in records
    assert records.owner(_st(1, dev=8, uid=3, gid=4)) == (3, 4)


def test_records_know_which_file_systems_they_hold_inodes_of() -> None:
    """What lets removals on a lasting file system go unexamined (Supervisor's LASTING)."""
    records = Records()
    assert not records.outside(None) and not records.outside(7)
    records.chown(_st(1, dev=7), 5, 6)
    records.chown(_st(2, dev=7), 5, 6)
    assert records.outside(None) and records.outside(8) and not records.outside(7)
    records.chown(_st(3, dev=8), 5, 6)
    assert records.outside(7) and records.outside(8)
    records.chown(_st(3, dev=8), 0, 0)
    assert not records.outside(7)
    records.forget(_st(1, dev=7))
    records.forget(_st(1, dev=7))
    assert not records.outside(7) and records.outside(8)
    records.forget(_st(2, dev=7))
    assert not records.outside(8) and records.devices == {}
    assert Records.loads(Records({(9, 1): Recorded(1, 1)}).dumps()).outside(7)


def test_lasting_device_is_a_tmpfs_s_own() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or _fs_type(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    assert recorder.lasting_device(shm) == os.stat(shm).st_dev
    here = Path(__file__).parent
    if _fs_type(here) != "tmpfs":
        assert recorder.lasting_device(here) is None
    with pytest.raises(FileNotFoundError):
        recorder.lasting_device(shm / "no such directory")


def _fs_type(path: Path) -> str:
    """The file system type coreutils' stat names for PATH."""
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_records_device_and_its_owner() -> None:
    records = Records()
    f = _st()
    records.chown(f, 0, 6)
    records.device(f, stat.S_IFBLK, os.makedev(8, 1))
    assert records.table[(7, 1)] == Recorded(0, 6, stat.S_IFBLK, os.makedev(8, 1))
    records.chown(f, 0, 0)
    assert records.table[(7, 1)] == Recorded(0, 0, stat.S_IFBLK, os.makedev(8, 1))  # still a device
    records.forget(f)
    records.forget(f)
    assert not records


def test_apply_unrecorded_is_unchanged() -> None:
    records = Records({(7, 2): Recorded(1, 1)})
    f = _st()
    assert records.apply(f) is f


def test_apply_owner_changes_only_owner() -> None:
    f = _st(mode=stat.S_IFREG | 0o4755)
    shown = Records({(7, 1): Recorded(42, 43)}).apply(f)
    assert _fields(shown) == {**_fields(f), "st_uid": 42, "st_gid": 43}
    assert tuple(shown) == (f[0], f[1], f[2], f[3], 42, 43, *f[6:])


def test_apply_device_shows_type_rdev_and_size_zero() -> None:
    f = _st(mode=stat.S_IFREG | 0o640, size=99)
    shown = Records({(7, 1): Recorded(0, 6, stat.S_IFCHR, DEV_1_3)}).apply(f)
    assert _fields(shown) == {**_fields(f), "st_gid": 6, "st_mode": stat.S_IFCHR | 0o640,
                              "st_size": 0, "st_rdev": DEV_1_3}
    assert stat.S_ISCHR(shown.st_mode)


def test_records_dumps_loads_round_trip() -> None:
    table = {(7, 1): Recorded(42, 43), (7, 2): Recorded(0, 6, stat.S_IFBLK, os.makedev(259, 70000)),
             (2**63, 2**64 - 1): Recorded(2**32 - 2, 65534)}
    again = Records.loads(Records(table).dumps())
    assert again.table == table
    assert all(isinstance(v, Recorded) for v in again.table.values())
    assert Records.loads(Records().dumps()).table == {}


# ---- what a removal or rename frees ----

def _never() -> bool:
    raise AssertionError("a removal the kernel refuses must not look at the directory")


@pytest.mark.parametrize(("st", "directory", "empty", "freed"), [
    (_st(nlink=1), False, _never, True),
    (_st(nlink=2), False, _never, False),                       # another hard link keeps it
    (_st(mode=stat.S_IFLNK | 0o777), False, _never, True),
    (_st(), True, _never, False),                               # rmdir on a file: ENOTDIR
    (_st(mode=stat.S_IFDIR | 0o755, nlink=2), False, _never, False),  # unlink on a dir: EISDIR
    (_st(mode=stat.S_IFDIR | 0o755, nlink=2), True, lambda: True, True),
    (_st(mode=stat.S_IFDIR | 0o755, nlink=2), True, lambda: False, False),  # ENOTEMPTY
])
def test_freed_by_removal(st: os.stat_result, directory: bool, empty: Any, freed: bool) -> None:
    assert recorder.freed_by_removal(st, directory=directory, directory_empty=empty) is freed


DIR = stat.S_IFDIR | 0o755


@pytest.mark.parametrize(("source", "dest", "flags", "freed"), [
    (_st(1), _st(2), 0, True),
    (_st(1, mode=DIR), _st(2, mode=DIR), 0, True),
    (_st(1), None, 0, False),
    (None, _st(2), 0, False),                      # ENOENT
    (_st(1), _st(2), RENAME_EXCHANGE, False),
    (_st(1), _st(2), RENAME_NOREPLACE, False),
    (_st(1), _st(1), 0, False),                    # hard links of one inode: nothing happens
    (_st(1, dev=8), _st(2, dev=7), 0, False),      # EXDEV
    (_st(1), _st(2, mode=DIR), 0, False),          # EISDIR
    (_st(1, mode=DIR), _st(2), 0, False),          # ENOTDIR
])
def test_rename_frees_dest(source: os.stat_result | None, dest: os.stat_result | None, flags: int,
                           freed: bool) -> None:
    assert recorder.rename_frees_dest(source, dest, flags) is freed


# ---- chown_mode ----

@pytest.mark.parametrize(("mode", "after"), [
    (stat.S_IFREG | 0o4755, 0o755),
    (stat.S_IFREG | 0o6755, 0o755),
    (stat.S_IFREG | 0o2755, 0o755),
    (stat.S_IFREG | 0o2745, 0o2745),       # set-group-ID without group execute: mandatory locking mark
    (stat.S_IFREG | 0o6745, 0o2745),
    (stat.S_IFREG | 0o1755, 0o1755),
    (stat.S_IFREG | 0o644, 0o644),
    (stat.S_IFDIR | 0o6755, 0o6755),
    (stat.S_IFDIR | 0o3775, 0o3775),
    (stat.S_IFLNK | 0o777, 0o777),
    (stat.S_IFCHR | 0o4666, 0o666),
])
def test_chown_mode(mode: int, after: int) -> None:
    assert recorder.chown_mode(mode) == after


# ---- patch_stat / patch_statx on what the kernel writes ----

X86_STAT_FIELDS = {"mode": (24, "=I"), "uid": (28, "=I"), "gid": (32, "=I"), "rdev": (40, "=Q"),
                   "size": (48, "=q")}


def _host_layout() -> recorder.StatLayout:
    arch = recorder.host_arches()[0]
    if arch not in recorder.STAT_LAYOUTS:
        pytest.skip("no struct stat layout for this host")
    return recorder.STAT_LAYOUTS[arch]


def _changed(a: bytes, b: bytes) -> set[int]:
    return {i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y}


def _span(*fields: tuple[int, int]) -> set[int]:
    return {i for offset, size in fields for i in range(offset, offset + size)}


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    f = tmp_path / "f"
    f.write_bytes(b"hello world")
    os.chmod(f, 0o4750)
    return f


def test_raw_stat_layout_matches_os_stat(sample: Path) -> None:
    layout = _host_layout()
    raw = recorder._raw_stat(str(sample), None, True, None)[:layout.length]
    st = os.stat(sample)
    assert struct.unpack_from("=I", raw, layout.mode)[0] == st.st_mode
    assert struct.unpack_from("=II", raw, layout.uid) == (st.st_uid, st.st_gid)
    assert struct.unpack_from("=q", raw, layout.size)[0] == st.st_size == 11
    assert struct.unpack_from("=QQ", raw, 0) == (st.st_dev, st.st_ino)


def test_patch_stat_owner(sample: Path) -> None:
    layout = _host_layout()
    raw = recorder._raw_stat(str(sample), None, True, None)[:layout.length]
    out = recorder.patch_stat(raw, layout, Recorded(42, 43))
    assert len(out) == len(raw)
    assert struct.unpack_from("=II", out, layout.uid) == (42, 43)
    assert _changed(raw, out) <= _span((layout.uid, 4), (layout.gid, 4))


def test_patch_stat_device(sample: Path) -> None:
    layout = _host_layout()
    raw = recorder._raw_stat(str(sample), None, True, None)[:layout.length]
    dev = os.makedev(259, 70000)
    out = recorder.patch_stat(raw, layout, Recorded(0, 6, stat.S_IFBLK, dev))
    assert struct.unpack_from("=I", out, layout.mode)[0] == stat.S_IFBLK | 0o4750
    assert struct.unpack_from("=II", out, layout.uid) == (0, 6)
    assert struct.unpack_from("=Q", out, layout.rdev)[0] == dev
    assert struct.unpack_from("=q", out, layout.size)[0] == 0
    assert _changed(raw, out) <= _span((layout.mode, 4), (layout.uid, 4), (layout.gid, 4),
                                       (layout.rdev, 8), (layout.size, 8))


def test_patch_stat_aarch64_layout() -> None:
    """The asm-generic struct stat: dev, ino (8 each), mode, nlink, uid, gid (4 each), rdev (8)."""
    layout = recorder.STAT_LAYOUTS[AUDIT_ARCH_AARCH64]
    raw = struct.pack("=QQIIIIQQqiiq", 1, 2, stat.S_IFREG | 0o644, 3, 0, 0, 0, 0, 77, 4096, 0, 8)
    raw += bytes(range(256))[:layout.length - len(raw)]
    assert len(raw) == layout.length == 128
    out = recorder.patch_stat(raw, layout, Recorded(5, 6, stat.S_IFCHR, DEV_1_3))
    assert struct.unpack_from("=QQIIIIQQq", out) == (1, 2, stat.S_IFCHR | 0o644, 3, 5, 6, DEV_1_3, 0, 0)
    assert out[56:] == raw[56:]


def test_x86_64_layout_is_the_documented_one() -> None:
    layout = recorder.STAT_LAYOUTS[AUDIT_ARCH_X86_64]
    assert (layout.mode, layout.uid, layout.gid, layout.rdev, layout.size, layout.length) == \
        (24, 28, 32, 40, 48, 144)


STATX_ALL = 0x7FF


def test_raw_statx_layout_matches_os_stat(sample: Path) -> None:
    raw = recorder._raw_stat(str(sample), None, True, (0, STATX_ALL))
    st = os.stat(sample)
    assert len(raw) == recorder.STATX_LENGTH
    assert struct.unpack_from("=II", raw, recorder.STATX_UID) == (st.st_uid, st.st_gid)
    assert struct.unpack_from("=H", raw, recorder.STATX_MODE)[0] == st.st_mode
    assert struct.unpack_from("=Q", raw, 32)[0] == st.st_ino
    assert struct.unpack_from("=Q", raw, recorder.STATX_SIZE)[0] == 11


def test_patch_statx_owner(sample: Path) -> None:
    raw = recorder._raw_stat(str(sample), None, True, (0, STATX_ALL))
    out = recorder.patch_statx(raw, Recorded(42, 43))
    assert len(out) == len(raw)
    assert struct.unpack_from("=II", out, recorder.STATX_UID) == (42, 43)
    assert _changed(raw, out) <= _span((recorder.STATX_UID, 8))


def test_patch_statx_device(sample: Path) -> None:
    raw = recorder._raw_stat(str(sample), None, True, (0, STATX_ALL))
    out = recorder.patch_statx(raw, Recorded(0, 6, stat.S_IFCHR, os.makedev(4095, 1048575)))
    assert struct.unpack_from("=II", out, recorder.STATX_UID) == (0, 6)
    assert struct.unpack_from("=H", out, recorder.STATX_MODE)[0] == stat.S_IFCHR | 0o4750
    assert struct.unpack_from("=Q", out, recorder.STATX_SIZE)[0] == 0
    assert struct.unpack_from("=II", out, recorder.STATX_RDEV_MAJOR) == (4095, 1048575)
    assert _changed(raw, out) <= _span((recorder.STATX_UID, 8), (recorder.STATX_MODE, 2),
                                       (recorder.STATX_SIZE, 8), (recorder.STATX_RDEV_MAJOR, 8))


def test_raw_stat_nofollow_and_dir_fd(tmp_path: Path, sample: Path) -> None:
    (tmp_path / "link").symlink_to("f")
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        raw = recorder._raw_stat("link", dir_fd, False, (0, STATX_ALL))
        assert stat.S_ISLNK(struct.unpack_from("=H", raw, recorder.STATX_MODE)[0])
        raw = recorder._raw_stat("link", dir_fd, True, (0, STATX_ALL))
        assert struct.unpack_from("=H", raw, recorder.STATX_MODE)[0] == stat.S_IFREG | 0o4750
    finally:
        os.close(dir_fd)
    with pytest.raises(FileNotFoundError):
        recorder._raw_stat(str(tmp_path / "missing"), None, True, None)


# ---- the seccomp filter ----

def _run_bpf(program: bytes, arch: int, nr: int) -> int:
    """Classic BPF as the kernel runs it on struct seccomp_data (only the opcodes used here)."""
    data = struct.pack("=IIQ6Q", nr, arch, 0x400000, *range(6))
    insns = [struct.unpack_from("=HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    for _ in range(len(insns)):
        code, jt, jf, k = insns[pc]
        if code == recorder.BPF_LD_W_ABS:
            acc, pc = struct.unpack_from("=I", data, k)[0], pc + 1
        elif code == recorder.BPF_JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == recorder.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")
    raise AssertionError("the program ran off its end")


@pytest.mark.parametrize("arches", [(AUDIT_ARCH_X86_64, AUDIT_ARCH_I386), (AUDIT_ARCH_AARCH64,),
                                    (AUDIT_ARCH_I386,)])
def test_filter_program_notifies_exactly_the_listed_calls(arches: tuple[int, ...]) -> None:
    program = recorder.filter_program(arches)
    assert len(program) % 8 == 0 and len(program) // 8 < 4096
    for arch in ARCHES:
        listed = set(SYSCALLS[arch].values()) if arch in arches else set()
        for nr in [*range(500), 0x40000000 | 92, 0xFFFFFFFF]:
            want = SECCOMP_RET_USER_NOTIF if nr in listed else SECCOMP_RET_ALLOW
            assert _run_bpf(program, arch, nr) == want, (hex(arch), nr)
    assert _run_bpf(program, 0x12345678, 92) == SECCOMP_RET_ALLOW


def test_host_arches() -> None:
    assert recorder.host_arches("x86_64") == (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386)
    assert recorder.host_arches("aarch64") == (AUDIT_ARCH_AARCH64,)
    with pytest.raises(BuildError, match="riscv64"):
        recorder.host_arches("riscv64")


HEADERS = {AUDIT_ARCH_X86_64: "/usr/include/x86_64-linux-gnu/asm/unistd_64.h",
           AUDIT_ARCH_I386: "/usr/include/x86_64-linux-gnu/asm/unistd_32.h",
           AUDIT_ARCH_AARCH64: "/usr/include/asm-generic/unistd.h"}
HEADER_NAMES = {AUDIT_ARCH_I386: {"chown16": "chown", "fchown16": "fchown", "lchown16": "lchown",
                                  "chown": "chown32", "fchown": "fchown32", "lchown": "lchown32"},
                AUDIT_ARCH_AARCH64: {"newfstatat": "3264_fstatat", "fstat": "3264_fstat"}}
CHANGING = ("chown", "fchown", "lchown", "fchownat", "mknod", "mknodat", "unlink", "unlinkat", "rmdir",
            "rename", "renameat", "renameat2")


@pytest.mark.parametrize("arch", ARCHES)
def test_syscall_numbers_match_the_kernel_headers(arch: int) -> None:
    header = Path(HEADERS[arch])
    if not header.exists():
        pytest.skip(f"{header} is not installed")
    numbers = {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_?(\w+)\s+(\d+)\b", header.read_text())}
    rename = HEADER_NAMES.get(arch, {})
    assert {name: numbers[rename.get(name, name)] for name in SYSCALLS[arch]} == SYSCALLS[arch]
    missing = [name for name in CHANGING if name in numbers and rename.get(name, name) == name
               and name not in SYSCALLS[arch] and f"{name}16" not in SYSCALLS[arch]]
    assert missing == [], "calls that change owners or free inodes must all be filtered"


# ---- end to end: the supervisor in a single-uid namespace ----

LIVE = r'''
import json, os, stat, subprocess, sys
from pathlib import Path
from ocistrap.rootfs import mounting, recorder

base = Path(sys.argv[1])
proc, t = base / "proc", base / "t"
proc.mkdir(); t.mkdir()
mounting.mount_proc(proc)
os.chdir(t)
out = {"children": {}}

def run(name, argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    out["children"][name] = [r.returncode, r.stdout.strip(), r.stderr.strip()]

def sh(name, cmd):
    run(name, ["sh", "-c", cmd])

def py(name, code):
    run(name, [sys.executable, "-c", code])

def recorded(st):
    return st in rec.records()

Path("f").write_text("data")
try:
    os.chown("f", 42, 43)
    out["without"] = 0
except OSError as e:
    out["without"] = e.errno
sh("without", "chown 42:43 f")

rec = recorder.start(str(proc))
sh("chown", "chown 42:43 f && stat -c %u:%g f && ls -ln f")
sh("plain", "touch plain && stat -c %u:%g plain")
sh("link", "ln -s f link && chown -h 5:5 link && stat -c %u:%g f && stat -c %u:%g link")
sh("partial", "touch f2 && chown 6 f2 && chgrp 9 f2 && stat -c %u:%g f2")
sh("missing", "chown 1:1 missing")
sh("mknod", "mknod dev c 1 3 && mknod blk b 8 1 && chown 0:6 blk && mknod fifo p"
            " && stat -c %F:%t:%T:%s dev && ls -ln dev")
sh("cp", "cp -p f copy && cp -a dev devcopy && stat -c %u:%g copy")
py("pystat", "import os; s = os.stat(\"f\"); l = os.lstat(\"f\"); d = os.stat(\"dev\");"
             "fs = os.fstat(os.open(\"f\", os.O_RDONLY));"
             "print(s.st_uid, s.st_gid, l.st_uid, fs.st_uid, fs.st_gid, d.st_rdev == os.makedev(1, 3))")
out["parent_sees"] = [os.lstat("f").st_uid, stat.S_ISREG(os.lstat("dev").st_mode)]

os.mkdir("sub")
for name in ("g", "h", "e"):
    Path("sub", name).write_text(name)
os.symlink("g", "sub/l")
py("dirfd", "import os, ctypes;"
            "d = os.open(\"sub\", os.O_RDONLY | os.O_DIRECTORY);"
            "os.chown(\"g\", 7, 8, dir_fd=d);"
            "os.chown(os.open(\"sub/h\", os.O_RDONLY), 9, 10);"
            "p = os.open(\"sub/e\", os.O_PATH);"
            "libc = ctypes.CDLL(None, use_errno=True);"
            "assert libc.fchownat(p, b\"\", 11, 12, 0x1000) == 0, ctypes.get_errno();"
            "os.chown(\"l\", 13, 14, dir_fd=d, follow_symlinks=False)")

sh("setid", "touch s s2 g2 && mkdir sd && chmod 4755 s && chmod 6755 s2 && chmod 2745 g2 && chmod 2755 sd"
            " && chown 1:1 s s2 g2 sd")
out["modes"] = {n: stat.S_IMODE(os.lstat(n).st_mode) for n in ("s", "s2", "g2", "sd")}

sh("gone1", "touch gone && chown 3:3 gone")
old = os.lstat("gone")
out["gone_forgotten"] = [not recorded(old)]
sh("gone2", "rm gone")
out["gone_forgotten"].append(not recorded(old))
sh("gone3", "touch gone")
out["gone_same_inode"] = os.lstat("gone").st_ino == old.st_ino
sh("hardlink", "touch hl && chown 30:30 hl && ln hl hl2 && rm hl")
sh("dirs", "mkdir rd rd2 && chown 20:20 rd rd2 f2")
rd = os.lstat("rd")
py("refused", "import os\nfor f, n in ((os.unlink, \"rd2\"), (os.rmdir, \"f2\")):\n"
              "  try: f(n)\n  except OSError as e: print(e.errno)")
sh("rmdir", "rmdir rd")
out["rd_forgotten"] = not recorded(rd)

sh("rename1", "touch dst && chown 4:4 dst")
dst = os.lstat("dst")
sh("rename2", "touch src && mv src dst")
out["dst_forgotten"] = not recorded(dst)
sh("rename3", "touch src2 && chown 6:7 src2 && mv src2 dst2")
sh("exchange", "touch xa xb && chown 50:50 xa && chown 51:51 xb")
py("exchange2", "import ctypes; libc = ctypes.CDLL(None, use_errno=True);"
                "assert libc.renameat2(-100, b\"xa\", -100, b\"xb\", 2) == 0, ctypes.get_errno()")

os.mkdir("jail"); os.mkdir("jail/w")
Path("jail/a").write_text("a"); Path("jail/w/b").write_text("b")
py("chroot", "import os, stat;"
             "os.chroot(\"jail\"); os.chdir(\"/w\");"
             "os.chown(\"/a\", 12, 13); os.chown(\"b\", 14, 15);"
             "os.mknod(\"/n\", stat.S_IFCHR | 0o600, os.makedev(5, 1));"
             "print(os.stat(\"/a\").st_uid, os.stat(\"b\").st_gid, stat.S_ISCHR(os.stat(\"/n\").st_mode))")

os.mkdir("bugs")
probes = {
    "fchown_closed_fd": "import os\ntry: os.fchown(999, 1, 1); print(0)\nexcept OSError as e: print(e.errno)",
    "fstat_closed_fd": "import os\ntry: os.fstat(999); print(0)\nexcept OSError as e: print(e.errno)",
    "fchown_at_fdcwd": "import os\ntry: os.fchown(-100, 1, 1); print(0)\nexcept OSError as e: print(e.errno)",
}
running = {n: subprocess.Popen([sys.executable, "-c", c], cwd="bugs", stdout=subprocess.PIPE, text=True)
           for n, c in probes.items()}
out["bugs"] = {}
for n, p in running.items():
    try:
        out["bugs"][n] = int(p.communicate(timeout=3)[0])
    except subprocess.TimeoutExpired:
        p.kill(); p.wait()
        out["bugs"][n] = "hang"

records = rec.records()
out["bugs_dir_recorded"] = os.lstat("bugs") in records
out["shown"] = {}
for top, dirs, files in os.walk("."):
    for name in dirs + files:
        path = os.path.normpath(os.path.join(top, name))
        st = records.apply(os.lstat(path))
        out["shown"][path] = [st.st_uid, st.st_gid, stat.filemode(st.st_mode), os.major(st.st_rdev),
                              os.minor(st.st_rdev), st.st_size]
rec.close()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run LIVE once as root of a single-uid sandbox and return its summary."""
    base = tmp_path_factory.mktemp("recorder")
    proc = spawn.spawn([sys.executable, "-c", LIVE, str(base)],
                         maps=idmaps.IdMaps.single(os.getuid(), os.getgid()),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def _child(live: dict[str, Any], name: str) -> list[Any]:
    rc, out, err = live["children"][name]
    assert rc == 0, f"{name}: {err}"
    return out.splitlines()


@pytest.mark.userns
def test_live_without_the_recorder_chown_fails_with_einval(live: dict[str, Any]) -> None:
    assert live["without"] == errno.EINVAL
    rc, _, err = live["children"]["without"]
    assert rc != 0 and "Invalid argument" in err


@pytest.mark.userns
def test_live_chown_is_recorded_and_shown_to_children(live: dict[str, Any]) -> None:
    stat_out, ls_out = _child(live, "chown")
    assert stat_out == "42:43"
    assert ls_out.split()[2:4] == ["42", "43"]
    assert live["shown"]["f"][:3] == [42, 43, "-rw-r--r--"]
    assert _child(live, "plain") == ["0:0"]
    assert live["shown"]["plain"][:2] == [0, 0]
    assert live["parent_sees"] == [0, True], "the bootstrap itself must see the staging tree as it is"


@pytest.mark.userns
def test_live_python_stat_calls_are_faked(live: dict[str, Any]) -> None:
    assert _child(live, "pystat") == ["42 43 42 42 43 True"]


@pytest.mark.userns
def test_live_symlink_and_partial_chown(live: dict[str, Any]) -> None:
    assert _child(live, "link") == ["42:43", "5:5"]
    assert live["shown"]["link"][:3] == [5, 5, "lrwxrwxrwx"]
    assert _child(live, "partial") == ["6:9"]


@pytest.mark.userns
def test_live_chown_of_missing_file_fails(live: dict[str, Any]) -> None:
    rc, _, err = live["children"]["missing"]
    assert rc != 0 and "No such file" in err


@pytest.mark.userns
def test_live_mknod_records_devices(live: dict[str, Any]) -> None:
    stat_out, ls_out = _child(live, "mknod")
    assert stat_out == "character special file:1:3:0"
    assert ls_out.startswith("crw-r--r--") and "1, 3" in ls_out
    assert live["shown"]["dev"] == [0, 0, "crw-r--r--", 1, 3, 0]
    assert live["shown"]["blk"] == [0, 6, "brw-r--r--", 8, 1, 0]
    assert live["shown"]["fifo"][2] == "prw-r--r--"


@pytest.mark.userns
def test_live_copies_carry_recorded_owner_and_type(live: dict[str, Any]) -> None:
    assert _child(live, "cp") == ["42:43"]
    assert live["shown"]["copy"][:2] == [42, 43]
    assert live["shown"]["devcopy"] == [0, 0, "crw-r--r--", 1, 3, 0]


@pytest.mark.userns
def test_live_dir_fd_fd_and_empty_path(live: dict[str, Any]) -> None:
    _child(live, "dirfd")
    shown = live["shown"]
    assert [shown[p][:2] for p in ("sub/g", "sub/h", "sub/e", "sub/l")] == [[7, 8], [9, 10], [11, 12], [13, 14]]


@pytest.mark.userns
def test_live_chown_clears_set_id_bits(live: dict[str, Any]) -> None:
    _child(live, "setid")
    assert live["modes"] == {"s": 0o755, "s2": 0o755, "g2": 0o2745, "sd": 0o2755}
    assert [live["shown"][n][:2] for n in ("s", "s2", "g2", "sd")] == [[1, 1]] * 4


@pytest.mark.userns
def test_live_removed_file_loses_its_record(live: dict[str, Any]) -> None:
    _child(live, "gone1")
    _child(live, "gone2")
    _child(live, "gone3")
    assert live["gone_forgotten"] == [False, True]
    assert live["shown"]["gone"][:2] == [0, 0], f"same inode number again: {live['gone_same_inode']}"
    _child(live, "hardlink")
    assert live["shown"]["hl2"][:2] == [30, 30]


@pytest.mark.userns
def test_live_refused_removals_keep_records(live: dict[str, Any]) -> None:
    _child(live, "dirs")
    assert _child(live, "refused") == [str(errno.EISDIR), str(errno.ENOTDIR)]
    assert live["shown"]["rd2"][:2] == [20, 20] and live["shown"]["f2"][:2] == [20, 20]
    _child(live, "rmdir")
    assert live["rd_forgotten"]


@pytest.mark.userns
def test_live_rename(live: dict[str, Any]) -> None:
    _child(live, "rename1")
    _child(live, "rename2")
    _child(live, "rename3")
    assert live["shown"]["dst"][:2] == [0, 0]
    assert live["dst_forgotten"]
    assert live["shown"]["dst2"][:2] == [6, 7]
    _child(live, "exchange")
    _child(live, "exchange2")
    assert live["shown"]["xa"][:2] == [51, 51] and live["shown"]["xb"][:2] == [50, 50]


@pytest.mark.userns
def test_live_chrooted_child(live: dict[str, Any]) -> None:
    assert _child(live, "chroot") == ["12 15 True"]
    shown = live["shown"]
    assert shown["jail/a"][:2] == [12, 13] and shown["jail/w/b"][:2] == [14, 15]
    assert shown["jail/n"][2:5] == ["crw-------", 5, 1]


@pytest.mark.userns
def test_live_fchown_of_a_closed_fd_fails_with_ebadf(live: dict[str, Any]) -> None:
    assert live["bugs"]["fchown_closed_fd"] == errno.EBADF


@pytest.mark.userns
def test_live_fstat_of_closed_fd_fails_with_ebadf(live: dict[str, Any]) -> None:
    assert live["bugs"]["fstat_closed_fd"] == errno.EBADF


@pytest.mark.userns
def test_live_fchown_of_at_fdcwd_fails_with_ebadf(live: dict[str, Any]) -> None:
    assert live["bugs"]["fchown_at_fdcwd"] == errno.EBADF
    assert live["bugs_dir_recorded"] is False


# ---- end to end: no namespace at all (chrootless mode), the supervisor the bootstrap's ancestor ----

LIVE_HOST = r'''
import json, os, stat, subprocess, sys
from ocistrap.rootfs import recorder

os.chdir(sys.argv[1])
me = (os.getuid(), os.getgid())
rec = recorder.start_above("/proc", me)
out = {"supervisor_is_parent": os.getppid() != 1}

def sh(name, cmd):
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=10)
    out[name] = [r.returncode, r.stdout.strip(), r.stderr.strip()]

sh("chown", "touch f && chown 42:43 f && stat -c %u:%g f")
sh("plain", "touch plain && stat -c %u:%g plain && cp -p plain copy && stat -c %u:%g copy")
sh("mknod", "mknod dev c 1 3 && chown 0:6 dev && stat -c %F:%t:%T:%u:%g dev")
sh("setid", "touch s && chown 0:42 s && chmod 2755 s && stat -c %a:%u:%g s")
sh("mode0", "touch z && chmod 0 z && chown 0:5 z && stat -c %a:%g z")
sh("daemon", "(setsid sh -c 'sleep 0.2; chown 7:7 plain' &) ; sleep 0.5; stat -c %u:%g plain")
sh("lingering", "setsid sleep 300 >/dev/null 2>&1 & echo $!")
records = rec.records()
out["shown"] = {n: [records.apply(os.lstat(n)).st_uid, records.apply(os.lstat(n)).st_gid,
                    stat.filemode(records.apply(os.lstat(n)).st_mode)] for n in sorted(os.listdir("."))}
out["really"] = {n: [os.lstat(n).st_uid, os.lstat(n).st_gid] for n in ("f", "dev")}
out["me"] = me
rec.close()
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def live_host(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run LIVE_HOST once where no user namespace can be made (tests/docker_seccomp.py), as the caller."""
    where = tmp_path_factory.mktemp("recorder-host")
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "docker_seccomp.py"), sys.executable, "-c",
                           LIVE_HOST, str(where)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _host_child(live: dict[str, Any], name: str) -> list[str]:
    rc, out, err = live[name]
    assert rc == 0, f"{name}: {err}"
    return out.splitlines()


@pytest.mark.skipif(os.getuid() == 0, reason="outside a namespace the caller must not be root")
def test_live_host_chown_and_mknod_succeed_and_are_recorded(live_host: dict[str, Any]) -> None:
    assert live_host["supervisor_is_parent"]
    assert _host_child(live_host, "chown") == ["42:43"]
    assert _host_child(live_host, "mknod") == ["character special file:1:3:0:6"]
    assert live_host["shown"]["f"] == [42, 43, "-rw-r--r--"]
    assert live_host["shown"]["dev"] == [0, 6, "crw-r--r--"]
    assert live_host["really"] == {"f": live_host["me"], "dev": live_host["me"]}


@pytest.mark.skipif(os.getuid() == 0, reason="outside a namespace the caller must not be root")
def test_live_host_the_callers_own_files_show_as_root(live_host: dict[str, Any]) -> None:
    """What nobody chowned is the caller's on disk and root's in the image and to stat; so a copy
    that keeps owners (cp -p chowns to what stat said) stays root's."""
    assert _host_child(live_host, "plain")[1] == "0:0"
    assert live_host["shown"]["copy"][:2] == [0, 0]


@pytest.mark.skipif(os.getuid() == 0, reason="outside a namespace the caller must not be root")
def test_live_host_set_id_bits_and_unreadable_files(live_host: dict[str, Any]) -> None:
    assert _host_child(live_host, "setid") == ["2755:0:42"]
    assert live_host["shown"]["s"] == [0, 42, "-rwxr-sr-x"]
    assert _host_child(live_host, "mode0") == ["0:5"]


@pytest.mark.skipif(os.getuid() == 0, reason="outside a namespace the caller must not be root")
def test_live_host_a_daemonized_process_is_still_answered(live_host: dict[str, Any]) -> None:
    """A process that left its parent (setsid, double fork) is reparented to the supervisor, a
    child subreaper, so Yama's ptrace_scope 1 still lets the supervisor read its calls."""
    _host_child(live_host, "daemon")
    assert live_host["shown"]["plain"][:2] == [7, 7]


@pytest.mark.skipif(os.getuid() == 0, reason="outside a namespace the caller must not be root")
def test_live_host_nothing_outlives_the_bootstrap(live_host: dict[str, Any]) -> None:
    """No PID namespace ends what a maintainer script left running: the supervisor does."""
    pid = int(_host_child(live_host, "lingering")[0])
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return
    assert state in ("Z", "X"), f"process {pid} still runs"


LASTING = r'''
import json, os, shutil, subprocess, sys, tempfile
from ocistrap.rootfs import recorder

shm, disk = tempfile.mkdtemp(dir="/dev/shm"), sys.argv[1]
os.chdir(shm)
rec = recorder.start_above("/proc", (os.getuid(), os.getgid()), recorder.lasting_device(shm))

def sh(cmd):
    subprocess.run(["sh", "-c", cmd], check=True)

def recorded(ino):
    return (os.stat(shm).st_dev, ino) in rec.records().table

sh("touch a && chown 5:5 a")
a = os.lstat("a").st_ino
sh("rm a && touch b")
out = {"lingers": recorded(a), "reused": os.lstat("b").st_ino == a,
       "b": rec.records().apply(os.lstat("b")).st_uid}
sh(f"touch {disk}/x && chown 6:6 {disk}/x && touch c && chown 7:7 c")
c = os.lstat("c").st_ino
sh("rm c")
out["dropped"] = not recorded(c)
rec.close()
shutil.rmtree(shm)
print(json.dumps(out))
'''


def test_live_removals_on_a_lasting_file_system_go_unexamined(tmp_path: Path) -> None:
    """On a tmpfs, which never hands a freed inode number out again, a removal is let through
    while nothing outside it is recorded (a stale record can then reach no other file); once a
    file elsewhere is, removals are examined again and free their records."""
    if not Path("/dev/shm").is_dir() or _fs_type(Path("/dev/shm")) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    if _fs_type(tmp_path) == "tmpfs":
        pytest.skip("the temporary directory is on a tmpfs too")
    done = subprocess.run([sys.executable, "-c", LASTING, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"lingers": True, "reused": False, "b": 0, "dropped": True}


@pytest.mark.parametrize("statx", [None, (0, 0xFFF)])
def test_raw_identity_is_what_os_stat_says(sample: Path, statx: tuple[int, int] | None) -> None:
    st = os.stat(sample)
    raw = recorder._raw_stat(str(sample), None, True, statx)
    assert recorder.raw_identity(raw, statx=statx is not None) == ((st.st_dev, st.st_ino), st.st_uid, st.st_gid)


def test_records_show_the_trees_own_ids_as_root_and_keep_others() -> None:
    records = Records(base=(1000, 1001))
    mine, other = _st(uid=1000, gid=1001), _st(ino=2, uid=1000, gid=5)
    assert records.shown(mine) == Recorded(0, 0) and records.apply(mine).st_uid == 0
    assert records.shown(other) == Recorded(0, 5)
    records.chown(mine, None, 42)
    assert records.table == {(7, 1): Recorded(0, 42)}
    records.chown(mine, 0, 0)
    assert records.table == {} and records.shifts_owners
    assert Records.loads(records.dumps()).base == (1000, 1001)


def test_the_caller_s_memory_is_reached_where_a_seccomp_filter_refuses_process_vm_calls() -> None:
    """Debian's docker.io 20.10 refuses process_vm_readv/writev in a container (EPERM): the
    supervisor reads the caller's paths and writes its answers through /proc/PID/mem instead."""
    script = """if True:
        import ctypes, errno, os
        from ocistrap.rootfs import recorder
        buf = ctypes.create_string_buffer(b"/etc/passwd", 64)
        libc = ctypes.CDLL(None, use_errno=True)
        refused = libc.process_vm_readv(os.getpid(), None, 0, None, 0, 0) == -1 and ctypes.get_errno() == errno.EPERM
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(r, 1)
            os._exit(0 if buf.value == b"/etc/shadow" else 1)
        mem = f"/proc/{pid}/mem"
        read = recorder._read_memory(pid, ctypes.addressof(buf), 12, mem)
        recorder._write_memory(pid, ctypes.addressof(buf), b"/etc/shadow", mem)
        os.write(w, b"x")
        print(refused, read, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """
    helper = Path(__file__).resolve().parent / "docker_seccomp.py"
    result = subprocess.run([sys.executable, str(helper), sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "b'/etc/passwd\\x00'", "0"]


def test_the_supervisor_s_buffers_refuse_what_does_not_fit() -> None:
    """They are made once (recorder._Transfer): a path is read a page at most, a stat answer
    written whole; anything larger is an error, never a write past their end."""
    with pytest.raises(ValueError, match="do not fit"):
        recorder._write_memory(os.getpid(), 0, b"x" * (recorder.STATX_LENGTH + 1), "/proc/self/mem")
    with pytest.raises(ValueError, match="do not fit"):
        recorder._read_memory(os.getpid(), 0, recorder.PAGE + 1, "/proc/self/mem")
