"""Run commands as root of a private user namespace, and the mounts a chroot needs.

The only module that knows about user namespaces, /etc/subuid, newuidmap and
mount(2). ``spawn()`` runs on the host as the caller: it starts this module
as a small helper that unshares user, mount, PID, IPC and UTS namespaces,
waits while the caller maps ids 0..65535 with newuidmap/newgidmap, becomes
uid 0, and forks an init (PID 1 of the new PID namespace) that runs the
payload. The helper and the init die with their parent (PR_SET_PDEATHSIG),
and when the init dies the kernel kills everything in its PID namespace, so
no process outlives the caller.

A tree built on disk in a sandbox belongs to subordinate ids the caller
cannot delete, so ``spawn(remove_on_exit=DIR)`` makes the init, which is root
of the namespace, delete DIR whenever the payload ends: also when the caller
is killed (the init then gets SIGTERM instead of SIGKILL as its parent-death
signal). ``scratch_dir`` makes such directories and sweeps up the leftovers
of builds that died with their init (a power loss).

The mount helpers (``mount_staging``, ``prepare_chroot``, ``release_chroot``,
``chroot_run``, ``bind_mount``, ``unmount``) only work in code running inside
such a sandbox.
"""

import ctypes
import errno
import fcntl
import json
import os
import platform
import pwd
import select
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Literal, NoReturn, Protocol

from ocistrap import inroot, log
from ocistrap.errors import BuildError, OcistrapError

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
# Inner ids 1..65535 come from the subordinate ranges; 0 is the caller.
SUBORDINATE_IDS = 65535
DEFAULT_SUBID_START = 100000
SYSTEM_PATH = "/usr/bin:/usr/sbin:/bin:/sbin"
MAPPER_PATH = SYSTEM_PATH

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
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
CAP_SYS_CHROOT = 18
CAP_SYS_PTRACE = 19
# What a command run in the chroot loses for good (bounding set): leaving the chroot with a
# second chroot(), and reaching a process outside it through ptrace or /proc/PID/root.
CHROOT_DROPPED_CAPS = (CAP_SYS_CHROOT, CAP_SYS_PTRACE)
# Host environment that names a way out (sockets of agents, buses, displays, container
# engines); never passed into the sandbox.
HOST_ENV = frozenset({"SSH_AUTH_SOCK", "SSH_AGENT_PID", "GPG_AGENT_INFO", "DBUS_SESSION_BUS_ADDRESS",
                      "DBUS_SYSTEM_BUS_ADDRESS", "XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY",
                      "XAUTHORITY", "DOCKER_HOST", "CONTAINER_HOST", "PODMAN_HOST", "KRB5CCNAME",
                      "PULSE_SERVER", "SESSION_MANAGER", "TMUX", "STY"})

CAP_SETGID = 6
CAP_SETUID = 7
VFS_CAP_REVISION_MASK = 0xFF000000
VFS_CAP_REVISION_1 = 0x01000000

# statvfs flag -> mount flag, for the flags a bind remount must keep (the kernel
# refuses to drop a flag a more privileged namespace locked).
KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
              (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
              (os.ST_RELATIME, MS_RELATIME))

CHROOT_DIRS = ("dev", "proc", "sys")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"ptmx": "pts/ptmx", "fd": "/proc/self/fd", "stdin": "/proc/self/fd/0",
             "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"}
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ)
INIT_SIGNALS = {signal.SIGCHLD, *FORWARDED_SIGNALS}
# Bounds on the init's clean-up, so that it ends even if a process will not die
# (stuck in the kernel) or the disk is slow.
REAP_TIMEOUT = 10.0
REMOVE_TIMEOUT = 600.0

USERNS_SYSCTLS = ("kernel.unprivileged_userns_clone", "user.max_user_namespaces",
                  "kernel.apparmor_restrict_unprivileged_userns")


class ChrootCommandError(BuildError):
    """A command run by ``chroot_run(check=True)`` exited non-zero."""

    def __init__(self, message: str, *, returncode: int, stderr: bytes | None) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


# ---- id maps (pure) ----

