"""Owners and device nodes that a single-uid user namespace cannot apply, recorded instead.

When only the caller's own id is mapped, `chown root:shadow` fails with EINVAL
and `mknod` of a device with EPERM. Every process of the bootstrap runs under a
seccomp filter that hands exactly those calls (and the removals that can free an
inode) to a supervisor process. The supervisor resolves the target the way the
kernel would for the calling process (its root, its working directory or
directory fd), records what was asked by inode, makes the call look successful,
and later gives the layer writer a table that overrides the owners and types it
sees. The filter is inherited by every child and cannot be bypassed by static
binaries, emulated (qemu-user) ones or a cleared environment, which is why this
is used rather than an LD_PRELOAD library such as fakeroot.

Without any user namespace (chrootless mode) the same calls fail with EPERM, and
are answered the same way; there the caller's own uid and gid stand for root
(Records' BASE), and the supervisor is the bootstrap's ancestor (start_above).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import marshal
import os
import select
import signal
import socket
import stat
import struct
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, NoReturn

from ocistrap.errors import BuildError
from ocistrap.rootfs import spawn, syscalls

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
PR_SET_NO_NEW_PRIVS = 38

# _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct seccomp_notif_resp), _IOW('!', 2, __u64)
NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101
NOTIF_ID_VALID = 0x40082102
NOTIF_SET_FLAGS = 0x40082104  # _IOW('!', 4, __u64), Linux 6.6
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP = 1
NOTIF = struct.Struct("=QII iI Q 6Q")
RESPONSE = struct.Struct("=QqiI")

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
PATH_MAX = 4096
PAGE = 4096
KILLED_BY_CHOWN = stat.S_ISUID | stat.S_ISGID
CAPABILITY_XATTR = "security.capability"

# name -> number, per audit architecture; "16" marks the legacy calls with 16-bit ids
SYSCALLS: dict[int, dict[str, int]] = {
    AUDIT_ARCH_X86_64: {
        "chown": 92, "fchown": 93, "lchown": 94, "fchownat": 260, "mknod": 133, "mknodat": 259,
        "unlink": 87, "unlinkat": 263, "rmdir": 84, "rename": 82, "renameat": 264, "renameat2": 316,
        "stat": 4, "fstat": 5, "lstat": 6, "newfstatat": 262, "statx": 332,
    },
    AUDIT_ARCH_I386: {
        "chown16": 182, "fchown16": 95, "lchown16": 16, "chown": 212, "fchown": 207, "lchown": 198,
        "fchownat": 298, "mknod": 14, "mknodat": 297, "unlink": 10, "unlinkat": 301, "rmdir": 40,
        "rename": 38, "renameat": 302, "renameat2": 353, "statx": 383,
    },
    AUDIT_ARCH_AARCH64: {
        "fchown": 55, "fchownat": 54, "mknodat": 33, "unlinkat": 35, "renameat": 38, "renameat2": 276,
        "newfstatat": 79, "fstat": 80, "statx": 291,
    },
}

class StatLayout(NamedTuple):
    """Where `struct stat` of an architecture keeps what a record changes (byte offsets)."""

    mode: int
    uid: int
    gid: int
    rdev: int
    size: int
    length: int


STAT_LAYOUTS = {AUDIT_ARCH_X86_64: StatLayout(24, 28, 32, 40, 48, 144),
                AUDIT_ARCH_AARCH64: StatLayout(16, 24, 28, 32, 48, 128)}
STATX_LENGTH = 256
STATX_UID, STATX_GID, STATX_MODE, STATX_SIZE, STATX_RDEV_MAJOR, STATX_RDEV_MINOR = 20, 24, 28, 40, 128, 132
_NAMES = {arch: {nr: name for name, nr in table.items()} for arch, table in SYSCALLS.items()}
NATIVE_AUDIT_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}
COMPAT_AUDIT_ARCH = {AUDIT_ARCH_X86_64: (AUDIT_ARCH_I386,)}


# ---- what a call asks for (pure) ----

@dataclass(frozen=True)
class Where:
    """A file as a call names it: PATH (an address in the caller) relative to DIRFD (None:
    the working directory), or, with PATH None (or empty and EMPTY_PATH), the file DIRFD
    itself is open on."""

    dirfd: int | None
    path: int | None
    follow: bool = True
    empty_path: bool = False


@dataclass(frozen=True)
class Chown:
    target: Where
    uid: int | None
    gid: int | None


@dataclass(frozen=True)
class Mknod:
    target: Where
    mode: int
    rdev: int


@dataclass(frozen=True)
class Remove:
    target: Where
    directory: bool


@dataclass(frozen=True)
class Rename:
    source: Where
    dest: Where
    flags: int


@dataclass(frozen=True)
class Stat:
    """stat()/statx() into BUFFER (an address in the caller): the answer is faked for
    recorded inodes; STATX holds (flags, mask) for statx."""

    target: Where
    buffer: int
    arch: int
    statx: tuple[int, int] | None = None


Call = Chown | Mknod | Remove | Rename | Stat


def _fd(value: int) -> int:
    """A plain fd argument (AT_FDCWD is no fd here: the kernel answers EBADF)."""
    return ctypes.c_int32(value & 0xFFFFFFFF).value


def _dirfd(value: int) -> int | None:
    """The dirfd of an *at call: None for AT_FDCWD, the working directory."""
    fd = _fd(value)
    return None if fd == AT_FDCWD else fd


def _id(value: int, bits: int) -> int | None:
    mask = (1 << bits) - 1
    return None if value & mask == mask else value & mask


def _at(dirfd: int, path: int, flags: int) -> Where:
    return Where(_dirfd(dirfd), path, not flags & AT_SYMLINK_NOFOLLOW, bool(flags & AT_EMPTY_PATH))


def decode(arch: int, nr: int, args: tuple[int, ...]) -> Call | None:
    """The call a notification stands for, or None if it is not one this module handles.

    ARCH is the audit architecture of the caller's system call.
    """
    name = _NAMES.get(arch, {}).get(nr)
    a = args
    bits = 16 if name is not None and name.endswith("16") else 32
    match (name or "").removesuffix("16"):
        case "chown":
            return Chown(Where(None, a[0]), _id(a[1], bits), _id(a[2], bits))
        case "lchown":
            return Chown(Where(None, a[0], follow=False), _id(a[1], bits), _id(a[2], bits))
        case "fchown":
            return Chown(Where(_fd(a[0]), None), _id(a[1], bits), _id(a[2], bits))
        case "fchownat":
            return Chown(_at(a[0], a[1], a[4]), _id(a[2], bits), _id(a[3], bits))
        case "mknod":
            return Mknod(Where(None, a[0], follow=False), a[1] & 0xFFFFFFFF, a[2] & 0xFFFFFFFF)
        case "mknodat":
            return Mknod(Where(_dirfd(a[0]), a[1], follow=False), a[2] & 0xFFFFFFFF, a[3] & 0xFFFFFFFF)
        case "unlink":
            return Remove(Where(None, a[0], follow=False), directory=False)
        case "rmdir":
            return Remove(Where(None, a[0], follow=False), directory=True)
        case "unlinkat":
            return Remove(Where(_dirfd(a[0]), a[1], follow=False), directory=bool(a[2] & AT_REMOVEDIR))
        case "rename":
            return Rename(Where(None, a[0], follow=False), Where(None, a[1], follow=False), 0)
        case "renameat":
            return Rename(Where(_dirfd(a[0]), a[1], follow=False), Where(_dirfd(a[2]), a[3], follow=False), 0)
        case "renameat2":
            return Rename(Where(_dirfd(a[0]), a[1], follow=False), Where(_dirfd(a[2]), a[3], follow=False),
                          a[4] & 0xFFFFFFFF)
        case "stat":
            return Stat(Where(None, a[0]), a[1], arch)
        case "lstat":
            return Stat(Where(None, a[0], follow=False), a[1], arch)
        case "fstat":
            return Stat(Where(_fd(a[0]), None), a[1], arch)
        case "newfstatat":
            return Stat(_at(a[0], a[1], a[3]), a[2], arch)
        case "statx":
            return Stat(_at(a[0], a[1], a[2]), a[4], arch, statx=(a[2] & 0xFFFFFFFF, a[3] & 0xFFFFFFFF))
    return None


# ---- the records (pure) ----

class Recorded(NamedTuple):
    """What the image must show for one inode instead of what the staging tree has."""

    uid: int
    gid: int
    kind: int = 0
    rdev: int = 0


Key = tuple[int, int]


class Records:
    """Recorded owners and device types by (st_dev, st_ino).

    The staging tree's own owner is BASE (uid, gid): 0:0 inside a user namespace, the
    caller's ids when the build runs in none (chrootless); the image shows BASE as 0:0.
    Only what differs from that is kept, so a `chown 0:0` of an unrecorded file costs
    nothing. Records of inodes that a removal frees are dropped, so a reused inode
    number starts clean.
    """

    def __init__(self, table: Mapping[Key, Recorded] | None = None, base: tuple[int, int] = (0, 0)) -> None:
        self.table: dict[Key, Recorded] = dict(table or {})
        self.base = base
        self.devices = Counter(dev for dev, _ in self.table)

    def outside(self, dev: int | None) -> bool:
        """Whether an inode of another file system than DEV (any, if None) is recorded."""
        return len(self.devices) > (dev in self.devices)

    def _unrecorded(self, st: os.stat_result) -> tuple[int, int]:
        """ST's owner as the image shows it when nothing was recorded for it."""
        return self._shifted(st.st_uid, st.st_gid)

    def _shifted(self, uid: int, gid: int) -> tuple[int, int]:
        return 0 if uid == self.base[0] else uid, 0 if gid == self.base[1] else gid

    def owner(self, st: os.stat_result) -> tuple[int, int]:
        found = self.table.get((st.st_dev, st.st_ino))
        return (found.uid, found.gid) if found else self._unrecorded(st)

    def shown(self, st: os.stat_result) -> Recorded | None:
        """What a stat of ST must answer instead of the kernel's (None: the kernel's answer holds)."""
        return self.shown_by((st.st_dev, st.st_ino), st.st_uid, st.st_gid)

    def shown_by(self, key: Key, uid: int, gid: int) -> Recorded | None:
        """shown() of the inode KEY that the kernel says UID and GID own."""
        found = self.table.get(key)
        if found is not None:
            return found
        owner = self._shifted(uid, gid)
        return None if owner == (uid, gid) else Recorded(*owner)

    def chown(self, st: os.stat_result, uid: int | None, gid: int | None) -> None:
        old = self.table.get((st.st_dev, st.st_ino))
        cur_uid, cur_gid = self.owner(st)
        new = Recorded(cur_uid if uid is None else uid, cur_gid if gid is None else gid,
                       old.kind if old else 0, old.rdev if old else 0)
        self._put(st, new)

    def device(self, st: os.stat_result, kind: int, rdev: int) -> None:
        uid, gid = self.owner(st)
        self._put(st, Recorded(uid, gid, kind, rdev))

    def forget(self, st: os.stat_result) -> None:
        self._drop((st.st_dev, st.st_ino))

    def _drop(self, key: Key) -> None:
        if self.table.pop(key, None) is not None:
            self.devices[key[0]] -= 1
            if not self.devices[key[0]]:
                del self.devices[key[0]]

    def __contains__(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) in self.table

    def __bool__(self) -> bool:
        return bool(self.table)

    @property
    def shifts_owners(self) -> bool:
        """Whether unrecorded files show another owner than the tree's (builds outside a namespace)."""
        return self.base != (0, 0)

    def _put(self, st: os.stat_result, value: Recorded) -> None:
        key = (st.st_dev, st.st_ino)
        if value == Recorded(*self._unrecorded(st)):
            self._drop(key)
        else:
            if key not in self.table:
                self.devices[st.st_dev] += 1
            self.table[key] = value

    def apply(self, st: os.stat_result) -> os.stat_result:
        """ST as the image must show it: recorded owner, and a device where a placeholder stands."""
        found = self.shown(st)
        if found is None:
            return st
        mode, size, rdev = st.st_mode, st.st_size, st.st_rdev
        if found.kind:
            mode, size, rdev = found.kind | stat.S_IMODE(mode), 0, found.rdev
        return _restat(st, mode=mode, uid=found.uid, gid=found.gid, size=size, rdev=rdev)

    def dumps(self) -> bytes:
        return marshal.dumps((self.base, {k: tuple(v) for k, v in self.table.items()}))

    @classmethod
    def loads(cls, data: bytes) -> "Records":
        base, table = marshal.loads(data)
        return cls({tuple(k): Recorded(*v) for k, v in table.items()}, base=tuple(base))


