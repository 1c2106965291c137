"""The inner half of the bootstrap: runs as root of the sandbox, unpacks and configures the packages, streams the layers."""

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NoReturn

from ocistrap import hostarch
from ocistrap.debian import expand
from ocistrap.errors import BuildError, OcistrapError
from ocistrap.rootfs import hostdpkg, inroot, mounting, plainroot, recorder, slim, spawn, syscalls, tarstream, unpack
from ocistrap.rootfs.bootplan import (
    DEBS_MOUNT,
    Deb,
    Plan,
    extended_states,
    install_batches,
    merged_usr_aliases,
)
from ocistrap.rootfs.innerlog import INNER_ERROR, notice

POLICY_RC_D = "#!/bin/sh\n# installed by ocistrap while building: no daemon starts\nexit 101\n"
FAKE_START_STOP_DAEMON = "#!/bin/sh\necho 'Warning: fake start-stop-daemon called, doing nothing' >&2\n"
CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "HOME": "/root",
}
SETUP_DIRS = ("etc/apt/apt.conf.d", "etc/apt/sources.list.d", "etc/apt/preferences.d",
              "etc/dpkg/dpkg.cfg.d", "var/cache/apt/archives/partial", "var/lib/apt/lists/partial",
              "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers",
              "var/lib/dpkg/alternatives", "var/log/apt", "tmp")

# Files that make a tree unreproducible or carry host identity (as mmdebstrap
# and the official Debian images remove them).
VOLATILE = ("var/log/dpkg.log", "var/log/apt/history.log", "var/log/apt/term.log",
            "var/log/alternatives.log", "var/cache/ldconfig/aux-cache", "var/log/apt/eipp.log.xz",
            "var/lib/dbus/machine-id", "etc/resolv.conf", "etc/hostname",
            "var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin")
FSTAB = "# UNCONFIGURED FSTAB FOR BASE SYSTEM\n"


@dataclass(frozen=True)
class Generated:
    """Keys a postinst generates with fresh randomness, and the command that makes new ones."""

    what: str
    files: tuple[tuple[str, re.Pattern[str]], ...]  # (directory in the tree, file names)
    remake: str


# They go, as they go from Debian's cloud images: every container of the image would present one
# private key, and no two builds would be equal.
GENERATED_KEYS = (
    Generated("the SSH host keys openssh-server's postinst made",
              (("etc/ssh", re.compile(r"ssh_host_[a-z0-9]+_key(?:\.pub)?")),), "ssh-keygen -A"),
    Generated("the snakeoil key and certificate ssl-cert's postinst made",
              (("etc/ssl/private", re.compile(r"ssl-cert-snakeoil\.key")),
               ("etc/ssl/certs", re.compile(r"ssl-cert-snakeoil\.pem"))),
              "make-ssl-cert generate-default-snakeoil"),
)

APT_LOCKS = ("var/cache/apt/archives/lock", "var/lib/apt/lists/lock")
APT_PARTIAL = ("var/cache/apt/archives/partial", "var/lib/apt/lists/partial")

# the unpacking child's answers: DONE, or one of the others followed by why it stopped
DONE, REFUSED, FAILED = "done", "refused:", "failed:"
MESSAGE_SIZE = 1 << 16


# ---- inner half: runs as root inside the user namespace ----

def run_inner(plan: Plan, outs: Sequence[BinaryIO]) -> None:
    """Build the tree described by PLAN, writing the base layer and each diff layer to OUTS."""
    root = Path(plan.staging)
    if plan.plain_chroot:
        plainroot.clean_up_when_orphaned(root.parent)
    mounting.mount_staging(root, tmpfs=plan.tmpfs and not plan.chrootless)
    if plan.mounts:
        for note in identity_notes(socket.gethostname(), bool(syscalls.interface_flags("lo") & syscalls.IFF_UP)):
            notice(note)
    owners = _start_recorder(root, chrootless=plan.chrootless) if plan.record_owners else None
    ready = _Ready(plan.ready_fd)
    phases = Phases(plan.phases_fd)
    env = chroot_env(plan.epoch)
    try:
        _setup(root, plan)
        aliased = merged_usr_aliases(plan)
        with phases.timed(UNPACKING_ESSENTIAL):
            _extract_all(plan.essential, root, ready, aliased, chrootless=plan.chrootless, owners=owners)
        unpack.alias_usr_only(root, aliased)
        if plan.slim:
            slim.prune(root)
        installed = list(plan.essential)
        before: tarstream.Snapshot | None = None
        for number, out in enumerate(outs):
            group = [d for d in plan.rest if d.layer == number]
            with _chroot(root, plan, first_round=number == 0):
                if number == 0:
                    _dpkg_install(root, plan.essential, phases, env, plan)
                ready.wait(len(plan.essential) + len(plan.rest))
                for batch in install_batches(group, installed):
                    _dpkg_install(root, batch, phases, env, plan)
            installed += group
            _finish(root, plan, [d for d in installed if d in plan.rest])
            restat = owners.records().apply if owners else tarstream.unchanged
            phases.report()
            with out:
                if before is None:
                    tarstream.write_tree(root, out, epoch=plan.epoch, restat=restat)
                else:
                    tarstream.write_diff(root, before, out, epoch=plan.epoch, restat=restat)
            if number + 1 < len(outs):
                before = tarstream.snapshot(root, restat=restat)
    finally:
        if owners:
            owners.close()
        if not plan.tmpfs:
            shutil.rmtree(root, ignore_errors=True)


