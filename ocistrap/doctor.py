"""Host checks for ``ocistrap doctor``: what a rootless build needs, and how to get it.

Every probe of the machine goes through a ``Host`` so that each verdict can be
tested with a fake one; the verdicts themselves are pure.
"""

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from ocistrap import hostarch
from ocistrap.errors import BuildError
from ocistrap.hostarch import Check, native_arch
from ocistrap.rootfs import buildmode, detect, hostdpkg, idmaps

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


class Host(buildmode.HostProbe, Protocol):
    """What the doctor looks at: what decides the build mode, and the rest a build needs."""

    def which(self, name: str) -> str | None: ...
    def read_text(self, path: Path) -> str | None: ...
    def readable(self, path: Path) -> bool: ...
    def native_arch(self) -> str: ...
    def runs_foreign(self, arch: str) -> bool | None: ...


class SystemHost(buildmode.SystemProbe):
    """This machine, probed for real."""

    def which(self, name: str) -> str | None:
        return shutil.which(name)

    def read_text(self, path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    def readable(self, path: Path) -> bool:
        return path.is_file() and os.access(path, os.R_OK)

    def native_arch(self) -> str:
        return native_arch()

    def runs_foreign(self, arch: str) -> bool | None:
        return hostarch.runs_here(arch)


def check_userns(host: Host) -> Check:
    problem = host.userns_problem()
    if problem:
        return Check("user namespaces", False, problem)
    return Check("user namespaces", True, "a user and mount namespace can be created")


def check_subids(host: Host, kind: Literal["uid", "gid"]) -> Check:
    name = f"sub{kind}"
    path = Path(f"/etc/{name}")
    user, uid, gid = host.identity()
    try:
        text = host.subid_text(kind)
        idmaps.subid_map(text, kind=kind, user=user, uid=uid, own_id=uid if kind == "uid" else gid)
    except BuildError as e:
        return Check(name, False, str(e))
    ranges = idmaps.parse_subid(text, user=user, uid=uid)
    listed = ", ".join(f"{r.start}-{r.end - 1}" for r in ranges)
    total = sum(r.count for r in ranges)
    return Check(name, True, f"{user} has {total} subordinate {kind}s ({listed}) in {path}")


def check_mapper(host: Host, name: str) -> Check:
    path, problem = host.mapper(name)
    if problem:
        return Check(name, False, problem)
    return Check(name, True, f"{path} may map subordinate ids")


def check_verifier(host: Host) -> Check:
    for tool in ("gpgv", "sqv"):
        path = host.which(tool)
        if path:
            return Check("signature verifier", True, f"{tool} at {path}")
    return Check("signature verifier", False, "neither gpgv nor sqv is installed: run `sudo apt install gpgv`")


def check_keyring(host: Host, keyring: Path = KEYRING) -> Check:
    if host.readable(keyring):
        return Check("archive keyring", True, f"{keyring} is readable")
    return Check("archive keyring", False,
                 f"{keyring} is missing or unreadable: run `sudo apt install debian-archive-keyring` "
                 "(or pass the suite's keyring with --keyring)")


def check_binfmt(host: Host, arch: str, native: str) -> Check:
    return hostarch.binfmt_check(arch, native, host.read_text, host.runs_foreign)


def check_mode(requested: str, host: Host) -> tuple[buildmode.BuildMode | None, Check]:
    """The mode a build will use, as the build decides it (buildmode.decide_mode; None if no
    mode can build), and the check that says why."""
    try:
        mode = buildmode.decide_mode(requested, host)
    except BuildError as e:
        if requested == "auto":
            return None, Check("build mode", False, f"no mode can build here ({e.message})")
        return None, Check("build mode", False, f"{requested} is not possible ({e.message})")
    return mode, Check("build mode", True, mode.describe())


def check_seccomp(host: Host) -> Check:
    if detect.user_notif_available(host.read_text(detect.SECCOMP_ACTIONS)):
        return Check("seccomp user notification", True, "available: owners can be recorded (single-uid and chrootless builds)")
    return Check("seccomp user notification", False,
                 "this kernel lacks seccomp user notification (Linux 5.5 or later), which single-uid "
                 "builds need: give the account a subordinate id range for unshare mode")


def check_chrootless(host: Host) -> Check:
    problem = buildmode.chrootless_problem(host)
    if problem:
        return Check("chrootless mode", False, problem)
    names = sorted(hostdpkg.host_release_names(hostdpkg.read_os_release() or ""))
    release = f"this host's own release, {' or '.join(names)}" if names else "this host's own release (unknown here)"
    return Check("chrootless mode", True, "the host's dpkg can install from outside the tree, owners recorded "
                                          "(maintainer scripts then run on this host as you, with its tools: "
                                          f"auto builds only {release}, in this mode)")


def _not_needed(check: Check, mode: str) -> Check:
    return check if check.ok else Check(check.name, True, f"not needed in {mode} mode: {check.detail}")


def checks(arch: Sequence[str], *, mode: str = "auto", host: Host | None = None) -> list[Check]:
    """Everything a build for the architectures ARCH in MODE needs, checked on HOST (this machine).

    In a mode that maps only the caller (single-uid), and for root (who writes its own maps),
    a missing subordinate range or id mapper is no failure; in a mode without a namespace
    (root), refused user namespaces are none either.
    """
    host = SystemHost() if host is None else host
    native = host.native_arch()
    ids = [check_subids(host, "uid"), check_subids(host, "gid"),
           check_mapper(host, "newuidmap"), check_mapper(host, "newgidmap")]
    chosen, verdict = check_mode(mode, host)
    userns = check_userns(host)
    if host.identity()[1] == 0:
        ids = [c if c.ok else Check(c.name, True, "not needed: root writes its own id maps") for c in ids]
    elif chosen is not None and idmaps.writes_own_maps(chosen.maps, host.identity()[1]):
        ids = [_not_needed(c, chosen.name) for c in ids]
    if chosen is not None and not chosen.kind.namespace:
        userns = _not_needed(userns, chosen.name)
    chrootless = check_chrootless(host)
    if chosen is not None and chosen.kind is not buildmode.CHROOTLESS:
        chrootless = _not_needed(chrootless, chosen.name)
    return [
        Check("native architecture", True, native),
        userns,
        *ids,
        verdict,
        chrootless,
        *([check_seccomp(host)] if chosen is not None and chosen.records_owners else []),
        check_verifier(host),
        check_keyring(host),
        *(check_binfmt(host, a, native) for a in dict.fromkeys(arch)),
    ]


def format_checks(results: Sequence[Check]) -> str:
    """One aligned line per check: ``ok`` or ``FAIL``, its name, and the detail."""
    width = max((len(c.name) for c in results), default=0)
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'}  {c.name.ljust(width)}  {c.detail}"
                     for c in results)