_EXTRA_FIELDS = ("st_atime", "st_mtime", "st_ctime", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
                 "st_blksize", "st_blocks", "st_rdev")


def _restat(st: os.stat_result, *, mode: int, uid: int, gid: int, size: int, rdev: int) -> os.stat_result:
    fields = list(st[:10])
    fields[stat.ST_MODE], fields[stat.ST_UID], fields[stat.ST_GID], fields[stat.ST_SIZE] = mode, uid, gid, size
    extra = {name: getattr(st, name) for name in _EXTRA_FIELDS}
    extra["st_rdev"] = rdev
    return os.stat_result(fields, extra)


def freed_by_removal(st: os.stat_result, *, directory: bool, directory_empty: Callable[[], bool]) -> bool:
    """Whether removing the name of ST (with rmdir if DIRECTORY, else unlink) frees its inode.

    A removal the kernel will refuse frees nothing: dpkg tries rmdir() on files
    before it unlinks them.
    """
    if stat.S_ISDIR(st.st_mode) != directory:
        return False
    if directory:
        return directory_empty()
    return st.st_nlink <= 1


def rename_frees_dest(source: os.stat_result | None, dest: os.stat_result | None, flags: int) -> bool:
    """Whether a rename onto DEST will free DEST's inode; when it would fail, it frees nothing."""
    if dest is None or source is None or flags & (RENAME_EXCHANGE | RENAME_NOREPLACE):
        return False
    if (source.st_dev, source.st_ino) == (dest.st_dev, dest.st_ino) or source.st_dev != dest.st_dev:
        return False
    return stat.S_ISDIR(source.st_mode) == stat.S_ISDIR(dest.st_mode)


