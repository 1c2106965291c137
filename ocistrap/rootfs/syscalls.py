"""The few system calls Python does not wrap (mount, umount2, unshare, prctl), through libc,
and the one ioctl it needs (an interface's flags)."""

import ctypes
import fcntl
import os
import signal
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

from ocistrap.errors import BuildError

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# A network namespace of its own: maintainer scripts run as root of the
# namespace and must not reach the network (everything comes from the cache).
NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MNT_DETACH = 0x2

TMPFS_MAGIC = 0x01021994

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFREQ_FLAGS = struct.Struct("16sh22x")  # struct ifreq: the name, then ifr_flags in its 24-byte union

CAP_SYS_CHROOT = 18
CAP_SYS_PTRACE = 19
CAP_SETGID = 6
CAP_SETUID = 7


# ---- libc ----

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
libc.statfs.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
STATFS_SIZE = 120  # struct statfs on x86_64 and aarch64; f_type, a long, comes first


def ok_or_raise(result: int, target: str | Path | None = None) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), None if target is None else str(target))


def _bytes(value: str | Path | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(source: str | Path | None, target: str | Path, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    ok_or_raise(libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)),
           target)


def umount(target: str | Path, flags: int = 0) -> None:
    ok_or_raise(libc.umount2(_bytes(target), flags), target)


def unshare(flags: int) -> None:
    ok_or_raise(libc.unshare(flags))


def fs_type(path: str | Path) -> int:
    """The magic number (statfs's f_type) of the file system PATH is on."""
    buf = ctypes.create_string_buffer(STATFS_SIZE)
    ok_or_raise(libc.statfs(_bytes(path), buf), path)
    return struct.unpack_from("l", buf.raw)[0]


def interface_flags(name: str) -> int:
    """The flags (IFF_*) of network interface NAME in this network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(name.encode(), 0)))[1]


def interface_up(name: str) -> None:
    """Bring network interface NAME up (ip link set NAME up), in this network namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ_FLAGS.pack(name.encode(), interface_flags(name) | IFF_UP))


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    ok_or_raise(libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0))


def make_undumpable() -> None:
    """Keep this process's memory, descriptors and /proc/PID/root (the host's /) from code of
    the same uid in the sandbox: without CAP_SYS_PTRACE (chroot_run drops it) it cannot
    ptrace this process or follow its /proc links."""
    ok_or_raise(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))


def drop_bounding(caps: Iterable[int]) -> None:
    for cap in caps:
        ok_or_raise(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0))


def open_dir(path: Path, *, follow: bool = False) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(path, flags)
    except OSError as e:
        raise BuildError(f"cannot open the directory {path}: {e.strerror}") from e


def try_flock(fd: int, operation: int) -> bool:
    """Whether OPERATION got the lock (not if another process holds it, nor if the
    filesystem cannot lock)."""
    try:
        fcntl.flock(fd, operation)
    except OSError:
        return False
    return True
