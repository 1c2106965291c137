"""What this host lets the caller do, told apart: user namespaces made or refused (and by what),
and root's capabilities. The probes gather facts; the verdicts on them are pure, so that every
case (a container's seccomp profile, AppArmor's restriction, a disabled sysctl) is tested
without that host.
"""

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ocistrap.errors import BuildError
from ocistrap.rootfs.idmaps import SUBORDINATE_IDS, IdMaps, IdRange, inner_id_mapped

PERSIST = "and persist it in /etc/sysctl.d/"
APPARMOR_SYSCTL = "kernel.apparmor_restrict_unprivileged_userns"

# What root mode needs of a container's default capabilities (capabilities(7) numbers); no
# CAP_SYS_ADMIN, so no mounts.
ROOT_CAPS = {"chown": 0, "dac_override": 1, "fowner": 3, "fsetid": 4, "setgid": 6, "setuid": 7,
             "sys_chroot": 18, "mknod": 27}
# The ids a tree's files may have: root and 1..65535, as in unshare mode.
IMAGE_IDS = SUBORDINATE_IDS + 1


@dataclass(frozen=True)
class UsernsProbe:
    """What trying to make a user and mount namespace gave. STEP is where it failed (None: it
    worked): "unshare", "map" (writing the namespace's own uid_map), "mount", or "probe" (the
    probe itself broke; DETAIL says how); ERRNO is the error there. SYSCTLS are the kernel's
    switches for user namespaces; SECCOMP whether a seccomp filter confines the caller. PROC_ERRNO
    is why a proc of a PID namespace made in it could not be mounted (0: it could)."""

    step: str | None = None
    errno: int = 0
    detail: str = ""
    sysctls: Mapping[str, str] = field(default_factory=dict)
    seccomp: bool = False
    root: bool = False
    proc_errno: int = 0


def userns_verdict(probe: UsernsProbe) -> str | None:
    """None if a user namespace can be made and used, else what stops it and the fix, in one line."""
    if probe.step is None:
        return None
    if probe.step == "probe":
        return f"the user namespace probe failed: {probe.detail}"
    if probe.step != "unshare":
        return created_without_capabilities(probe.step, probe.errno, probe.sysctls)
    if probe.sysctls.get("kernel.unprivileged_userns_clone") == "0" and not probe.root:
        return ("unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0): "
                f"run `sudo sysctl -w kernel.unprivileged_userns_clone=1` {PERSIST}")
    if probe.sysctls.get("user.max_user_namespaces") == "0":
        return ("user namespaces are disabled (user.max_user_namespaces=0): "
                f"run `sudo sysctl -w user.max_user_namespaces=15000` {PERSIST}")
    if probe.errno == errno.ENOSPC:
        return ("the limit of user namespaces is reached (user.max_user_namespaces): "
                "raise it with `sudo sysctl -w user.max_user_namespaces=15000`")
    if probe.errno == errno.EPERM and probe.sysctls.get(APPARMOR_SYSCTL) == "1" and not probe.seccomp:
        return apparmor_advice("refuses to make user namespaces")
    if probe.errno == errno.EPERM and probe.seccomp:
        return ("a seccomp filter refuses to make user namespaces (the default profile of Docker and "
                "of Kubernetes' RuntimeDefault does): run the container with a profile that allows "
                "unshare, e.g. `--security-opt seccomp=unconfined`, or build in another mode")
    return (f"cannot create a user namespace: {os.strerror(probe.errno)}; the kernel may lack "
            "CONFIG_USER_NS, or a container runtime's seccomp policy forbids unshare (run ocistrap "
            "on the host, or give the container its own user namespaces)")


def own_proc_verdict(probe: UsernsProbe) -> str | None:
    """None if a namespace made here can have a proc of its own (single-uid mode's owner recorder
    finds processes by their numbers in it), else why not and the fix, in one line."""
    if probe.step is not None or not probe.proc_errno:
        return None
    if probe.proc_errno == errno.EPERM:
        return ("parts of this container's /proc are masked, so a namespace made here cannot have a proc of "
                "its own: run the container with --security-opt unmask=ALL (podman) or "
                "--security-opt systempaths=unconfined (docker)")
    return f"a namespace made here cannot have a proc of its own: {os.strerror(probe.proc_errno)}"


def created_without_capabilities(step: str, err: int, sysctls: Mapping[str, str]) -> str:
    """A namespace was made but STEP ("map", "mount", or a step of the sandbox) then failed with
    ERR: AppArmor's restriction when its sysctl is on, and how to lift it."""
    what = {"map": "writing its id map", "mount": "mounting in it"}.get(step, f"{step} in it")
    if sysctls.get(APPARMOR_SYSCTL) == "1":
        return apparmor_advice(f"lets unprivileged user namespaces be made but gives them no capabilities "
                               f"({what} failed)")
    return (f"a user namespace was made but {what} failed ({os.strerror(err)}): a security "
            "module (AppArmor, SELinux) or the container runtime restricts it")


def apparmor_advice(what: str) -> str:
    """AppArmor's restriction of user namespaces (WHAT it did), and the two ways to lift it."""
    return (f"AppArmor {what}: {APPARMOR_SYSCTL}=1, as on Ubuntu 23.10 and later; run "
            f"`sudo sysctl -w {APPARMOR_SYSCTL}=0` {PERSIST}, or allow it for ocistrap alone: "
            "`ocistrap doctor --apparmor-profile FILE` writes a profile and says how to load it")


