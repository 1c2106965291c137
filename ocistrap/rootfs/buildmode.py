"""The build mode, decided once: which sandbox kind runs the bootstrap, why, and its fallback."""

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from ocistrap.errors import BuildError
from ocistrap.rootfs import detect, hostdpkg
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
from ocistrap.rootfs.spawn import helper_argv, read_sysctls

MODES = ("auto", "unshare", "root", "single-uid", "chrootless")


class HostProbe(Protocol):
    """The facts about this host that decide the build mode (a fake one in tests)."""

    def identity(self) -> tuple[str, int, int]: ...
    def userns_problem(self) -> str | None: ...
    def own_proc_problem(self) -> str | None: ...
    def subid_text(self, kind: Literal["uid", "gid"]) -> str: ...
    def mapper(self, name: str) -> tuple[str | None, str | None]: ...
    def capabilities(self) -> int: ...
    def id_map(self, kind: Literal["uid", "gid"]) -> str: ...
    def chrootless_problem(self) -> str | None: ...


class SystemProbe:
    """This machine and this caller, probed for real (the user namespace probe only once)."""

    def __init__(self) -> None:
        self._userns: detect.UsernsProbe | None = None

    def identity(self) -> tuple[str, int, int]:
        return current_user()

    def _probe(self) -> detect.UsernsProbe:
        if self._userns is None:
            self._userns = userns_probe()
        return self._userns

    def userns_problem(self) -> str | None:
        return detect.userns_verdict(self._probe())

    def own_proc_problem(self) -> str | None:
        return detect.own_proc_verdict(self._probe())

    def subid_text(self, kind: Literal["uid", "gid"]) -> str:
        return _read_subid_file(SUBUID if kind == "uid" else SUBGID)

    def mapper(self, name: str) -> tuple[str | None, str | None]:
        return find_mapper(name)

    def capabilities(self) -> int:
        return detect.effective_caps(detect.read_proc("status"))

    def id_map(self, kind: Literal["uid", "gid"]) -> str:
        return detect.read_proc(f"{kind}_map")

    def chrootless_problem(self) -> str | None:
        return (detect.recording_problem(detect.read_sysctl(detect.SECCOMP_ACTIONS),
                                         detect.read_sysctl(detect.PTRACE_SCOPE))
                or hostdpkg.chrootless_problem())


@dataclass(frozen=True)
class ModeKind:
    """One way to build. PROBE returns the id maps it needs on a host or raises BuildError
    naming what is missing and the fix; RUNNER names bootstrap's runner for it. WORKS is
    the reason when auto takes it first (WORKS_AS_ROOT, if set, for root), COST what a fallback to it gives up."""

    name: str
    probe: Callable[[HostProbe], IdMaps]
    runner: str
    records_owners: bool
    works: str = ""
    cost: str = ""
    namespace: bool = True
    works_as_root: str = ""

    def works_for(self, uid: int) -> str:
        return self.works_as_root if uid == 0 and self.works_as_root else self.works

    def because(self, problem: str) -> str:
        """The reason for falling back to this kind: PROBLEM, and what this kind gives up."""
        return f"{problem}; {self.name} mode: {self.cost}" if self.cost else problem


def _require_userns(host: HostProbe) -> None:
    problem = host.userns_problem()
    if problem:
        raise BuildError(problem)


def _unshare_maps(host: HostProbe) -> IdMaps:
    _require_userns(host)
    if host.identity()[1] == 0:
        return detect.root_maps(host.id_map("uid"), host.id_map("gid"))
    maps = host_maps(host)
    _mappers(host.mapper)
    return maps


def _single_uid_maps(host: HostProbe) -> IdMaps:
    _require_userns(host)
    if problem := host.own_proc_problem():
        raise BuildError(problem)
    _, uid, gid = host.identity()
    return IdMaps.single(uid, gid)


def _root_maps(host: HostProbe) -> IdMaps:
    _, uid, _ = host.identity()
    problem = detect.root_problem(uid, host.capabilities(), host.id_map("uid"), host.id_map("gid"))
    if problem:
        raise BuildError(problem)
    return detect.root_maps(host.id_map("uid"), host.id_map("gid"))


def chrootless_problem(host: HostProbe) -> str | None:
    """What stops chrootless mode on HOST (None if nothing): never for root."""
    return hostdpkg.NOT_AS_ROOT if host.identity()[1] == 0 else host.chrootless_problem()


def _chrootless_maps(host: HostProbe) -> IdMaps:
    _, uid, gid = host.identity()
    problem = chrootless_problem(host)
    if problem:
        raise BuildError(f"chrootless mode cannot build here: {problem}")
    return IdMaps.single(uid, gid)


UNSHARE = ModeKind("unshare", _unshare_maps, "namespace", records_owners=False,
                   works=f"{1 + SUBORDINATE_IDS} ids mapped from /etc/subuid and /etc/subgid",
                   works_as_root=f"root maps ids 0-{SUBORDINATE_IDS} to themselves (its own map, no newuidmap)")
ROOT = ModeKind("root", _root_maps, "root", records_owners=False, namespace=False,
                works="uid 0 with a container's default capabilities, no namespace",
                cost="a plain chroot with device nodes made by mknod, no /proc, /sys or devpts")