def chown_mode(mode: int) -> int:
    """The mode a chown leaves (Linux clears set-user-ID, and set-group-ID with group execute,
    of anything but a directory, even for root)."""
    if stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return stat.S_IMODE(mode)
    kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
    return stat.S_IMODE(mode) & ~kill


def _shown(found: Recorded, mode: int, size: int, rdev: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
    if found.kind:
        return found.kind | stat.S_IMODE(mode), 0, (os.major(found.rdev), os.minor(found.rdev))
    return mode, size, rdev


STATX_INO, STATX_DEV_MAJOR = 32, 136


def raw_identity(raw: bytes, *, statx: bool) -> tuple[Key, int, int]:
    """(st_dev, st_ino), uid and gid of RAW, the host's `struct stat` (or `struct statx`), as
    os.stat gives them: what Records.shown_by looks up."""
    if statx:
        ino, = struct.unpack_from("=Q", raw, STATX_INO)
        major, minor = struct.unpack_from("=II", raw, STATX_DEV_MAJOR)
        uid, gid = struct.unpack_from("=II", raw, STATX_UID)
        return (os.makedev(major, minor), ino), uid, gid
    layout = _HOST_LAYOUT
    dev, ino = struct.unpack_from("=QQ", raw, 0)
    return (dev, ino), struct.unpack_from("=I", raw, layout.uid)[0], struct.unpack_from("=I", raw, layout.gid)[0]


def patch_stat(raw: bytes, layout: StatLayout, found: Recorded) -> bytes:
    """A `struct stat` as the recorded owner and type make it look."""
    out = bytearray(raw)
    mode = struct.unpack_from("=I", out, layout.mode)[0]
    size = struct.unpack_from("=q", out, layout.size)[0]
    rdev = struct.unpack_from("=Q", out, layout.rdev)[0]
    mode, size, (major, minor) = _shown(found, mode, size, (os.major(rdev), os.minor(rdev)))
    struct.pack_into("=I", out, layout.mode, mode)
    struct.pack_into("=I", out, layout.uid, found.uid)
    struct.pack_into("=I", out, layout.gid, found.gid)
    struct.pack_into("=q", out, layout.size, size)
    struct.pack_into("=Q", out, layout.rdev, os.makedev(major, minor))
    return bytes(out)


def patch_statx(raw: bytes, found: Recorded) -> bytes:
    """A `struct statx` as the recorded owner and type make it look."""
    out = bytearray(raw)
    mode = struct.unpack_from("=H", out, STATX_MODE)[0]
    size = struct.unpack_from("=Q", out, STATX_SIZE)[0]
    rdev = struct.unpack_from("=II", out, STATX_RDEV_MAJOR)
    mode, size, (major, minor) = _shown(found, mode, size, rdev)
    struct.pack_into("=II", out, STATX_UID, found.uid, found.gid)
    struct.pack_into("=H", out, STATX_MODE, mode)
    struct.pack_into("=Q", out, STATX_SIZE, size)
    struct.pack_into("=II", out, STATX_RDEV_MAJOR, major, minor)
    return bytes(out)


# ---- the seccomp filter (pure) ----

def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_RET_K = 0x06
SECCOMP_DATA_NR = 0
SECCOMP_DATA_ARCH = 4


def filter_program(arches: tuple[int, ...]) -> bytes:
    """Classic BPF: notify for the calls of SYSCALLS of each of ARCHES, allow everything else.

    A call of an architecture not listed runs unchanged, and its chown fails as it
    would without this module: loud, never silently wrong.
    """
    blocks = []
    for arch in arches:
        numbers = sorted(set(SYSCALLS[arch].values()))
        body = [_insn(BPF_LD_W_ABS, SECCOMP_DATA_NR)]
        for i, nr in enumerate(numbers):
            body.append(_insn(BPF_JEQ_K, nr, jt=len(numbers) - i, jf=0))
        body.append(_insn(BPF_RET_K, SECCOMP_RET_ALLOW))
        body.append(_insn(BPF_RET_K, SECCOMP_RET_USER_NOTIF))
        head = [_insn(BPF_LD_W_ABS, SECCOMP_DATA_ARCH), _insn(BPF_JEQ_K, arch, jt=0, jf=len(body))]
        blocks.append(b"".join(head + body))
    return b"".join(blocks) + _insn(BPF_RET_K, SECCOMP_RET_ALLOW)


def lasting_device(path: str | Path) -> int | None:
    """The device of PATH's file system if it never gives a freed inode number out again, else
    None. tmpfs numbers inodes from a counter of its own (shmem_reserve_inode), so a record of
    an inode there cannot pass to a later file (the counter wraps only after 2^32 files on a
    mount without inode64); ext4 and most others hand a freed number to the next file at once."""
    return os.stat(path).st_dev if syscalls.fs_type(path) == syscalls.TMPFS_MAGIC else None


def host_arches(machine: str | None = None) -> tuple[int, ...]:
    native = NATIVE_AUDIT_ARCH.get(machine or os.uname().machine)
    if native is None:
        raise BuildError(f"recording owners is not supported on {machine or os.uname().machine}",
                            hint="use --mode unshare with a subordinate id range")
    return (native, *COMPAT_AUDIT_ARCH.get(native, ()))


# ---- installing the filter (side effects) ----

class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_filter(program: bytes) -> int:
    """Filter this thread and all its future children; return the notification fd."""
    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise BuildError(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    number = {"x86_64": 317, "aarch64": 277}[os.uname().machine]
    fd = libc.syscall(number, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                      ctypes.byref(prog))
    if fd < 0:
        err = ctypes.get_errno()
        raise BuildError(f"cannot install the seccomp filter that records owners: {os.strerror(err)}",
                            hint="the kernel needs seccomp user notification (Linux 5.5 or later); "
                                 "or use --mode unshare with a subordinate id range")
    return fd


# ---- the supervisor (side effects) ----

def _sync_wake_up(listener: int) -> None:
    """Ask the kernel to switch between caller and supervisor on one CPU: each of the
    ~10^5 calls of a bootstrap otherwise waits for an idle CPU to wake up."""
    try:
        fcntl.ioctl(listener, NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTTY):
            raise


class _Gone(Exception):
    """The calling process left the call (killed) while it was being handled."""


Op = Callable[[str, "int | None", bool], object]


class Supervisor:
    """Answers the notifications of one listener fd, keeping the Records.

    PROC is a proc file system of the sandbox's PID namespace: notifications name
    processes by their pid there. CHROOTS: whether callers may be chrooted, so that their
    paths are resolved from their own root; outside a user namespace (chrootless) no
    process can chroot, and the supervisor cannot either. LASTING: the device of a file
    system that never gives a freed inode number out again (see lasting_device), whose
    records need not be dropped when a removal frees their inode: while no other is
    recorded, a removal (dpkg tries tens of thousands) is let through unexamined.
    """

    def __init__(self, listener: int, proc: str, *, bootstrap: int, base: tuple[int, int] = (0, 0),
                 chroots: bool = True, lasting: int | None = None) -> None:
        self.listener = listener
        self.proc = proc
        self.records = Records(base=base)
        self.chroots = chroots
        self.lasting = lasting
        self.real_root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.bootstrap = bootstrap
        self.unfaked: set[int] = set()
        _sync_wake_up(listener)

    def handle_one(self) -> None:
        buf = bytearray(NOTIF.size)
        try:
            fcntl.ioctl(self.listener, NOTIF_RECV, buf, True)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINTR):
                return
            raise
        notif_id, pid, _flags, nr, arch, _ip, *args = NOTIF.unpack(buf)
        call = decode(arch, nr, tuple(args))
        try:
            result = None if call is None else self._handle(call, pid, notif_id)
        except _Gone:
            return
        except OSError as e:
            result = -(e.errno or errno.EIO)
        self._respond(notif_id, result)

    def _respond(self, notif_id: int, result: int | None) -> None:
        """RESULT: 0 or -errno for an emulated call, None to let the kernel run it."""
        if result is None:
            resp = RESPONSE.pack(notif_id, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE)
        else:
            resp = RESPONSE.pack(notif_id, 0, result, 0)
        try:
            fcntl.ioctl(self.listener, NOTIF_SEND, bytearray(resp), True)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise

    def _handle(self, call: Call, pid: int, notif_id: int) -> int | None:
        if isinstance(call, (Remove, Rename)) and not self.records.outside(self.lasting):
            return None
        if isinstance(call, Stat) and not (self.records or self.records.shifts_owners):
            return None
        if isinstance(call, Stat) and (pid == self.bootstrap or pid in self.unfaked):
            return None  # the bootstrap itself applies the records to what it stats
        with _Context(pid, notif_id, self) as ctx:
            match call:
                case Chown():
                    return self._chown(ctx, call)
                case Mknod():
                    return self._mknod(ctx, call)
                case Remove():
                    self._remove(ctx, call)
                case Rename():
                    self._rename(ctx, call)
                case Stat():
                    return self._stat(ctx, call)
        return None

    def _stat(self, ctx: "_Context", call: Stat) -> int | None:
        """Answer for a recorded inode (or one owned by the tree's own ids, shown as 0:0); let
        the kernel answer (and fail) for all others."""
        if call.statx is None and call.arch not in STAT_LAYOUTS:
            return None
        def raw_stat(path: str, dir_fd: int | None, follow: bool) -> bytes:
            return _raw_stat(path, dir_fd, follow, call.statx)

        try:
            if self.records.shifts_owners:  # nearly every inode is shown otherwise: one call
                raw = ctx.run(call.target, raw_stat)
                assert isinstance(raw, bytes)
                found = self.records.shown_by(*raw_identity(raw, statx=call.statx is not None))
            else:  # few are recorded: os.stat, cheaper by half, decides
                st = ctx.run(call.target, lambda p, d, f: os.stat(p, dir_fd=d, follow_symlinks=f))
                assert isinstance(st, os.stat_result)
                found = self.records.shown(st)
                raw = ctx.run(call.target, raw_stat) if found is not None else b""
        except OSError:
            return None
        if found is None:
            return None
        assert isinstance(raw, bytes)
        if call.statx:
            ctx.write(call.buffer, patch_statx(raw, found))
        else:
            layout = STAT_LAYOUTS[call.arch]
            ctx.write(call.buffer, patch_stat(raw[:layout.length], layout, found))
        return 0

    def _chown(self, ctx: "_Context", call: Chown) -> int:
        def apply(path: str, dir_fd: int | None, follow: bool) -> None:
            st = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow)
            ctx.confirm()
            self.records.chown(st, call.uid, call.gid)
            if stat.S_ISLNK(st.st_mode):
                return
            if stat.S_IMODE(st.st_mode) != chown_mode(st.st_mode):
                os.chmod(path, chown_mode(st.st_mode), dir_fd=dir_fd)
            if stat.S_ISREG(st.st_mode) and not self.records.shifts_owners:
                _drop_capabilities(path, dir_fd)
        ctx.run(call.target, apply)
        return 0

    def _mknod(self, ctx: "_Context", call: Mknod) -> int | None:
        kind = stat.S_IFMT(call.mode)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            return None
        umask = ctx.umask()

        def create(path: str, dir_fd: int | None, _follow: bool) -> None:
            ctx.confirm()
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                         stat.S_IMODE(call.mode) & ~umask, dir_fd=dir_fd)
            try:
                self.records.device(os.fstat(fd), kind, os.makedev(os.major(call.rdev), os.minor(call.rdev)))
            finally:
                os.close(fd)
        ctx.run(call.target, create)
        return 0

    def _remove(self, ctx: "_Context", call: Remove) -> None:
        st = ctx.lstat(call.target)
        if st is not None and st in self.records and freed_by_removal(
                st, directory=call.directory, directory_empty=lambda: ctx.empty(call.target)):
            ctx.confirm()
            self.records.forget(st)

    def _rename(self, ctx: "_Context", call: Rename) -> None:
        dest = ctx.lstat(call.dest)
        if dest is None or dest not in self.records:
            return
        if rename_frees_dest(ctx.lstat(call.source), dest, call.flags) and freed_by_removal(
                dest, directory=stat.S_ISDIR(dest.st_mode), directory_empty=lambda: ctx.empty(call.dest)):
            ctx.confirm()
            self.records.forget(dest)