def apparmor_profile(executable: str, name: str = "ocistrap") -> str:
    """An AppArmor profile that lets EXECUTABLE (the interpreter that runs ocistrap, which makes the
    namespaces) make user namespaces with their capabilities, and confines it no further. It
    covers every program that interpreter runs: point it at a copy of the interpreter kept
    for ocistrap (a venv made with --copies) to grant no other program that."""
    return (f"# ocistrap: lets {executable} make user namespaces ({APPARMOR_SYSCTL}=1)\n"
            "abi <abi/4.0>,\n"
            "include <tunables/global>\n\n"
            f"profile {name} {executable} flags=(unconfined) {{\n"
            "  userns,\n\n"
            f"  include if exists <local/{name}>\n"
            "}\n")


def seccomp_filtered(status: str) -> bool:
    """Whether /proc/self/status (STATUS) says a seccomp filter confines this process."""
    return _status_field(status, "Seccomp") == "2"


def effective_caps(status: str) -> int:
    """The effective capability set in /proc/self/status (STATUS)."""
    value = _status_field(status, "CapEff")
    return int(value, 16) if value else 0


def _status_field(status: str, name: str) -> str:
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    return ""


def all_image_ids_mapped(map_text: str) -> bool:
    """Whether ids 0..65535 all exist in the namespace whose [ug]id_map is MAP_TEXT (in the
    host's, all do; in a container's, those its runtime mapped)."""
    covered = sorted((int(f[0]), int(f[0]) + int(f[2])) for f in (line.split() for line in map_text.splitlines())
                     if len(f) == 3)
    reach = 0
    for start, end in covered:
        if start > reach:
            break
        reach = max(reach, end)
    return reach >= IMAGE_IDS and inner_id_mapped(0, map_text)


def root_maps(uid_map: str, gid_map: str) -> IdMaps:
    """Root's id maps: the image's ids 0..65535 are the same ids outside, which root maps by
    writing uid_map and gid_map itself (no newuidmap, no /etc/subuid). Raises if the namespace
    root is in lacks some of them (a container that maps fewer)."""
    for kind, text in (("uid", uid_map), ("gid", gid_map)):
        if not all_image_ids_mapped(text):
            raise BuildError(f"this namespace does not have all of the {kind}s 0-{SUBORDINATE_IDS} that an "
                             f"image's files may belong to (its {kind}_map: {_one_line(text)})",
                             hint="give the container at least 65536 ids, or build as an unprivileged account")
    identity = (IdRange(0, 0, 1), IdRange(1, 1, SUBORDINATE_IDS))
    return IdMaps(uid=identity, gid=identity)


def _one_line(map_text: str) -> str:
    return "; ".join(" ".join(line.split()) for line in map_text.splitlines() if line.strip()) or "empty"


def root_problem(uid: int, caps: int, uid_map: str, gid_map: str) -> str | None:
    """None if the caller can build in root mode (uid 0 with ROOT_CAPS and every image id), else why not."""
    if uid != 0:
        return f"root mode needs uid 0, not {uid}: build as root, or in unshare or single-uid mode"
    missing = [name for name, bit in ROOT_CAPS.items() if not caps >> bit & 1]
    if missing:
        return ("root lacks the capabilities " + ", ".join(f"CAP_{m.upper()}" for m in missing)
                + " that root mode needs (Docker gives a container's root all of them, podman all but "
                "CAP_MKNOD): run the container with `--cap-add " + ",".join(m.upper() for m in missing) + "`")
    try:
        root_maps(uid_map, gid_map)
    except BuildError as e:
        return str(e)
    return None


def read_proc(name: str) -> str:
    """/proc/self/NAME, or "" where it cannot be read."""
    try:
        return Path("/proc/self", name).read_text()
    except OSError:
        return ""


SECCOMP_ACTIONS = Path("/proc/sys/kernel/seccomp/actions_avail")
PTRACE_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")


def read_sysctl(path: Path) -> str | None:
    """The text of the sysctl file PATH, or None where there is none (no Yama, say)."""
    try:
        return path.read_text()
    except OSError:
        return None


def user_notif_available(seccomp_actions: str | None) -> bool:
    """Whether the kernel's seccomp actions (SECCOMP_ACTIONS' text) include user notification,
    which the owner recorder answers calls through."""
    return "user_notif" in (seccomp_actions or "").split()


def recording_problem(seccomp_actions: str | None, ptrace_scope: str | None) -> str | None:
    """Why owners cannot be recorded without a user namespace (None: they can), from the kernel's
    seccomp actions and Yama's ptrace_scope (None: no Yama). The recorder answers chown and
    mknod through seccomp user notification and reads the callers' memory, which Yama allows
    an unprivileged process only for its descendants (scope 1) or not at all (2, 3)."""
    if not user_notif_available(seccomp_actions):
        return "this kernel lacks seccomp user notification (Linux 5.5 or later)"
    scope = (ptrace_scope or "0").strip()
    if scope == "2":
        return ("Yama's kernel.yama.ptrace_scope is 2 (admin-only attach), so the owner recorder cannot read "
                "dpkg's calls: `sudo sysctl kernel.yama.ptrace_scope=1`")
    if scope == "3":
        return ("Yama's kernel.yama.ptrace_scope is 3 (no attach), so the owner recorder cannot read dpkg's "
                "calls; that holds until the next reboot with a lower value")
    return None