SINGLE_UID = ModeKind("single-uid", _single_uid_maps, "namespace", records_owners=True,
                      cost="owners are recorded instead of applied")

CHROOTLESS = ModeKind("chrootless", _chrootless_maps, "chrootless", records_owners=True, namespace=False,
                      works="no user namespace is needed",
                      cost="the host's dpkg installs from outside the tree and maintainer scripts run on "
                           "this host as you (no chroot); owners are recorded")

# The kinds `--mode auto` tries, the fastest faithful one first (root's probe passes only for root,
# chrootless's never for root).
AUTO_ORDER = (UNSHARE, ROOT, SINGLE_UID, CHROOTLESS)
KINDS = {k.name: k for k in AUTO_ORDER}


@dataclass(frozen=True)
class BuildMode:
    """How a build's sandbox runs, and why (for the log and `ocistrap doctor`): decided once
    by ``decide_mode`` and passed down to every architecture's bootstrap.

    FALLBACKS are the kinds auto may still turn to (probed already) when this one fails
    at run time; FELL_BACK_FROM names the kind it replaced; EXPLICIT: asked for by name.
    """

    kind: ModeKind
    maps: IdMaps
    reason: str
    fallbacks: tuple["BuildMode", ...] = ()
    fell_back_from: str | None = None
    explicit: bool = False

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
            return f"{self.name}, because {self.fell_back_from} mode cannot build here: {self.reason}"
        return f"{self.name}: {self.reason}"


def decide_mode(requested: str = "auto", host: HostProbe | None = None) -> BuildMode:
    """The build mode for REQUESTED (one of MODES) on HOST (this machine): the one decision.

    "auto" takes the first kind of AUTO_ORDER whose probe passes, saying why the ones
    before it could not (chrootless only when no user namespace can be made, or none that
    single-uid mode can use); a requested
    kind raises what it is missing, naming the fix.
    """
    if requested not in MODES:
        raise BuildError(f"unknown mode {requested!r}", hint=f"use one of {', '.join(MODES)}")
    host = SystemProbe() if host is None else host
    if requested != "auto":
        kind = KINDS[requested]
        return BuildMode(kind, kind.probe(host), f"requested with --mode {requested}", explicit=True)
    uid = host.identity()[1]
    usable: list[BuildMode] = []
    problems: dict[str, BuildError] = {}
    for kind in AUTO_ORDER:
        try:
            usable.append(BuildMode(kind, kind.probe(host), kind.works_for(uid)))
        except BuildError as e:
            problems[kind.name] = e
    if not usable:
        raise _nothing_builds(problems, uid)
    first, *rest = usable
    # a failure at run time inside a namespace never turns into running maintainer scripts on the host
    rest = [m for m in rest if m.kind is not CHROOTLESS]
    if first.kind is AUTO_ORDER[0]:
        return replace(first, fallbacks=tuple(rest))
    why = problems[AUTO_ORDER[0].name].message
    single = problems.get(SINGLE_UID.name)
    if first.kind is CHROOTLESS and single is not None and single.message not in why:
        why += f"; single-uid mode cannot build here either: {single.message}"
    return replace(first, reason=first.kind.because(why), fallbacks=tuple(rest), fell_back_from=AUTO_ORDER[0].name)


def _nothing_builds(problems: dict[str, BuildError], uid: int) -> BuildError:
    """Why no kind can build, in one line: the namespace's refusal, and what the mode that needs
    none lacks: root mode for root (a container run without CAP_MKNOD, say), chrootless mode
    for anyone else."""
    first = problems[AUTO_ORDER[0].name]
    other = problems.get(ROOT.name if uid == 0 else CHROOTLESS.name)
    if other is None or other.message == first.message:
        return first
    if uid == 0:
        return BuildError(f"{first.message}; root mode cannot build either: {other}")
    return BuildError(f"{first.message}; {other.message}", hint=first.hint)


def host_maps(host: HostProbe) -> IdMaps:
    """The caller's id maps from HOST's subordinate id files (raises with advice)."""
    user, uid, gid = host.identity()
    return _maps(host.subid_text("uid"), host.subid_text("gid"), user=user, uid=uid, gid=gid,
                 paths=(SUBUID, SUBGID))


def userns_probe() -> detect.UsernsProbe:
    """Try to make a user and mount namespace (in a helper process) and gather what tells its
    failures apart."""
    result = subprocess.run(helper_argv("probe"), capture_output=True)
    message = json.loads(result.stdout or b"null")
    facts = {"sysctls": read_sysctls(), "seccomp": detect.seccomp_filtered(detect.read_proc("status")),
             "root": os.geteuid() == 0}
    if message is None and result.returncode == 0:
        return detect.UsernsProbe(**facts)
    if message is None:
        return detect.UsernsProbe("probe", detail=result.stderr.decode(errors="replace").strip(), **facts)
    if "proc_errno" in message:
        return detect.UsernsProbe(proc_errno=message["proc_errno"], **facts)
    return detect.UsernsProbe(message.get("step", "unshare"), message["errno"], **facts)