_HOST_STAT = SYSCALLS[NATIVE_AUDIT_ARCH.get(os.uname().machine, AUDIT_ARCH_X86_64)]
_HOST_LAYOUT = STAT_LAYOUTS[NATIVE_AUDIT_ARCH.get(os.uname().machine, AUDIT_ARCH_X86_64)]
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _raw_stat(path: str, dir_fd: int | None, follow: bool, statx: tuple[int, int] | None) -> bytes:
    """The host's own stat/statx answer for PATH, as the bytes the kernel would have written."""
    flags = 0 if follow else AT_SYMLINK_NOFOLLOW
    at = ctypes.c_int(AT_FDCWD if dir_fd is None else dir_fd)
    name = os.fsencode(path)
    if statx is None:
        result = _libc.syscall(_NEWFSTATAT, at, name, _stat_buf, ctypes.c_int(flags))
        length = _HOST_LAYOUT.length
    else:
        sync = statx[0] & ~(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH)
        result = _libc.syscall(_STATX, at, name, ctypes.c_int(sync | flags), ctypes.c_uint(statx[1]), _stat_buf)
        length = STATX_LENGTH
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.string_at(_stat_buf, length)


_NEWFSTATAT, _STATX = ctypes.c_long(_HOST_STAT["newfstatat"]), ctypes.c_long(_HOST_STAT["statx"])
_stat_buf = ctypes.create_string_buffer(STATX_LENGTH)