UNPACKING_ESSENTIAL, DPKG_UNPACKING, DPKG_CONFIGURING = (
    "unpacking the essential set", "dpkg unpacking", "dpkg configuring")


class Phases:
    """Seconds the inner half spent in each phase of the install; one JSON line per layer goes to
    FD (-1: nowhere) just before that layer's stream, for the outer half's --timings."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seconds: dict[str, float] = {}
        if fd >= 0:
            os.set_inheritable(fd, False)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - start)

    def report(self) -> None:
        if self.fd >= 0:
            os.write(self.fd, json.dumps(self.seconds).encode() + b"\n")
        self.seconds = {}


def read_phases(line: bytes) -> list[tuple[str, float]]:
    """The (phase, seconds) pairs of one line Phases.report wrote, in install order; none for
    anything else (the inside ended before it reported)."""
    try:
        seconds = json.loads(line)
    except ValueError:
        return []
    if not isinstance(seconds, dict):
        return []
    return [(name, float(seconds[name])) for name in (UNPACKING_ESSENTIAL, DPKG_UNPACKING, DPKG_CONFIGURING)
            if isinstance(seconds.get(name), (int, float))]


class _Ready:
    """How many of the plan's packages (essential first, then the rest) the outer half has said
    are ready to read (_Announcer); FD -1: all of them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0

    def wait(self, count: int) -> None:
        while self.fd >= 0 and self.count < count:
            data = os.read(self.fd, 1 << 16)
            if not data:
                raise BuildError("the packages to install were not all made ready on the host")
            self.count += len(data)


def _start_recorder(root: Path, *, chrootless: bool) -> recorder.Recorder:
    """Record owners and devices of the tree at ROOT from here on (see ocistrap.rootfs.recorder);
    the supervisor finds processes through a proc file system of this PID namespace, outside
    the tree. CHROOTLESS (no namespace): the host's /proc, the caller's own ids stand for 0:0,
    and the supervisor stays this process, the bootstrap going on in its child
    (recorder.start_above)."""
    lasting = recorder.lasting_device(root)
    if chrootless:
        return recorder.start_above("/proc", (os.getuid(), os.getgid()), lasting)
    proc = root.parent / "proc"
    proc.mkdir(exist_ok=True)
    mounting.mount_proc(proc)
    return recorder.start(str(proc), lasting)


@contextmanager
def _chroot(root: Path, plan: Plan, *, first_round: bool) -> Iterator[None]:
    """The chroot as maintainer scripts need it, for one round of dpkg; gone again afterwards.

    The first round installs dpkg itself, so start-stop-daemon is moved aside as
    mmdebstrap does; later rounds cover it with a bind mount instead, which leaves
    the real file untouched and so out of the diff layers. In root mode nothing can be
    mounted: devices are made and the packages copied in (ocistrap.rootfs.plainroot), and
    start-stop-daemon is moved aside in every round. Without a chroot (chrootless), there is
    nothing to prepare: the host's dpkg reads the packages where they are, and the scripts run
    the host's programs, not the tree's; /dev and /tmp are then touched as the other modes leave
    them, so that every mode gives the same image.
    """
    if plan.chrootless:
        yield
        _touch(root, CHROOT_TOUCHED)
        return
    if plan.plain_chroot:
        with plainroot.prepared(root, DEBS_MOUNT):
            _divert_daemons(root, move=True)
            yield
            _undivert_daemons(root)
        return
    with inroot.Tree(root) as tree:
        tree.mkdir(DEBS_MOUNT)
        debs = Path(tree.mount_point(DEBS_MOUNT))
    mounting.bind_mount(Path(plan.debs_dir), debs, readonly=True)
    try:
        mounting.prepare_chroot(root)
        try:
            _divert_daemons(root, move=first_round)
            yield
            _undivert_daemons(root)
        finally:
            mounting.release_chroot(root)
    finally:
        mounting.unmount(debs)
    with inroot.Tree(root) as tree:
        tree.rmdir(DEBS_MOUNT)