@dataclass(frozen=True)
class SubIdRange:
    """One ``name:start:count`` line of /etc/subuid or /etc/subgid."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True)
class IdRange:
    """One line of a uid_map/gid_map: COUNT ids from INNER map to ids from OUTER."""

    inner: int
    outer: int
    count: int


@dataclass(frozen=True)
class IdMaps:
    """The uid and gid maps of a sandbox."""

    uid: tuple[IdRange, ...]
    gid: tuple[IdRange, ...]

    @classmethod
    def single(cls, uid: int, gid: int) -> "IdMaps":
        """Only the caller, as root: what an unprivileged process may map by itself."""
        return cls(uid=(IdRange(0, uid, 1),), gid=(IdRange(0, gid, 1),))

    @property
    def is_single(self) -> bool:
        return len(self.uid) == 1 and len(self.gid) == 1 and self.uid[0].count == 1 == self.gid[0].count


MODES = ("auto", "unshare", "single-uid")


class HostProbe(Protocol):
    """The facts about this host that decide the build mode (a fake one in tests)."""

    def identity(self) -> tuple[str, int, int]: ...
    def userns_problem(self) -> str | None: ...
    def subid_text(self, kind: Literal["uid", "gid"]) -> str: ...
    def mapper(self, name: str) -> tuple[str | None, str | None]: ...


class SystemProbe:
    """This machine and this caller, probed for real (the user namespace probe only once)."""

    def __init__(self) -> None:
        self._userns: tuple[str | None] | None = None

    def identity(self) -> tuple[str, int, int]:
        return current_user()

    def userns_problem(self) -> str | None:
        if self._userns is None:
            self._userns = (probe_userns(),)
        return self._userns[0]

    def subid_text(self, kind: Literal["uid", "gid"]) -> str:
        return _read_subid_file(SUBUID if kind == "uid" else SUBGID)

    def mapper(self, name: str) -> tuple[str | None, str | None]:
        return find_mapper(name)


@dataclass(frozen=True)
class ModeKind:
    """One way to build. PROBE returns the id maps it needs on a host or raises BuildError
    naming what is missing and the fix; RUNNER names bootstrap's runner for it. WORKS is
    the reason when auto takes it first, COST what a fallback to it gives up."""

    name: str
    probe: Callable[[HostProbe], IdMaps]
    runner: str
    records_owners: bool
    works: str = ""
    cost: str = ""

    def because(self, problem: str) -> str:
        return f"{problem}; {self.cost}" if self.cost else problem


def _require_userns(host: HostProbe) -> None:
    problem = host.userns_problem()
    if problem:
        raise BuildError(problem)


def _unshare_maps(host: HostProbe) -> IdMaps:
    _require_userns(host)
    maps = host_maps(host)
    _mappers(host.mapper)
    return maps


def _single_uid_maps(host: HostProbe) -> IdMaps:
    _require_userns(host)
    _, uid, gid = host.identity()
    return IdMaps.single(uid, gid)


UNSHARE = ModeKind("unshare", _unshare_maps, "namespace", records_owners=False,
                   works=f"{1 + SUBORDINATE_IDS} ids mapped from /etc/subuid and /etc/subgid")
SINGLE_UID = ModeKind("single-uid", _single_uid_maps, "namespace", records_owners=True,
                      cost="owners are recorded instead of applied")
# The kinds `--mode auto` tries, the fastest faithful one first.
AUTO_ORDER = (UNSHARE, SINGLE_UID)
KINDS = {k.name: k for k in AUTO_ORDER}


@dataclass(frozen=True)
class BuildMode:
    """How a build's sandbox runs, and why (for the log and `ocistrap doctor`): decided once
    by ``decide_mode`` and passed down to every architecture's bootstrap.

    FALLBACKS are the kinds auto may still turn to (probed already) when this one fails
    at run time; FELL_BACK_FROM names the kind it replaced.
    """

    kind: ModeKind
    maps: IdMaps
    reason: str
    fallbacks: tuple["BuildMode", ...] = ()
    fell_back_from: str | None = None

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def records_owners(self) -> bool:
        return self.kind.records_owners

    def fallback(self, problem: BuildError) -> "BuildMode":
        """The mode to build in now that PROBLEM stopped this one; raises PROBLEM when the
        mode was requested explicitly (no fallbacks)."""
        if not self.fallbacks:
            raise problem
        after, *rest = self.fallbacks
        return replace(after, reason=after.kind.because(problem.message), fallbacks=tuple(rest),
                       fell_back_from=self.name)

    def describe(self) -> str:
        """The verdict in one line."""
        if self.fell_back_from:
            return f"{self.name}, because {self.reason} (fix that to build in {self.fell_back_from} mode)"
        return f"{self.name}: {self.reason}"


def decide_mode(requested: str = "auto", host: HostProbe | None = None) -> BuildMode:
    """The build mode for REQUESTED (one of MODES) on HOST (this machine): the one decision.

    "auto" takes the first kind of AUTO_ORDER whose probe passes, saying why the ones
    before it could not; a requested kind raises what it is missing, naming the fix.
    """
    if requested not in MODES:
        raise BuildError(f"unknown mode {requested!r}", hint=f"use one of {', '.join(MODES)}")
    host = SystemProbe() if host is None else host
    if requested != "auto":
        kind = KINDS[requested]
        return BuildMode(kind, kind.probe(host), f"requested with --mode {requested}")
    usable: list[BuildMode] = []
    problems: list[BuildError] = []
    for kind in AUTO_ORDER:
        try:
            usable.append(BuildMode(kind, kind.probe(host), kind.works))
        except BuildError as e:
            problems.append(e)
    if not usable:
        raise problems[-1]
    first, *rest = usable
    if first.kind is AUTO_ORDER[0]:
        return replace(first, fallbacks=tuple(rest))
    return replace(first, reason=first.kind.because(problems[0].message), fallbacks=tuple(rest),
                   fell_back_from=AUTO_ORDER[0].name)


def _subid_lines(text: str) -> Iterable[tuple[str, SubIdRange]]:
    """Well-formed ``owner:start:count`` lines; newuidmap ignores the others too."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or not fields[1].isdigit() or not fields[2].isdigit():
            continue
        if int(fields[2]) > 0:
            yield fields[0], SubIdRange(int(fields[1]), int(fields[2]))


def parse_subid(text: str, *, user: str, uid: int) -> list[SubIdRange]:
    """USER's ranges in a subuid/subgid file, in file order (lines name USER or UID)."""
    return [r for owner, r in _subid_lines(text) if owner in (user, str(uid))]


def free_subid_start(text: str) -> int:
    """A start for a new range that overlaps no range of the file, to suggest to the user."""
    ends = [r.end for _, r in _subid_lines(text)]
    return max([DEFAULT_SUBID_START, *ends])


def add_range_advice(user: str, kind: Literal["uid", "gid"], start: int,
                     count: int = SUBORDINATE_IDS + 1) -> str:
    """The exact command (and line) that gives USER COUNT more subordinate ids."""
    return (f"run `sudo usermod --add-sub{kind}s {start}-{start + count - 1} {user}` "
            f"(or add the line `{user}:{start}:{count}` to /etc/sub{kind})")


def id_map(own_id: int, ranges: Sequence[SubIdRange], *, user: str,
           kind: Literal["uid", "gid"] = "uid", path: str | None = None,
           suggest_start: int = DEFAULT_SUBID_START) -> list[IdRange]:
    """Inner 0 -> OWN_ID, inner 1..65535 -> RANGES (read from PATH) concatenated in order.

    Fewer than 65535 subordinate ids is an error, never a smaller map: files of
    the packages would get the wrong owners.
    """
    path = path or f"/etc/sub{kind}"
    if not ranges:
        raise BuildError(f"{path} has no range for {user}; the sandbox needs "
                           f"{SUBORDINATE_IDS + 1} subordinate {kind}s",
                           hint=add_range_advice(user, kind, suggest_start))
    _check_disjoint(own_id, ranges, user=user, kind=kind, path=path)
    result = [IdRange(0, own_id, 1)]
    inner = 1
    for r in ranges:
        count = min(r.count, SUBORDINATE_IDS + 1 - inner)
        if count <= 0:
            break
        result.append(IdRange(inner, r.start, count))
        inner += count
    have = inner - 1
    if have < SUBORDINATE_IDS:
        raise BuildError(f"{path} gives {user} only {have} subordinate {kind}s; the sandbox "
                           f"needs {SUBORDINATE_IDS} (ids 1-{SUBORDINATE_IDS} of the image)",
                           hint=add_range_advice(user, kind, suggest_start))
    return result