def _drop_capabilities(path: str, dir_fd: int | None) -> None:
    """What the kernel does on chown of a regular file: its file capabilities go. Only a file
    that has them is touched: removing the attribute needs CAP_SETFCAP even when it is absent,
    which a supervisor outside a user namespace lacks. Such a supervisor cannot open a file
    of mode 0 (dpkg's new files, before their fchmod) either, and no file there has
    capabilities: setting them needs CAP_SETFCAP too."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except PermissionError:
        return
    try:
        os.getxattr(fd, CAPABILITY_XATTR)
        os.removexattr(fd, CAPABILITY_XATTR)
    except OSError as e:
        if e.errno not in (errno.ENODATA, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                                   ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]


_libc.process_vm_writev.restype = ctypes.c_ssize_t
_libc.process_vm_writev.argtypes = _libc.process_vm_readv.argtypes


# Errors of process_vm_readv/writev that a seccomp filter gives: Docker 20.10's default profile
# refuses both (EPERM) even to a process reading itself; /proc/PID/mem, a file, is not filtered.
_VM_REFUSALS = (errno.EPERM, errno.ENOSYS)


class _Transfer:
    """One process_vm_readv/_writev between a buffer of this process and another's memory, with
    the buffers and vectors made once: the supervisor moves a path and a stat answer per call."""

    def __init__(self, call: Callable[..., int], size: int) -> None:
        self.call, self.buf = call, ctypes.create_string_buffer(size)
        self.local, self.remote = _IoVec(ctypes.addressof(self.buf), 0), _IoVec(0, 0)
        self.local_p, self.remote_p = ctypes.pointer(self.local), ctypes.pointer(self.remote)

    def __call__(self, pid: int, address: int, size: int) -> int | None:
        """SIZE bytes between the buffer and PID's ADDRESS: the bytes moved, -1 for a bad
        address, None where a seccomp filter refuses the call."""
        self._fits(size)
        self.local.len = self.remote.len = size
        self.remote.base = address
        n = self.call(pid, self.local_p, 1, self.remote_p, 1, 0)
        return None if n < 0 and ctypes.get_errno() in _VM_REFUSALS else n

    def load(self, data: bytes) -> None:
        """Put DATA into the buffer, for a write."""
        self._fits(len(data))
        ctypes.memmove(self.buf, data, len(data))

    def _fits(self, size: int) -> None:
        if size > len(self.buf):
            raise ValueError(f"{size} bytes do not fit the {len(self.buf)}-byte buffer")


_reader = _Transfer(_libc.process_vm_readv, PAGE)
_writer = _Transfer(_libc.process_vm_writev, STATX_LENGTH)


def _write_memory(pid: int, address: int, data: bytes, mem: str) -> None:
    """DATA (at most STATX_LENGTH bytes) into process PID at ADDRESS: one system call, or through
    its /proc/PID/mem file MEM where process_vm_writev is refused."""
    _writer.load(data)
    n = _writer(pid, address, len(data))
    if n is None:
        fd = os.open(mem, os.O_WRONLY | os.O_CLOEXEC)
        try:
            n = os.pwrite(fd, data, address)
        except OSError:
            n = -1
        finally:
            os.close(fd)
    if n != len(data):
        raise OSError(errno.EFAULT, "short write")


def _read_memory(pid: int, address: int, size: int, mem: str) -> bytes:
    """SIZE bytes (at most a page) of process PID at ADDRESS (fewer at the end of a mapping):
    one system call, or through its /proc/PID/mem file MEM where process_vm_readv is refused."""
    n = _reader(pid, address, size)
    if n is None:
        fd = os.open(mem, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, size, address)
        except OSError:
            data = b""
        finally:
            os.close(fd)
    else:
        data = ctypes.string_at(_reader.buf, n) if n > 0 else b""
    if not data:
        raise OSError(errno.EFAULT, "bad address")
    return data


class _Context:
    """The caller's view of the file system: paths resolve as they would for it
    (its root directory, its working directory, its open directories)."""

    def __init__(self, pid: int, notif_id: int, supervisor: Supervisor) -> None:
        self.pid, self.notif_id = pid, notif_id
        self.sup = supervisor
        self.base = f"{supervisor.proc}/{pid}"
        self.fds: list[int] = []
        self.dirs: dict[int | None, int] = {}
        self.paths: dict[int, str] = {}
        self.root: int | None = None

    def __enter__(self) -> "_Context":
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

    def _open(self, name: str, flags: int = os.O_PATH) -> int:
        """Open NAME of the caller's /proc directory (whose it is, confirm() tells).

        If the caller is still there, a missing fd/N is its bad file descriptor.
        """
        try:
            fd = os.open(f"{self.base}/{name}", flags | os.O_CLOEXEC)
        except OSError as e:
            self.confirm()
            if name.startswith("fd/"):
                raise OSError(errno.EBADF, "bad file descriptor") from e
            raise
        self.fds.append(fd)
        return fd

    def confirm(self) -> None:
        """Before any effect: the call is still pending, so what was read and opened by its
        pid belongs to the caller, not to a process that got the pid after it died."""
        try:
            fcntl.ioctl(self.sup.listener, NOTIF_ID_VALID, struct.pack("=Q", self.notif_id))
        except OSError as e:
            raise _Gone() from e

    def _dir(self, fd: int | None) -> int:
        if fd not in self.dirs:
            self.dirs[fd] = self._open("cwd" if fd is None else f"fd/{fd}")
        return self.dirs[fd]

    def read_path(self, address: int) -> str:
        if address in self.paths:
            return self.paths[address]
        data = b""
        while b"\0" not in data:
            if len(data) >= PATH_MAX:
                raise OSError(errno.ENAMETOOLONG, "path too long")
            at = address + len(data)
            data += _read_memory(self.pid, at, PAGE - at % PAGE, f"{self.base}/mem")
        self.paths[address] = os.fsdecode(data.split(b"\0", 1)[0])
        return self.paths[address]

    def run(self, where: Where, op: Op) -> object:
        """OP(path, dir_fd, follow) on the file WHERE names, as the caller would reach it.

        A file named by an fd is reached through that fd; a path is resolved
        chrooted into the caller's root, relative to its directory.
        """
        path = "" if where.path is None else self.read_path(where.path)
        if where.path is None or (not path and where.empty_path):
            fd = self._dir(where.dirfd)
            return op(f"{self.sup.proc}/self/fd/{fd}", None, True)
        if not path:
            raise OSError(errno.ENOENT, "empty path")
        dir_fd = None if path.startswith("/") else self._dir(where.dirfd)
        if not self.sup.chroots:
            return op(path, dir_fd, where.follow)
        if self.root is None:
            self.root = self._open("root")
        os.fchdir(self.root)
        os.chroot(".")
        try:
            return op(path, dir_fd, where.follow)
        finally:
            os.fchdir(self.sup.real_root)
            os.chroot(".")

    def write(self, address: int, data: bytes) -> None:
        """Put DATA into the caller's memory at ADDRESS (the buffer its call passed)."""
        self.confirm()
        _write_memory(self.pid, address, data, f"{self.base}/mem")

    def lstat(self, where: Where) -> os.stat_result | None:
        try:
            found = self.run(where, lambda p, d, f: os.stat(p, dir_fd=d, follow_symlinks=f))
        except OSError:
            return None
        assert isinstance(found, os.stat_result)
        return found

    def empty(self, where: Where) -> bool:
        def listing(path: str, dir_fd: int | None, _follow: bool) -> bool:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                return not os.listdir(fd)
            finally:
                os.close(fd)
        try:
            return bool(self.run(where, listing))
        except OSError:
            return False

    def umask(self) -> int:
        try:
            with open(f"{self.base}/status") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        return int(line.split()[1], 8)
        except OSError:
            pass
        return 0o022