def _setup(root: Path, plan: Plan) -> None:
    with inroot.Tree(root) as tree:
        for d in SETUP_DIRS:
            tree.mkdir(d)
        tree.mkdir("tmp", 0o1777)
        if not tree.exists("var/lib/dpkg/status"):
            tree.write("var/lib/dpkg/status", b"")
        tree.write("var/lib/dpkg/arch", f"{plan.arch}\n".encode())
        if plan.slim:
            _ensure_file(tree, slim.CONFIG_PATH, slim.config_text())


def _extract_all(debs: Sequence[Deb], root: Path, ready: _Ready | None = None,
                 aliased: Sequence[str] = (), *, chrootless: bool = False,
                 owners: recorder.Recorder | None = None) -> None:
    """Unpack DEBS' data in order as mmdebstrap does (keeping merged-/usr symlinks, making
    ALIASED ones when missing), with the
    member checks of ocistrap.rootfs.unpack, in a child chrooted into ROOT: a member that got past
    them still could not reach the host files that root of the namespace may write.

    DEBS are expanded (ocistrap.debian.expand): the child reads each plain data.tar straight from
    the file, through a descriptor positioned at it. CHROOTLESS: no chroot can be had; the
    child unpacks below ROOT, applying the owners (which the recorder records). OWNERS: the
    recorder, which leaves the child's stat calls to the kernel (it reads no owners from them)."""
    pid, ours = spawn.fork_with_channel(lambda channel: _unpacker(root, channel, aliased, chrootless),
                                          socket.SOCK_SEQPACKET)
    try:
        with ours, owners.unfaked_stats(pid) if owners else nullcontext():
            for number, deb in enumerate(debs, 1):
                if ready:
                    ready.wait(number)
                data = expand.plain_data(Path(deb.path), f"{deb.name} ({deb.path})")
                with open(deb.path, "rb", buffering=0) as f:
                    f.seek(data.data)
                    socket.send_fds(ours, [f"{data.size} {deb.name}".encode()], [f.fileno()])
                _check_unpacked(deb, ours.recv(MESSAGE_SIZE).decode(errors="replace"))
    finally:
        os.waitpid(pid, 0)


def _check_unpacked(deb: Deb, reply: str) -> None:
    """Raise with the child's reason if its REPLY says unpacking DEB failed."""
    if reply == DONE:
        return
    raise BuildError(reply.removeprefix(REFUSED).removeprefix(FAILED) or
                         f"cannot unpack {deb.name}: the unpacking process died")


def _unpacker(root: Path, channel: socket.socket, aliased: Sequence[str], chrootless: bool) -> NoReturn:
    """The chrooted child: unpack each stream the parent sends, answer DONE or why it failed.

    It runs only code already imported: after chroot() the host's Python is out of reach.
    """
    try:
        if not chrootless:
            os.chroot(root)
        os.chdir(root if chrootless else "/")
        os.umask(0o022)
        while True:
            message, fds, _, _ = socket.recv_fds(channel, MESSAGE_SIZE, 1)
            if not fds:
                break
            size, name = message.decode().split(" ", 1)
            with os.fdopen(fds[0], "rb") as stream:
                unpack.unpack(expand.Bounded(stream, int(size)), ".", package=name,  # type: ignore[arg-type]
                              aliased=aliased, same_owner=True if chrootless else None,
                              own_shown_as_root=chrootless)
            channel.send(DONE.encode())
    except unpack.UnpackError as e:
        channel.send((REFUSED if e.refused else FAILED).encode() + str(e).encode())
    except BaseException as e:
        traceback.print_exc()
        channel.send(f"{FAILED}unpacking failed: {type(e).__name__}: {e}".encode())
    finally:
        os._exit(0)