def _check_disjoint(own_id: int, ranges: Sequence[SubIdRange], *, user: str, kind: str,
                    path: str) -> None:
    """The kernel rejects maps whose outer ids overlap; say which lines do."""
    spans = sorted([(own_id, own_id + 1, f"{user}'s own {kind} {own_id}")]
                   + [(r.start, r.end, f"{user}:{r.start}:{r.count}") for r in ranges])
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise BuildError(f"{path}: {second} overlaps {first}",
                               hint=f"fix or remove one of these ranges in {path}")


def inner_id(outer: int, ranges: Sequence[IdRange]) -> int | None:
    """The id inside the sandbox that host id OUTER shows as, or None if unmapped."""
    for r in ranges:
        if r.outer <= outer < r.outer + r.count:
            return r.inner + outer - r.outer
    return None


def inner_id_mapped(inner: int, map_text: str) -> bool:
    """Whether id INNER exists in the namespace whose /proc/PID/[ug]id_map is MAP_TEXT."""
    for line in map_text.splitlines():
        fields = line.split()
        if len(fields) == 3 and int(fields[0]) <= inner < int(fields[0]) + int(fields[2]):
            return True
    return False


def map_args(ranges: Sequence[IdRange]) -> list[str]:
    """The ``inner outer count ...`` arguments of newuidmap/newgidmap."""
    return [str(n) for r in ranges for n in (r.inner, r.outer, r.count)]


def _read_subid_file(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e.strerror}") from e


def current_user() -> tuple[str, int, int]:
    """Name, uid and gid of the caller; the name is the uid if there is no passwd entry."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return name, uid, os.getgid()


def load_maps(*, subuid: Path = SUBUID, subgid: Path = SUBGID, user: str | None = None,
              uid: int | None = None, gid: int | None = None) -> IdMaps:
    """The caller's (or USER's) id maps from the subordinate id files."""
    me, my_uid, my_gid = current_user()
    user = me if user is None else user
    uid = my_uid if uid is None else uid
    gid = my_gid if gid is None else gid
    return _maps(_read_subid_file(subuid), _read_subid_file(subgid), user=user, uid=uid, gid=gid,
                 paths=(subuid, subgid))


def host_maps(host: HostProbe) -> IdMaps:
    """The caller's id maps from HOST's subordinate id files (raises with advice)."""
    user, uid, gid = host.identity()
    return _maps(host.subid_text("uid"), host.subid_text("gid"), user=user, uid=uid, gid=gid,
                 paths=(SUBUID, SUBGID))


def _maps(uid_text: str, gid_text: str, *, user: str, uid: int, gid: int,
          paths: tuple[Path, Path]) -> IdMaps:
    return IdMaps(uid=tuple(subid_map(uid_text, kind="uid", user=user, uid=uid, own_id=uid,
                                      path=str(paths[0]))),
                  gid=tuple(subid_map(gid_text, kind="gid", user=user, uid=uid, own_id=gid,
                                      path=str(paths[1]))))


def subid_map(text: str, *, kind: Literal["uid", "gid"], user: str, uid: int, own_id: int,
              path: str | None = None) -> list[IdRange]:
    """The map for USER from the text of a subuid/subgid file (raises with advice)."""
    return id_map(own_id, parse_subid(text, user=user, uid=uid), user=user, kind=kind,
                  path=path, suggest_start=free_subid_start(text))


# ---- host checks (pure verdicts + probes) ----

def file_caps(xattr: bytes | None) -> frozenset[int]:
    """Permitted capabilities of a ``security.capability`` xattr (vfs_cap_data)."""
    if not xattr or len(xattr) < 12:
        return frozenset()
    magic = int.from_bytes(xattr[0:4], "little")
    words = [int.from_bytes(xattr[4:8], "little")]
    if magic & VFS_CAP_REVISION_MASK != VFS_CAP_REVISION_1 and len(xattr) >= 20:
        words.append(int.from_bytes(xattr[12:16], "little"))
    permitted = sum(w << (32 * i) for i, w in enumerate(words))
    return frozenset(bit for bit in range(64) if permitted >> bit & 1)


OVERFLOW_ID = 65534
INITIAL_USERNS_MAP = "0 0 4294967295"


def mapper_verdict(name: str, path: str | None, *, mode: int = 0, owner: int = -1,
                   caps: frozenset[int] = frozenset(), nested: bool = False) -> str | None:
    """What is wrong with newuidmap/newgidmap at PATH, or None if it can map ids.

    NESTED: the caller is itself in a user namespace, where an owner the
    namespace does not map shows as OVERFLOW_ID.
    """
    if path is None:
        return (f"{name} is not installed: run `sudo apt install uidmap` "
                f"(the package is called shadow-utils or shadow on other distributions)")
    if nested and owner == OVERFLOW_ID:
        return (f"ocistrap runs inside a user namespace that does not map root (a rootless "
                f"container?), so {name} cannot map subordinate ids here: run it outside, or give "
                "the container a range of ids")
    needed = CAP_SETUID if name == "newuidmap" else CAP_SETGID
    if owner == 0 and mode & 0o4000:
        return None
    if needed in caps:
        return None
    cap = "cap_setuid" if needed == CAP_SETUID else "cap_setgid"
    return (f"{path} is neither setuid root nor has the {cap} file capability: "
            f"run `sudo chmod u+s {path}` or `sudo setcap {cap}+ep {path}` "
            f"(or reinstall: `sudo apt install --reinstall uidmap`)")


def find_mapper(name: str) -> tuple[str | None, str | None]:
    """(path, problem) of newuidmap or newgidmap on this host."""
    search = os.pathsep.join(filter(None, [os.environ.get("PATH"), MAPPER_PATH]))
    path = shutil.which(name, path=search)
    if path is None:
        return None, mapper_verdict(name, None)
    st = os.stat(path)
    try:
        caps = file_caps(os.getxattr(path, "security.capability"))
    except OSError:
        caps = frozenset()
    return path, mapper_verdict(name, path, mode=st.st_mode, owner=st.st_uid, caps=caps,
                                nested=in_nested_userns())


def in_nested_userns() -> bool:
    """Whether this process runs in a user namespace other than the host's."""
    try:
        return " ".join(Path("/proc/self/uid_map").read_text().split()) != INITIAL_USERNS_MAP
    except OSError:
        return False