# ---- the process pair (side effects) ----

_LENGTH = struct.Struct("=Q")
_RECORDS, _UNFAKED_ADD, _UNFAKED_DROP = b"?", b"+", b"-"


class Recorder:
    """The bootstrap's handle on its supervisor: this process and all its future children
    are filtered; `records()` returns what has been recorded so far. PID is the supervisor's
    when it is this process's child (start), None when it is its parent (start_above)."""

    def __init__(self, pid: int | None, control: socket.socket) -> None:
        self.pid, self.control = pid, control

    def records(self) -> Records:
        self.control.sendall(b"?")
        size = _LENGTH.unpack(_recv_exactly(self.control, _LENGTH.size))[0]
        return Records.loads(_recv_exactly(self.control, size))

    @contextmanager
    def unfaked_stats(self, pid: int) -> Iterator[None]:
        """While this lasts, the kernel answers stat calls of process PID (a child of this
        process) unchanged: the supervisor is not asked, which costs ~50 µs a call. For a
        process that reads no owners from stat (ocistrap's own unpacker, thousands of calls).
        The end must come before PID is reaped, when the number could go to another process."""
        self._tell(_UNFAKED_ADD, pid)
        try:
            yield
        finally:
            self._tell(_UNFAKED_DROP, pid)

    def _tell(self, request: bytes, pid: int) -> None:
        self.control.sendall(request + _LENGTH.pack(pid))
        _recv_exactly(self.control, 1)

    def close(self) -> None:
        self.control.close()
        if self.pid is not None:
            os.waitpid(self.pid, 0)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise BuildError("the ownership recorder stopped unexpectedly (see the log above)")
        data += chunk
    return bytes(data)