POLICY, SSD, SSD_REAL = "usr/sbin/policy-rc.d", "sbin/start-stop-daemon", "sbin/start-stop-daemon.REAL"


CHROOT_TOUCHED = ("dev", "tmp")
"""What a round in a chroot modifies in every mode that has one: /dev (the placeholders for the
host's device nodes, or the nodes root mode makes, come and go) and /tmp (the scripts' files)."""


def _touch(root: Path, rels: Sequence[str]) -> None:
    """Set the times of the directories RELS of ROOT to now (the layer clamps them to the epoch)."""
    with inroot.Tree(root) as tree:
        for rel in rels:
            if tree.is_dir(rel):
                with tree.entry(rel) as (fd, base):
                    os.utime(base, dir_fd=fd, follow_symlinks=False)


def _divert_daemons(root: Path, *, move: bool) -> None:
    """policy-rc.d and a fake start-stop-daemon; paths resolved inside ROOT (its symlinks are
    the packages')."""
    with inroot.Tree(root) as tree:
        tree.write(POLICY, POLICY_RC_D.encode(), mode=0o755)
        if not tree.is_file(SSD):
            return
        if move:
            tree.rename(SSD, SSD_REAL)
            tree.write(SSD, FAKE_START_STOP_DAEMON.encode(), mode=0o755)
            return
        fake = root.parent / "fake-start-stop-daemon"
        fake.write_text(FAKE_START_STOP_DAEMON)
        fake.chmod(0o755)
        mounting.bind_mount(fake, Path(tree.mount_point(SSD)), readonly=True)


def _undivert_daemons(root: Path) -> None:
    with inroot.Tree(root) as tree:
        tree.unlink(POLICY)
        if tree.exists(SSD_REAL):
            tree.rename(SSD_REAL, SSD)
        elif (root.parent / "fake-start-stop-daemon").exists():
            mounting.unmount(Path(tree.mount_point(SSD)))
            (root.parent / "fake-start-stop-daemon").unlink()


def chroot_env(epoch: int) -> dict[str, str]:
    """The environment of dpkg and the maintainer scripts: SOURCE_DATE_EPOCH makes what they
    date by the clock (shadow's last password change in /etc/shadow) the same on every day."""
    return {**CHROOT_ENV, "SOURCE_DATE_EPOCH": str(epoch)}


def _dpkg_install(root: Path, debs: Sequence[Deb], phases: Phases, env: Mapping[str, str], plan: Plan) -> None:
    """dpkg --install of DEBS: in the chroot; in root mode (no mounts) the packages are copied in
    first and the host's dpkg, which needs a namespace to be confined, is not used; chrootless,
    the host's dpkg installs them from outside the tree."""
    if not debs:
        return
    if plan.chrootless:
        _dpkg_install_from_outside(root, debs, phases, env)
        return
    paths = [f"/{DEBS_MOUNT}/{Path(d.path).name}" for d in debs]
    if plan.plain_chroot:
        plainroot.provide(root, DEBS_MOUNT, [d.path for d in debs])
    elif _host_dpkg_unpacks(root, debs, env):
        _dpkg_install_foreign(root, debs, paths, phases, env)
        return
    run = plainroot.chroot_run if plan.plain_chroot else spawn.chroot_run
    # no fsync: the staging root is thrown away if anything fails
    returncode = _dpkg_timed(root, ["--install", "--force-depends", "--force-unsafe-io", *paths], phases, env, run)
    if returncode != 0:
        raise BuildError(f"dpkg --install failed for {', '.join(d.name for d in debs)}")


CONFIGURE_STARTS = b"processing: configure: "


def _dpkg_install_from_outside(root: Path, debs: Sequence[Deb], phases: Phases, env: Mapping[str, str]) -> None:
    """Chrootless mode: the host's dpkg on ROOT from outside (as `mmdebstrap --mode=chrootless`
    does); dpkg gives the maintainer scripts DPKG_ROOT and runs them here."""
    paths = [d.path for d in debs]
    returncode = _dpkg_timed(root, ["--install", "--force-depends", "--force-unsafe-io", *paths], phases, env,
                             _host_dpkg_run)
    if returncode != 0:
        raise BuildError(f"dpkg --install (the host's dpkg, chrootless) failed for {', '.join(d.name for d in debs)}")