def _mappers(find: Callable[[str], tuple[str | None, str | None]] = find_mapper) -> tuple[str, str]:
    """The paths of newuidmap and newgidmap, or BuildError saying what is wrong with one."""
    paths = []
    for name in ("newuidmap", "newgidmap"):
        path, problem = find(name)
        if problem or path is None:
            raise BuildError(problem or f"{name} not found")
        paths.append(path)
    return paths[0], paths[1]


def read_sysctls(names: Sequence[str] = USERNS_SYSCTLS) -> dict[str, str]:
    """The values of NAMES that exist on this kernel."""
    values = {}
    for name in names:
        try:
            values[name] = Path("/proc/sys", *name.split(".")).read_text().strip()
        except OSError:
            continue
    return values


def userns_advice(err: int, sysctls: Mapping[str, str]) -> str:
    """Why creating a user namespace failed with ERR, and what to enable."""
    persist = "and persist it in /etc/sysctl.d/"
    if sysctls.get("kernel.unprivileged_userns_clone") == "0":
        return ("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0): "
                f"run `sudo sysctl -w kernel.unprivileged_userns_clone=1` {persist}")
    if sysctls.get("user.max_user_namespaces") == "0":
        return ("user namespaces are disabled (user.max_user_namespaces=0): "
                f"run `sudo sysctl -w user.max_user_namespaces=15000` {persist}")
    if sysctls.get("kernel.apparmor_restrict_unprivileged_userns") == "1":
        return ("AppArmor restricts unprivileged user namespaces "
                "(kernel.apparmor_restrict_unprivileged_userns=1, as on Ubuntu 24.04): run "
                f"`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` {persist}, "
                "or give the Python interpreter an AppArmor profile that allows `userns,`")
    if err == errno.ENOSPC:
        return ("the limit of user namespaces is reached (user.max_user_namespaces): "
                "raise it with `sudo sysctl -w user.max_user_namespaces=15000`")
    return (f"cannot create a user namespace: {os.strerror(err)}; the kernel may lack "
            "CONFIG_USER_NS, or a container runtime's seccomp policy forbids unshare "
            "(run ocistrap on the host, or give the container its own user namespaces)")


# ---- libc ----

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]


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


def sandbox_env(environ: Mapping[str, str]) -> dict[str, str]:
    """ENVIRON without what points at the host's sockets and sessions (HOST_ENV, and any
    *_SOCK or *_SOCKET)."""
    return {k: v for k, v in environ.items()
            if k not in HOST_ENV and not k.endswith(("_SOCK", "_SOCKET"))}


# ---- spawn: runs on the host ----