def start(proc: str, lasting: int | None = None) -> Recorder:
    """Fork the supervisor, then filter this process (which must still be single-threaded).

    PROC is a proc file system mounted for the current PID namespace; LASTING: see Supervisor.
    """
    program = filter_program(host_arches())
    pid, ours = spawn.fork_with_channel(lambda channel: _serve(channel, proc, lasting=lasting))
    try:
        listener = install_filter(program)
    except BaseException:
        ours.close()
        os.waitpid(pid, 0)
        raise
    socket.send_fds(ours, [b"L"], [listener])
    os.close(listener)
    _recv_exactly(ours, 1)
    return Recorder(pid, ours)


PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def start_above(proc: str, base: tuple[int, int], lasting: int | None = None) -> Recorder:
    """Like start, but this process becomes the supervisor and the bootstrap goes on in a child,
    which is what returns (this process serves until the child ends, then exits with its
    status). Outside a user namespace the supervisor has no CAP_SYS_PTRACE over the callers,
    and Yama's ptrace_scope 1 then lets only an ancestor read their memory; as a child
    subreaper it stays the ancestor of what daemonizes, too. BASE: the ids the tree's files
    belong to, shown as 0:0 (Records)."""
    program = filter_program(host_arches())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child != 0:
        theirs.close()
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        _serve(ours, proc, bootstrap=child, base=base, above=True, lasting=lasting)
    ours.close()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    listener = install_filter(program)
    socket.send_fds(theirs, [b"L"], [listener])
    os.close(listener)
    _recv_exactly(theirs, 1)
    return Recorder(None, theirs)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise BuildError(f"prctl({option}) failed: {os.strerror(ctypes.get_errno())}")


