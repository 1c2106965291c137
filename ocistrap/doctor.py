"""Host checks for ``ocistrap doctor``: what a rootless build needs, and how to get it.

Every probe of the machine goes through a ``Host`` so that each verdict can be
tested with a fake one; the verdicts themselves are pure.
"""

import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from ocistrap import sandbox
from ocistrap.errors import BuildError

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
QEMU_INSTALL = "sudo apt install qemu-user-static binfmt-support"
BINFMT_MOUNT = ("sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc "
                "&& sudo update-binfmts --enable")

# Debian architecture -> the name qemu-user-static registers in binfmt_misc.
QEMU_NAMES = {
    "amd64": "x86_64", "i386": "i386", "arm64": "aarch64", "armhf": "arm", "armel": "arm",
    "ppc64el": "ppc64le", "ppc64": "ppc64", "powerpc": "ppc", "s390x": "s390x",
    "riscv64": "riscv64", "mips64el": "mips64el", "mipsel": "mipsel", "loong64": "loongarch64",
    "hppa": "hppa", "m68k": "m68k", "sh4": "sh4", "sparc64": "sparc64", "alpha": "alpha",
}
# Foreign architectures the CPU runs without an emulator.
NATIVE_COMPAT = {"amd64": {"i386"}, "arm64": {"armhf", "armel"}}
# platform.machine() -> Debian architecture, when dpkg is not there to ask.
MACHINE_ARCH = {
    "x86_64": "amd64", "i686": "i386", "i386": "i386", "aarch64": "arm64", "armv7l": "armhf",
    "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64", "loongarch64": "loong64",
}


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: DETAIL says what is fine or exactly what to do."""

    name: str
    ok: bool
    detail: str


class Host(sandbox.HostProbe, Protocol):
    """What the doctor looks at: what decides the build mode, and the rest a build needs."""

    def which(self, name: str) -> str | None: ...
    def read_text(self, path: Path) -> str | None: ...
    def readable(self, path: Path) -> bool: ...
    def native_arch(self) -> str: ...


class SystemHost(sandbox.SystemProbe):
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


def native_arch() -> str:
    """The Debian architecture of this machine (dpkg's answer, else guessed from the CPU)."""
    try:
        result = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except OSError:
        pass
    machine = platform.machine()
    return MACHINE_ARCH.get(machine, machine)


def check_userns(host: Host) -> Check:
    problem = host.userns_problem()
    if problem:
        return Check("user namespaces", False, problem)
    return Check("user namespaces", True, "an unprivileged user and mount namespace can be created")


def check_subids(host: Host, kind: Literal["uid", "gid"]) -> Check:
    name = f"sub{kind}"
    path = Path(f"/etc/{name}")
    user, uid, gid = host.identity()
    try:
        text = host.subid_text(kind)
        sandbox.subid_map(text, kind=kind, user=user, uid=uid, own_id=uid if kind == "uid" else gid)
    except BuildError as e:
        return Check(name, False, str(e))
    ranges = sandbox.parse_subid(text, user=user, uid=uid)
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


def binfmt_verdict(arch: str, native: str, entry: str | None, mounted: bool) -> Check:
    """Whether ARCH's binaries can run here, from the qemu-ARCH binfmt_misc entry's text."""
    name = f"binfmt {arch}"
    if arch == native or arch in NATIVE_COMPAT.get(native, set()):
        return Check(name, True, f"{arch} runs natively on {native}")
    qemu = QEMU_NAMES.get(arch)
    if qemu is None:
        return Check(name, False, f"unknown Debian architecture {arch!r}")
    if not mounted:
        return Check(name, False, f"binfmt_misc is not mounted: run `{BINFMT_MOUNT}` "
                                  f"(and `{QEMU_INSTALL}` if qemu-{qemu} is not registered then)")
    if entry is None:
        return Check(name, False, f"no qemu-{qemu} binfmt handler: run `{QEMU_INSTALL}`")
    lines = entry.splitlines()
    if not lines or lines[0].strip() != "enabled":
        return Check(name, False, f"the qemu-{qemu} binfmt handler is disabled: "
                                  f"run `sudo update-binfmts --enable qemu-{qemu}`")
    flags = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("flags:")), "")
    if "F" not in flags:
        return Check(name, False, f"the qemu-{qemu} binfmt handler lacks the F flag, so it cannot "
                                  f"run inside a chroot: reinstall it with `{QEMU_INSTALL}` "
                                  "(qemu-user-static registers it with F)")
    return Check(name, True, f"qemu-{qemu} is registered with flags {flags}")


def check_binfmt(host: Host, arch: str, native: str) -> Check:
    qemu = QEMU_NAMES.get(arch, arch)
    mounted = host.read_text(BINFMT_DIR / "status") is not None
    return binfmt_verdict(arch, native, host.read_text(BINFMT_DIR / f"qemu-{qemu}"), mounted)


SECCOMP_ACTIONS = Path("/proc/sys/kernel/seccomp/actions_avail")


def check_mode(requested: str, host: Host) -> tuple[sandbox.BuildMode | None, Check]:
    """The mode a build will use, as the build decides it (sandbox.decide_mode; None if no
    mode can build), and the check that says why."""
    try:
        mode = sandbox.decide_mode(requested, host)
    except BuildError as e:
        if requested == "auto":
            return None, Check("build mode", False, f"no mode can build here ({e.message})")
        return None, Check("build mode", False, f"{requested} is not possible ({e.message})")
    return mode, Check("build mode", True, mode.describe())


def check_seccomp(host: Host) -> Check:
    actions = (host.read_text(SECCOMP_ACTIONS) or "").split()
    if "user_notif" in actions:
        return Check("seccomp user notification", True, "available: single-uid builds can record owners")
    return Check("seccomp user notification", False,
                 "this kernel lacks seccomp user notification (Linux 5.5 or later), which single-uid "
                 "builds need: give the account a subordinate id range for unshare mode")


def _not_needed(check: Check, mode: str) -> Check:
    return check if check.ok else Check(check.name, True, f"not needed in {mode} mode: {check.detail}")


def checks(arch: Sequence[str], *, mode: str = "auto", host: Host | None = None) -> list[Check]:
    """Everything a build for the architectures ARCH in MODE needs, checked on HOST (this machine).

    In a mode that maps only the caller (single-uid) a missing subordinate range or id mapper
    is no failure.
    """
    host = SystemHost() if host is None else host
    native = host.native_arch()
    ids = [check_subids(host, "uid"), check_subids(host, "gid"),
           check_mapper(host, "newuidmap"), check_mapper(host, "newgidmap")]
    chosen, verdict = check_mode(mode, host)
    if chosen is not None and chosen.maps.is_single:
        ids = [_not_needed(c, chosen.name) for c in ids]
    return [
        Check("native architecture", True, native),
        check_userns(host),
        *ids,
        verdict,
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