def _host_dpkg_run(root: Path, argv: Sequence[str], *, env: Mapping[str, str], check: bool = False,
                   pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess:
    """spawn.chroot_run's counterpart for the host's dpkg: HOME is the tree's /root, whose
    ~/.dpkg.cfg a chrooted dpkg would read."""
    dpkg, *args = argv
    return subprocess.run([shutil.which(dpkg) or dpkg, *hostdpkg.chrootless_options(root), *args],
                          env={**env, "HOME": f"{root}/root"}, stdin=subprocess.DEVNULL,
                          pass_fds=tuple(pass_fds), check=check)


def _dpkg_timed(root: Path, args: Sequence[str], phases: Phases, env: Mapping[str, str],
                run: Callable[..., subprocess.CompletedProcess] = spawn.chroot_run) -> int:
    """Run the target's dpkg with ARGS; add the time until it starts configuring (its status fd
    says "processing: configure:") to unpacking, the rest to configuring; its exit status."""
    status_r, status_w = os.pipe()
    configuring: list[float] = []

    def watch() -> None:
        with open(status_r, "rb") as status:
            for line in status:
                if not configuring and line.startswith(CONFIGURE_STARTS):
                    configuring.append(time.monotonic())

    watcher = threading.Thread(target=watch, name="dpkg-status", daemon=True)
    watcher.start()
    start = time.monotonic()
    try:
        result = run(root, ["dpkg", f"--status-fd={status_w}", *args], env=env, check=False, pass_fds=(status_w,))
    finally:
        os.close(status_w)
        watcher.join()
    end = time.monotonic()
    boundary = configuring[0] if configuring else end
    phases.add(DPKG_UNPACKING, boundary - start)
    phases.add(DPKG_CONFIGURING, end - boundary)
    return result.returncode


def _host_dpkg_unpacks(root: Path, debs: Sequence[Deb], env: Mapping[str, str]) -> bool:
    """True if the host's dpkg is to unpack DEBS, packages of a foreign architecture
    (ocistrap.rootfs.hostdpkg); the log says which dpkg does what, and why."""
    arch = debs[0].arch
    if not arch or arch == hostarch.native_arch():
        return False
    dpkg = next((d.path for d in debs if d.name == "dpkg"), None)
    why_not = hostdpkg.refusal(hostdpkg.probe(root, env), arch, hostdpkg.target_version(root, dpkg))
    notice(f"{arch}: " + (f"the target's dpkg unpacks and configures, emulated: {why_not}" if why_not
                          else "the host's dpkg unpacks, the target's configures, emulated"))
    return why_not is None


def _dpkg_install_foreign(root: Path, debs: Sequence[Deb], paths: Sequence[str], phases: Phases,
                          env: Mapping[str, str]) -> None:
    """`dpkg --install` of the .debs at PATHS in two steps: the host's dpkg unpacks them natively,
    then the target's configures DEBS in the same order, as --install would have. dpkg's backup
    of its database is left as one --install leaves it, not as it was between the steps."""
    names = [d.name for d in debs]
    with inroot.Tree(root) as tree:
        before = tree.read_bytes(hostdpkg.STATUS)
    with phases.timed(DPKG_UNPACKING):
        unpacked = hostdpkg.unpack(root, paths, env)
    if unpacked != 0:
        raise BuildError(f"dpkg --unpack (the host's dpkg) failed for {', '.join(names)}")
    with phases.timed(DPKG_CONFIGURING):
        result = spawn.chroot_run(root, ["dpkg", "--configure", "--force-depends", "--force-unsafe-io", *names],
                                    env=env, check=False)
    if result.returncode != 0:
        raise BuildError(f"dpkg --configure failed for {', '.join(names)}")
    with inroot.Tree(root) as tree:
        tree.write(hostdpkg.STATUS_BACKUP, before)


def _finish(root: Path, plan: Plan, rest: Sequence[Deb]) -> None:
    """Leave the tree as a user receives it; idempotent, so a diff layer holds only real changes.
    Every path is resolved inside ROOT: the symlinks there are the packages'."""
    with inroot.Tree(root) as tree:
        _ensure_file(tree, "etc/apt/sources.list.d/debian.sources", plan.sources)
        for name, data in plan.keyrings.items():
            _ensure_file(tree, f"etc/apt/keyrings/{name}", bytes.fromhex(data))
        for rel in VOLATILE:
            tree.unlink(rel)
        if tree.exists("etc/machine-id"):
            _ensure_file(tree, "etc/machine-id", "")
        _drop_generated_keys(tree)
        for d in ("var/lib/apt/lists", "var/cache/apt/archives"):
            tree.empty(d, keep={"partial", "lock"})
        if not tree.exists("etc/fstab"):
            _ensure_file(tree, "etc/fstab", FSTAB)
        if tree.exists("usr/bin/apt-get"):
            _apt_state(tree, rest)


def identity_notes(hostname: str, loopback_up: bool) -> list[str]:
    """What the maintainer scripts of a namespace mode get where the sandbox could not give them
    its own host name and a loopback interface that is up (spawn.HOSTNAME): the log's lines."""
    notes = []
    if hostname != spawn.HOSTNAME:
        notes.append(f"maintainer scripts see the host name {hostname}, not {spawn.HOSTNAME}: the kernel refused "
                     "naming the sandbox's (a seccomp filter, as in a podman build step), so a script that writes "
                     "it into the tree (postfix's, ssl-cert's) makes the image differ from machine to machine")
    if not loopback_up:
        notes.append("the sandbox's loopback interface is down: the kernel refused bringing it up, so a script "
                     "that needs it (postfix's newaliases) fails")
    return notes


def _drop_generated_keys(tree: inroot.Tree) -> None:
    """GENERATED_KEYS leave the tree, each kind with a line in the log."""
    for generated in GENERATED_KEYS:
        found = [f"{directory}/{name}" for directory, names in generated.files if tree.is_dir(directory)
                 for name in sorted(tree.listdir(directory)) if names.fullmatch(name)]
        for rel in found:
            tree.unlink(rel)
        if found:
            notice(f"removed {generated.what} (each container would share them, and no two builds would be "
                   f"equal): `{generated.remake}` makes a container its own where it starts")


def _apt_state(tree: inroot.Tree, rest: Sequence[Deb]) -> None:
    """What apt itself leaves after installing: its locks, its partial dirs owned by _apt, auto marks."""
    if states := extended_states(rest):
        _ensure_file(tree, "var/lib/apt/extended_states", states)
    apt_uid = _passwd_uid(tree, "_apt")
    for rel in APT_PARTIAL:
        _ensure_dir(tree, rel, 0o700, 0 if apt_uid is None else apt_uid)
    for rel in APT_LOCKS:
        if not tree.exists(rel):
            _ensure_file(tree, rel, "", mode=0o640)


def _ensure_file(tree: inroot.Tree, rel: str, content: str | bytes, *, mode: int = 0o644) -> None:
    """Write CONTENT only if it differs, so an unchanged file keeps its inode and ctime."""
    data = content.encode() if isinstance(content, str) else content
    if tree.is_file(rel) and tree.read_bytes(rel) == data:
        return
    tree.write(rel, data, mode=mode)


def _ensure_dir(tree: inroot.Tree, rel: str, mode: int, uid: int) -> None:
    fd = tree.opendir(rel, create=True)
    try:
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
        if (st.st_uid, st.st_gid) != (uid, 0):
            os.fchown(fd, uid, 0)
    finally:
        os.close(fd)


def _passwd_uid(tree: inroot.Tree, user: str) -> int | None:
    try:
        lines = tree.read_text("etc/passwd").splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == user and fields[2].isdigit():
            return int(fields[2])
    return None


def _end_group_with(parent: int) -> None:
    """Without a namespace nothing ends dpkg and the scripts when ocistrap is killed: this process
    (the leader of their process group, and the recorder's supervisor) kills the group when
    PARENT, the ocistrap that started it, goes."""
    signal.signal(signal.SIGTERM, lambda *_: os.killpg(0, signal.SIGKILL))
    syscalls.die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:
        os.killpg(0, signal.SIGKILL)


def _main() -> int:
    """Entry point inside the sandbox: layers go to the pipes the plan names;
    stdout becomes stderr so that no child's output goes anywhere unexpected. Maintainer
    scripts run as this uid, so this process, whose root is the host's, is made undumpable
    (not in chrootless mode: there the scripts run as the caller anyway, and the recorder,
    without privilege, must read this process's memory)."""
    parent = os.getppid()
    plan = Plan.loads(sys.stdin.buffer.read())
    if plan.chrootless:
        _end_group_with(parent)
    else:
        syscalls.make_undumpable()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    try:
        run_inner(plan, [os.fdopen(fd, "wb") for fd in plan.layer_fds])
    except OcistrapError as e:
        print(f"{INNER_ERROR}{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
