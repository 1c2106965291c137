"""The build mode, decided once: which sandbox kind runs the bootstrap, why, and its fallback."""

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Protocol

from ocistrap.errors import BuildError
from ocistrap.rootfs import hostdpkg
from ocistrap.rootfs.idmaps import (
    SUBGID,
    SUBORDINATE_IDS,
    SUBUID,
    IdMaps,
    _mappers,
    _maps,
    _read_subid_file,
    current_user,
    find_mapper,
)
from ocistrap.rootfs.spawn import helper_argv, read_sysctls, userns_advice

MODES = ("auto", "unshare", "single-uid", "chrootless")


class HostProbe(Protocol):
    """The facts about this host that decide the build mode (a fake one in tests)."""

    def identity(self) -> tuple[str, int, int]: ...
    def userns_problem(self) -> str | None: ...
    def subid_text(self, kind: Literal["uid", "gid"]) -> str: ...
    def mapper(self, name: str) -> tuple[str | None, str | None]: ...
    def chrootless_problem(self) -> str | None: ...


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

    def chrootless_problem(self) -> str | None:
        return recording_problem(_read(SECCOMP_ACTIONS), _read(PTRACE_SCOPE)) or hostdpkg.chrootless_problem()


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


def _chrootless_maps(host: HostProbe) -> IdMaps:
    problem = host.chrootless_problem()
    if problem:
        raise BuildError(f"chrootless mode cannot build here: {problem}")
    _, uid, gid = host.identity()
    return IdMaps.single(uid, gid)


UNSHARE = ModeKind("unshare", _unshare_maps, "namespace", records_owners=False,
                   works=f"{1 + SUBORDINATE_IDS} ids mapped from /etc/subuid and /etc/subgid")
SINGLE_UID = ModeKind("single-uid", _single_uid_maps, "namespace", records_owners=True,
                      cost="owners are recorded instead of applied")

CHROOTLESS = ModeKind("chrootless", _chrootless_maps, "chrootless", records_owners=True,
                      works="no user namespace is needed",
                      cost="the host's dpkg installs from outside the tree and maintainer scripts run on "
                           "this host as you (no chroot); owners are recorded")

# The kinds `--mode auto` tries, the fastest faithful one first.
AUTO_ORDER = (UNSHARE, SINGLE_UID, CHROOTLESS)
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
    before it could not (chrootless only when no user namespace can be made); a requested
    kind raises what it is missing, naming the fix.
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
        first_problem, last_problem = problems[0], problems[-1]
        if last_problem.message == first_problem.message:
            raise first_problem
        raise BuildError(f"{first_problem.message}; {last_problem.message}", hint=first_problem.hint)
    first, *rest = usable
    # a failure at run time inside a namespace never turns into running maintainer scripts on the host
    rest = [m for m in rest if m.kind is not CHROOTLESS]
    if first.kind is AUTO_ORDER[0]:
        return replace(first, fallbacks=tuple(rest))
    return replace(first, reason=first.kind.because(problems[0].message), fallbacks=tuple(rest),
                   fell_back_from=AUTO_ORDER[0].name)


def host_maps(host: HostProbe) -> IdMaps:
    """The caller's id maps from HOST's subordinate id files (raises with advice)."""
    user, uid, gid = host.identity()
    return _maps(host.subid_text("uid"), host.subid_text("gid"), user=user, uid=uid, gid=gid,
                 paths=(SUBUID, SUBGID))


def probe_userns() -> str | None:
    """None if this host lets the caller create user and mount namespaces, else what to do."""
    result = subprocess.run(helper_argv("probe"), capture_output=True)
    message = json.loads(result.stdout or b"null")
    if message is None and result.returncode == 0:
        return None
    if message is None:
        return f"the user namespace probe failed: {result.stderr.decode(errors='replace').strip()}"
    return userns_advice(message["errno"], read_sysctls())


SECCOMP_ACTIONS = Path("/proc/sys/kernel/seccomp/actions_avail")
PTRACE_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def recording_problem(seccomp_actions: str | None, ptrace_scope: str | None) -> str | None:
    """Why owners cannot be recorded without a user namespace (None: they can), from the kernel's
    seccomp actions and Yama's ptrace_scope (None: no Yama). The recorder answers chown and
    mknod through seccomp user notification and reads the callers' memory, which Yama allows
    an unprivileged process only for its descendants (scope 1) or not at all (2, 3)."""
    if "user_notif" not in (seccomp_actions or "").split():
        return "this kernel lacks seccomp user notification (Linux 5.5 or later)"
    scope = (ptrace_scope or "0").strip()
    if scope == "2":
        return ("Yama's kernel.yama.ptrace_scope is 2 (admin-only attach), so the owner recorder cannot read "
                "dpkg's calls: `sudo sysctl kernel.yama.ptrace_scope=1`")
    if scope == "3":
        return ("Yama's kernel.yama.ptrace_scope is 3 (no attach), so the owner recorder cannot read dpkg's "
                "calls; that holds until the next reboot with a lower value")
    return None