def _exit_with(child: int) -> NoReturn:
    """Wait for CHILD and exit as it did (128+N if signal N killed it), ending first what it left
    running (a daemon a maintainer script started): no PID namespace does that here."""
    _, status = os.waitpid(child, 0)
    _end_orphans()
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def _end_orphans() -> None:
    """Kill and reap this subreaper's children until none is left (their own children come
    to it in turn)."""
    me = os.getpid()
    while True:
        try:
            with open(f"/proc/{me}/task/{me}/children") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


def _serve(control: socket.socket, proc: str, *, bootstrap: int | None = None, base: tuple[int, int] = (0, 0),
           above: bool = False, lasting: int | None = None) -> NoReturn:
    """The supervisor process: answer notifications and table requests until the bootstrap ends
    (BOOTSTRAP: its pid, by default this process's parent). ABOVE: the bootstrap is this
    process's child; its cleanup after it let go of the recorder (a tree removed) still
    needs answers, so this process serves until the child exits, then exits as it did.

    It keeps no other descriptor: a copy of a layer pipe here would hold its reader off.
    """
    bootstrap = os.getppid() if bootstrap is None else bootstrap
    try:
        os.closerange(3, control.fileno())
        os.closerange(control.fileno() + 1, 1 << 16)
        _, fds, _, _ = socket.recv_fds(control, 1, 1)
        if not fds:
            _exit_with(bootstrap) if above else os._exit(1)
        supervisor = Supervisor(fds[0], proc, bootstrap=bootstrap, base=base, chroots=not above, lasting=lasting)
        control.sendall(b"k")
        poller = select.poll()
        poller.register(supervisor.listener, select.POLLIN)
        poller.register(control, select.POLLIN)
        child = os.pidfd_open(bootstrap) if above else -1
        if above:
            poller.register(child, select.POLLIN)
        while True:
            for fd, events in poller.poll():
                if fd == supervisor.listener:
                    if events & select.POLLIN:
                        supervisor.handle_one()
                    elif events & (select.POLLHUP | select.POLLERR):
                        if not above:
                            os._exit(0)
                        poller.unregister(supervisor.listener)
                elif fd == child:
                    _exit_with(bootstrap)
                elif not (request := control.recv(1)):
                    if not above:
                        os._exit(0)
                    poller.unregister(control)
                elif request == _RECORDS:
                    data = supervisor.records.dumps()
                    control.sendall(_LENGTH.pack(len(data)) + data)
                else:
                    pid = _LENGTH.unpack(_recv_exactly(control, _LENGTH.size))[0]
                    (supervisor.unfaked.add if request == _UNFAKED_ADD else supervisor.unfaked.discard)(pid)
                    control.sendall(b"k")
    except BaseException:
        print("ocistrap (ownership recorder): internal error", file=sys.stderr)
        traceback.print_exc()
        os._exit(1)