def _helper_argv(mode: str, *args: str) -> list[str]:
    """Start this module in an isolated interpreter that still finds this package."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    boot = (f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from ocistrap.sandbox import _helper_main; _helper_main(sys.argv[1:])")
    return [sys.executable, "-I", "-c", boot, mode, *args]


def _read_message(stream: IO[bytes]) -> dict[str, Any] | None:
    line = stream.readline()
    return json.loads(line) if line else None


def _raise_for(message: dict[str, Any], argv: Sequence[str]) -> NoReturn:
    err = message["errno"]
    step = message["step"]
    if step == "unshare":
        raise BuildError(userns_advice(err, read_sysctls()))
    if step == "exec":
        raise BuildError(f"cannot run {argv[0]} in the sandbox: {os.strerror(err)}")
    if err == errno.EPERM and read_sysctls().get("kernel.apparmor_restrict_unprivileged_userns") == "1":
        raise BuildError(userns_advice(err, read_sysctls()))
    raise BuildError(f"setting up the sandbox failed at {step}: {os.strerror(err)}")


class MapRefused(BuildError):
    """newuidmap or newgidmap would not write the maps."""


def _write_maps(pid: int, maps: IdMaps) -> None:
    if maps.is_single:
        _write_own_maps(pid, maps)
        return
    newuidmap, newgidmap = _mappers()
    for tool, ranges, kind in ((newuidmap, maps.uid, "uid"), (newgidmap, maps.gid, "gid")):
        result = subprocess.run([tool, str(pid), *map_args(ranges)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise MapRefused(f"{Path(tool).name} refused the {kind} map "
                               f"{' '.join(map_args(ranges))}: {result.stderr.strip()}",
                               hint=f"check the ranges for you in /etc/sub{kind}")


def _write_own_maps(pid: int, maps: IdMaps) -> None:
    """Map the caller alone, as any process may for its own child namespace (setgroups denied)."""
    proc = Path(f"/proc/{pid}")
    try:
        (proc / "setgroups").write_text("deny")
        (proc / "uid_map").write_text(" ".join(map_args(maps.uid)) + "\n")
        (proc / "gid_map").write_text(" ".join(map_args(maps.gid)) + "\n")
    except OSError as e:
        raise BuildError(f"cannot map your own uid and gid into the sandbox: {e.strerror}") from e


class RemovingPopen(subprocess.Popen):
    """A sandbox spawned with remove_on_exit: wait() also waits until its init has exited,
    which it does only after removing the directory."""

    init_gone: IO[bytes] | None = None  # read end of a pipe whose write end only the init holds

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        status = super().wait(timeout)
        if self.init_gone is not None:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.init_gone], [], [], remaining)[0]:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.init_gone.close()
            self.init_gone = None
        return status


def spawn(argv: Sequence[str], *, stdin: Any = subprocess.DEVNULL, stdout: Any = None, stderr: Any = None,
          pass_fds: Sequence[int] = (), env: Mapping[str, str] | None = None,
          cwd: str | Path | None = None, maps: IdMaps | None = None,
          remove_on_exit: Path | None = None) -> subprocess.Popen:
    """Run ARGV as uid 0 in new user, mount, PID, IPC, UTS and network namespaces, in a
    session of its own (no controlling terminal), with ENV (default: this process's) less
    what names host sockets (sandbox_env) and no descriptors but PASS_FDS and stdio.

    Returns once ARGV is executing (or raises BuildError). stdin (default: /dev/null),
    stdout and stderr take what subprocess.Popen takes; the returned Popen's returncode is ARGV's
    exit status (128+N if a signal N killed it). terminate() reaches ARGV.
    The sandbox is killed when the thread that called spawn() exits.

    With REMOVE_ON_EXIT, the sandbox deletes that directory once ARGV has ended,
    however it ended (exit, terminate(), kill(), death of the caller): the init
    kills what is left in the namespace, detaches the mounts below the directory
    and removes it with `rm -rf --one-file-system`. wait() returns after that.
    Until then the sandbox holds a shared flock(2) on the directory.
    """
    maps = load_maps() if maps is None else maps
    if not maps.is_single:
        _mappers()
    remove = None if remove_on_exit is None else Path(remove_on_exit).resolve()
    keep, init_gone = _removal_fds(remove) if remove is not None else ((), None)
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    helper_fds = (up_w, down_r, *keep)
    try:
        proc = (subprocess.Popen if init_gone is None else RemovingPopen)(
            _helper_argv("run", str(os.getpid()), str(up_w), str(down_r)),
            stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd, pass_fds=(*helper_fds, *pass_fds))
    except BaseException:
        _close_all((up_r, down_w, *helper_fds, *([] if init_gone is None else [init_gone])))
        raise
    _close_all(helper_fds)
    if isinstance(proc, RemovingPopen):
        proc.init_gone = os.fdopen(init_gone, "rb", buffering=0)
    request = {"argv": list(argv), "env": sandbox_env(os.environ if env is None else env),
               "fds": list(pass_fds), "keep": list(keep),
               "remove": None if remove is None else str(remove), "single": maps.is_single}
    with os.fdopen(up_r, "rb") as up, os.fdopen(down_w, "wb") as down:
        try:
            _handshake(proc, up, down, argv, request, maps)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return proc


def _removal_fds(path: Path) -> tuple[tuple[int, int], int]:
    """((lock, init_done), init_gone): a shared flock on PATH and a pipe for the init to hold."""
    lock = _open_dir(path)
    _try_flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    init_gone, init_done = os.pipe()
    return (lock, init_done), init_gone


def _handshake(proc: subprocess.Popen, up: IO[bytes], down: IO[bytes], argv: Sequence[str],
               request: dict[str, Any], maps: IdMaps) -> None:
    message = _read_message(up)
    if message is None:
        raise BuildError(f"the sandbox helper exited early with status {proc.wait()}")
    if "errno" in message:
        _raise_for(message, argv)
    _write_maps(proc.pid, maps)
    down.write(json.dumps(request).encode())
    down.close()
    message = _read_message(up)
    if message is not None:
        _raise_for(message, argv)


def probe_userns() -> str | None:
    """None if this host lets the caller create user and mount namespaces, else what to do."""
    result = subprocess.run(_helper_argv("probe"), capture_output=True)
    message = json.loads(result.stdout or b"null")
    if message is None and result.returncode == 0:
        return None
    if message is None:
        return f"the user namespace probe failed: {result.stderr.decode(errors='replace').strip()}"
    return userns_advice(message["errno"], read_sysctls())


def remove_tree(path: Path) -> None:
    """Delete a tree built in a sandbox: its files belong to subordinate ids the caller
    cannot remove on the host."""
    if not path.exists() and not path.is_symlink():
        return
    proc = spawn(["rm", "-rf", "--one-file-system", "--", str(path)])
    if proc.wait() != 0:
        raise BuildError(f"cannot remove {path} (rm exited with status {proc.returncode})")


@contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory PREFIX* below PARENT for a sandbox to build in (pass it to
    ``spawn`` as remove_on_exit); removed on the way out if it is still there.

    First it removes the PREFIX* siblings nobody holds: leftovers of builds whose
    sandbox died before it could clean up. This process and the sandbox hold a
    shared flock on the directory until it is gone; sweeping and creating happen
    under an exclusive flock on PARENT, so a sweep never takes a directory in use.
    Where flock(2) does not work (some network filesystems) nothing is swept.
    """
    guard = _open_dir(parent, follow=True)
    try:
        if _try_flock(guard, fcntl.LOCK_EX):
            _sweep(parent, prefix)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        try:
            held = _open_dir(path)
        except BaseException:
            path.rmdir()
            raise
        _try_flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(guard)
    try:
        yield path
    finally:
        try:
            _discard(path)
        finally:
            os.close(held)


def _open_dir(path: Path, *, follow: bool = False) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(path, flags)
    except OSError as e:
        raise BuildError(f"cannot open the directory {path}: {e.strerror}") from e


def _try_flock(fd: int, operation: int) -> bool:
    """Whether OPERATION got the lock (not if another process holds it, nor if the
    filesystem cannot lock)."""
    try:
        fcntl.flock(fd, operation)
    except OSError:
        return False
    return True


def _sweep(parent: Path, prefix: str) -> None:
    for path in sorted(parent.iterdir()):
        if not path.name.startswith(prefix) or path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = _open_dir(path)
        except BuildError:
            continue
        try:
            if _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                log.get().info(f"removing {path}, left behind by an interrupted build")
                _discard(path)
        except (OSError, BuildError) as e:
            print(f"ocistrap: warning: cannot remove {path}: {e}", file=sys.stderr)
        finally:
            os.close(fd)


def _discard(path: Path) -> None:
    """Remove PATH as the caller if it can, else from a sandbox (subordinate owners)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except PermissionError:
        remove_tree(path)


# ---- the helper: runs in the namespaces ----

def _send(fd: int, **message: Any) -> None:
    os.write(fd, json.dumps(message).encode() + b"\n")


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _helper_main(args: list[str]) -> None:
    if args[0] == "probe":
        _probe()
    if args[0] in NESTED:
        _nested_main(args[0], args[1], args[2:])
    parent, up, down = (int(a) for a in args[1:])
    _helper_run(parent, up, down)


def _probe() -> None:
    try:
        unshare(CLONE_NEWUSER | CLONE_NEWNS)
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        print(json.dumps({"errno": e.errno}))
        os._exit(1)
    os._exit(0)


def _helper_run(parent: int, up: int, down: int) -> None:
    """Unshare, let the parent map ids, become root, fork the init; exit as it does."""
    die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.set_inheritable(up, False)
    try:
        unshare(NAMESPACES)
    except OSError as e:
        _send(up, step="unshare", errno=e.errno)
        os._exit(1)
    _send(up, ready=True)
    data = _read_all(down)
    if not data:
        os._exit(1)
    request = json.loads(data)
    for fd in request["keep"]:
        os.set_inheritable(fd, False)
    step = "setting ids"
    try:
        if not request["single"]:
            os.setgroups([])
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        step = "making mounts private"
        mount(None, "/", None, MS_REC | MS_PRIVATE)
    except OSError as e:
        _send(up, step=step, errno=e.errno)
        os._exit(1)
    lifeline_r, lifeline_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(lifeline_w)
        _init(request, up, lifeline_r)
    os.close(lifeline_r)
    os.close(up)
    _close_all([*request["fds"], *request["keep"]])
    _forward_signals(init)
    _, status = os.waitpid(init, 0)
    os._exit(_exit_code(status))


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _forward_signals(pid: int) -> None:
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)


def _close_all(fds: Sequence[int]) -> None:
    """Drop this process's copies of the payload's pipes: the reader outside must see
    end-of-file as soon as the payload closes its end."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _init(request: dict[str, Any], up: int, lifeline: int) -> NoReturn:
    """PID 1 of the new PID namespace: run the payload, reap orphans, exit as the payload did.

    Signals are taken synchronously (sigwaitinfo), so nothing interrupts the
    clean-up. With request["remove"] the parent-death signal is SIGTERM: a
    SIGTERM after the helper's lifeline closed means the caller is gone, and the
    init stops waiting for the payload. Either way it then kills the rest of the
    namespace and deletes that directory before it exits.
    """
    try:
        remove = request["remove"]
        make_undumpable()
        signal.pthread_sigmask(signal.SIG_BLOCK, INIT_SIGNALS)
        die_with_parent(signal.SIGKILL if remove is None else signal.SIGTERM)
        code = None
        if not _closed(lifeline):
            payload = os.fork()
            if payload == 0:
                _exec_payload(request["argv"], request["env"], up, lifeline)
            os.close(up)
            _close_all(request["fds"])
            code = _supervise(payload, lifeline)
        if remove is not None:
            _kill_namespace(time.monotonic() + REAP_TIMEOUT)
            _remove(remove)
        os._exit(1 if code is None else code)
    finally:
        os._exit(1)


def _closed(lifeline: int) -> bool:
    """Whether the helper has died: its end of the lifeline pipe is then closed."""
    return bool(select.select([lifeline], [], [], 0)[0])


def _supervise(payload: int, lifeline: int) -> int | None:
    """Reap children until the payload exits and return its exit code, forwarding SIGTERM
    and SIGHUP to it; None if the helper died first."""
    while True:
        signum = signal.sigwaitinfo(INIT_SIGNALS).si_signo
        if signum != signal.SIGCHLD:
            if _closed(lifeline):
                return None
            try:
                os.kill(payload, signum)
            except ProcessLookupError:
                pass
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid == payload:
                return _exit_code(status)


def _kill_namespace(deadline: float) -> None:
    """As PID 1: SIGKILL every other process of the namespace and reap it (until DEADLINE)."""
    while time.monotonic() < deadline:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return
        signal.sigtimedwait({signal.SIGCHLD}, 0.1)
    print("ocistrap: processes of the sandbox did not die", file=sys.stderr)


def _remove(path: str) -> None:
    """Delete PATH from inside the namespace: detach what is mounted in it, then remove
    the tree without crossing into another filesystem."""
    _detach_mounts(path)
    try:
        result = subprocess.run(["rm", "-rf", "--one-file-system", "--", path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                env={"PATH": SYSTEM_PATH}, timeout=REMOVE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"ocistrap: cannot remove {path}: {e}", file=sys.stderr)
        return
    if result.returncode != 0:
        print(f"ocistrap: cannot remove {path} (rm exited with status {result.returncode})",
              file=sys.stderr)


def _detach_mounts(path: str) -> None:
    for _ in range(3):
        points = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
        inside = mounts_below(path, points) + ([path] if path in points else [])
        if not inside:
            return
        for point in inside:
            try:
                umount(point, MNT_DETACH)
            except OSError:
                continue


def _exec_payload(argv: list[str], env: dict[str, str], up: int, lifeline: int) -> None:
    os.close(lifeline)
    for signum in RESET_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        os.setsid()
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        _send(up, step="exec", errno=e.errno)
        os._exit(127 if e.errno == errno.ENOENT else 126)


# ---- mounts: run as root inside the sandbox ----

def mount_staging(path: Path, *, tmpfs: bool = True) -> None:
    """Give the staging root its own tmpfs (memory, gone with the sandbox), or just make
    sure the on-disk directory exists when building in a --workdir."""
    path.mkdir(parents=True, exist_ok=True)
    if tmpfs:
        _mount_or_fail("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")


def fork_with_channel(child: Callable[[socket.socket], NoReturn],
                      kind: int = socket.SOCK_STREAM) -> tuple[int, socket.socket]:
    """Fork a process that runs CHILD with its end of a new socket pair (it must not return);
    return its pid and this process's end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    pid = os.fork()
    if pid == 0:
        ours.close()
        child(theirs)
    theirs.close()
    return pid, ours


def mount_proc(target: Path) -> None:
    """A proc file system of the current PID namespace at TARGET."""
    _mount_or_fail("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def bind_mount(source: Path, target: Path, *, readonly: bool = False) -> None:
    """Make SOURCE visible at TARGET (read-only if asked)."""
    _mount_or_fail(source, target, None, MS_BIND | MS_REC)
    if readonly:
        try:
            _remount_readonly(target)
        except OSError as e:
            umount(target, MNT_DETACH)
            raise BuildError(f"cannot make {target} read-only: {e.strerror}") from e


def unmount(target: Path) -> None:
    """Detach the mount at TARGET (and everything below it)."""
    try:
        umount(target, MNT_DETACH)
    except OSError as e:
        raise BuildError(f"cannot unmount {target}: {e.strerror}") from e


def _mount_or_fail(source: str | Path | None, target: Path, fstype: str | None, flags: int,
                   data: str | None = None) -> None:
    try:
        mount(source, target, fstype, flags, data)
    except OSError as e:
        raise BuildError(f"cannot mount {fstype or source} on {target}: {e.strerror}",
                           hint="mounts only work inside the sandbox (sandbox.spawn)") from e


def _remount_readonly(target: Path) -> None:
    kept = os.statvfs(target).f_flag
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for st_flag, ms_flag in KEPT_FLAGS:
        if kept & st_flag:
            flags |= ms_flag
    mount(None, target, None, flags)


def prepare_chroot(root: Path) -> None:
    """Give ROOT the /dev, /proc and /sys that maintainer scripts expect.

    Device nodes cannot be created in a user namespace, so the host's are
    bind-mounted onto empty files. /sys is left empty if the kernel refuses
    a read-only bind of it.
    """
    root = root.resolve()
    try:
        _prepare(root)
    except (OSError, BuildError) as e:
        release_chroot(root)
        if isinstance(e, BuildError):
            raise
        raise BuildError(f"cannot prepare {root} for chroot: {e}") from e


def _prepare(root: Path) -> None:
    """Every path in ROOT is resolved inside it (ocistrap.inroot): its symlinks are the packages'."""
    with inroot.Tree(root) as tree:
        for d in CHROOT_DIRS:
            _real_dir(tree, d, 0o755)
        for name in DEVICES:
            if not tree.exists(f"dev/{name}"):
                tree.write(f"dev/{name}", b"")
            _mount_or_fail(f"/dev/{name}", _point(tree, f"dev/{name}"), None, MS_BIND)
        _real_dir(tree, "dev/pts", 0o755)
        tty_group = ",gid=5" if inner_id_mapped(5, Path("/proc/self/gid_map").read_text()) else ""
        _mount_or_fail("devpts", _point(tree, "dev/pts"), "devpts", MS_NOSUID | MS_NOEXEC,
                       "newinstance,ptmxmode=0666,mode=0620" + tty_group)
        for name, target in DEV_LINKS.items():
            link = tree.lstat(f"dev/{name}")
            if link is not None and (stat.S_ISLNK(link.st_mode) or (stat.S_ISREG(link.st_mode) and link.st_size == 0)):
                tree.unlink(f"dev/{name}")
            if not tree.exists(f"dev/{name}"):
                tree.symlink(target, f"dev/{name}")
        _real_dir(tree, "dev/shm", 0o1777)
        _mount_or_fail("tmpfs", _point(tree, "dev/shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        _mount_or_fail("proc", _point(tree, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _bind_sys(_point(tree, "sys"))


def _real_dir(tree: inroot.Tree, rel: str, mode: int) -> None:
    """REL made if missing; refused if a package made it a symlink (release_chroot finds the
    mounts by these paths)."""
    st = tree.lstat(rel)
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise BuildError(f"/{rel} in {tree.root} is a symlink; refusing to mount on it")
    if st is None:
        tree.mkdir(rel, mode)


def _point(tree: inroot.Tree, rel: str) -> Path:
    return Path(tree.mount_point(rel))


def _bind_sys(target: Path) -> None:
    try:
        mount("/sys", target, None, MS_BIND | MS_REC)
    except OSError as e:
        print(f"ocistrap: leaving {target} empty: the kernel refused to bind /sys ({e.strerror})",
              file=sys.stderr)
        return
    try:
        _remount_readonly(target)
    except OSError as e:
        umount(target, MNT_DETACH)
        print(f"ocistrap: leaving {target} empty: cannot make a /sys bind read-only "
              f"({e.strerror})", file=sys.stderr)


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[str]:
    """The mount points listed in /proc/self/mountinfo, in its order."""
    return [_unescape_mountinfo(line.split()[4]) for line in text.splitlines() if line.strip()]


def mounts_below(root: str, mount_points: Iterable[str]) -> list[str]:
    """Mount points strictly inside ROOT, deepest (and latest) first."""
    prefix = root.rstrip("/") + "/"
    inside = [m for m in mount_points if m.startswith(prefix)]
    order = {m: i for i, m in enumerate(inside)}
    return sorted(set(inside), key=lambda m: (m.count("/"), order[m]), reverse=True)


def _chroot_mounts(root: Path) -> list[str]:
    """Mounts of ROOT's dev, proc and sys (and anything below them), deepest first."""
    points = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return [m for d in CHROOT_DIRS for m in [str(root / d)] + mounts_below(str(root / d), points)
            if m in points]


def release_chroot(root: Path) -> None:
    """Undo ``prepare_chroot``: unmount ROOT's dev, proc and sys and remove the placeholders,
    so a walk of the tree afterwards sees no host content and no /dev entries.

    Mounts elsewhere below ROOT (``bind_mount``) stay; ``unmount`` them.
    """
    root = root.resolve()
    for _ in range(3):
        remaining = _chroot_mounts(root)
        if not remaining:
            break
        for mount_point in sorted(remaining, key=lambda m: m.count("/"), reverse=True):
            try:
                umount(mount_point, MNT_DETACH)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise BuildError(f"cannot unmount {mount_point}: {e.strerror}") from e
    if remaining := _chroot_mounts(root):
        raise BuildError(f"still mounted in {root}: {', '.join(remaining)}")
    _remove_placeholders(root)


def _remove_placeholders(root: Path) -> None:
    with inroot.Tree(root) as tree:
        for name in DEVICES:
            node = tree.lstat(f"dev/{name}")
            if node is not None and stat.S_ISREG(node.st_mode) and node.st_size == 0:
                tree.unlink(f"dev/{name}")
        for name, target in DEV_LINKS.items():
            link = tree.lstat(f"dev/{name}")
            if link is not None and stat.S_ISLNK(link.st_mode) and tree.readlink(f"dev/{name}") == target:
                tree.unlink(f"dev/{name}")
        for name in ("pts", "shm"):
            try:
                tree.rmdir(f"dev/{name}")
            except OSError:
                continue


def chroot_run(root: Path, argv: Sequence[str], *, env: Mapping[str, str], check: bool = True,
               input: bytes | None = None, stdout: Any = None,
               stderr: Any = None, pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess:
    """Run ARGV chrooted into ROOT with working directory / and exactly ENV (and the descriptors
    PASS_FDS open); stdin is INPUT, or /dev/null.

    ARGV[0] is looked up in ENV's PATH inside ROOT. ARGV runs as PID 1 of a PID namespace of
    its own, with a /proc that shows only its processes, and without CAP_SYS_CHROOT and
    CAP_SYS_PTRACE: it cannot leave the chroot, reach a process outside it, or leave one
    behind (all of the namespace dies with it). ROOT must have been prepared (prepare_chroot).
    """
    try:
        result = subprocess.run(_helper_argv("chroot", str(root), *argv), env=dict(env), input=input,
                                stdin=subprocess.DEVNULL if input is None else None, stdout=stdout,
                                stderr=stderr, pass_fds=tuple(pass_fds))
    except OSError as e:
        raise BuildError(f"cannot run {argv[0]} in {root}: {e.strerror}") from e
    if check and result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip() if isinstance(result.stderr, bytes) else ""
        raise ChrootCommandError(f"`{shlex.join(argv)}` failed in {root} with exit status "
                                 f"{result.returncode}" + (f": {detail}" if detail else ""),
                                 returncode=result.returncode, stderr=result.stderr)
    return result


def host_view_run(root: Path, argv: Sequence[str], *, env: Mapping[str, str],
                  stdout: Any = None, stderr: Any = None) -> subprocess.CompletedProcess:
    """Run ARGV, a host program that works on the tree ROOT from outside (the host's dpkg with
    --root=/target), where ROOT is /target and ROOT's etc and root are /etc and /root, and of the
    host only its system directories (HOST_SYSTEM) are there, read-only, with /dev/null, a
    tmpfs /tmp and a /proc (also ROOT's) of a PID namespace of its own.

    The program follows the tree's symlinks as it pleases (dpkg does): whatever they point
    at, it finds the tree, the host's system files read-only, or nothing. What it runs
    chrooted (preinst scripts) lacks CAP_SYS_PTRACE, and all of it dies with ARGV.
    """
    if _PIVOT_ROOT.get(platform.machine()) is None:
        raise BuildError(f"cannot confine a host program on {platform.machine()}: "
                           "the pivot_root system call's number is unknown here")
    try:
        return subprocess.run(_helper_argv("view", str(root), *argv), env=dict(env),
                              stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    except OSError as e:
        raise BuildError(f"cannot run {argv[0]} on {root}: {e.strerror}") from e


def _nested_main(kind: str, root: str, argv: list[str]) -> NoReturn:
    """chroot_run's and host_view_run's helper: a new PID and mount namespace whose first
    process enters ROOT (or the view of it) and becomes ARGV."""
    make_undumpable()
    try:
        unshare(CLONE_NEWPID | CLONE_NEWNS)
    except OSError as e:
        print(f"ocistrap: cannot run {argv[0]} in {root}: {e.strerror}", file=sys.stderr)
        os._exit(126)
    child = os.fork()
    if child == 0:
        try:
            die_with_parent()
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            NESTED[kind](root)
            os.execvp(argv[0], argv)
        except OSError as e:
            print(f"ocistrap: cannot run {argv[0]} in {root}: {e.strerror}", file=sys.stderr)
            os._exit(127 if e.errno == errno.ENOENT else 126)
        except OcistrapError as e:
            print(f"ocistrap: cannot run {argv[0]} in {root}: {e}", file=sys.stderr)
        os._exit(126)
    _, status = os.waitpid(child, 0)
    os._exit(_exit_code(status))


def _enter_chroot(root: str) -> None:
    mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chroot(root)
    os.chdir("/")
    drop_bounding(CHROOT_DROPPED_CAPS)


HOST_SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
VIEW = "/tmp"  # any directory of the host: the view is a tmpfs mounted on it, then made /
VIEW_TARGET = "/target"
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "loongarch64": 41, "ppc64le": 203,
               "ppc64": 203, "s390x": 217, "i686": 217, "i386": 217, "armv7l": 218}


def _enter_view(root: str) -> None:
    """Build host_view_run's view on a tmpfs and make it / (pivot_root: no way back to the
    host's / remains, even for a process that leaves a chroot)."""
    with inroot.Tree(root) as tree:
        sources = {"target": root, "etc": tree.mount_point("etc"), "root": tree.mount_point("root")}
    held = {name: os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for name, path in sources.items()}
    mount("tmpfs", VIEW, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    for name in HOST_SYSTEM:
        host, here = f"/{name}", os.path.join(VIEW, name)
        if os.path.islink(host):
            os.symlink(os.readlink(host), here)
        elif os.path.isdir(host):
            os.mkdir(here)
            mount(host, here, None, MS_BIND | MS_REC)
            _remount_readonly(Path(here))
    for name, fd in held.items():
        here = os.path.join(VIEW, name)
        os.mkdir(here)
        mount(f"/proc/self/fd/{fd}", here, None, MS_BIND | MS_REC)
        if name != "target":
            _remount_readonly(Path(here))
        os.close(fd)
    for name, mode in (("tmp", 0o1777), ("dev", 0o755), ("proc", 0o555)):
        os.mkdir(os.path.join(VIEW, name))
        os.chmod(os.path.join(VIEW, name), mode)
    os.close(os.open(os.path.join(VIEW, "dev/null"), os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    mount("/dev/null", os.path.join(VIEW, "dev/null"), None, MS_BIND)
    for proc in ("proc", "target/proc"):
        mount("proc", os.path.join(VIEW, proc), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(VIEW)
    ok_or_raise(libc.syscall(_PIVOT_ROOT[platform.machine()], b".", b"."))
    umount(".", MNT_DETACH)
    os.chdir("/")
    drop_bounding((CAP_SYS_PTRACE,))


NESTED: dict[str, Callable[[str], None]] = {"chroot": _enter_chroot, "view": _enter_view}
