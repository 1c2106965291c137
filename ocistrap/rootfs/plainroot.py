"""Root mode: the bootstrap as uid 0 with a container's default capabilities and no namespace.

Without CAP_SYS_ADMIN nothing can be mounted, so the staging root is a directory on disk,
the packages are copied into it instead of bind-mounted, the chroot gets device
nodes made with mknod instead of the host's, and no /proc, /sys or devpts. Every process of
the build is in one session and process group without a terminal, which dies with the caller
and is killed when the build ends; owners are real, so nothing is recorded.
"""

import errno
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ocistrap.errors import BuildError
from ocistrap.rootfs import inroot
from ocistrap.rootfs.spawn import CHROOT_DROPPED_CAPS, sandbox_env
from ocistrap.rootfs.syscalls import die_with_parent, drop_bounding

# What dpkg's maintainer scripts write to and read from; char devices (major, minor) as on every Linux.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}
CHROOT_DIRS = ("dev", "proc", "sys")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}


class GroupPopen(subprocess.Popen):
    """The bootstrap's first process, leader of a process group that holds every process of
    the build: kill() and terminate() reach all of them."""

    def send_signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        status = super().wait(timeout)
        self.send_signal(signal.SIGKILL)  # what a maintainer script left running
        return status


def launch(argv: Sequence[str], *, stdin: Any = subprocess.DEVNULL, stdout: Any = None, stderr: Any = None,
           pass_fds: Sequence[int] = (), env: Mapping[str, str] | None = None, **_ignored: Any) -> GroupPopen:
    """Start ARGV as this process (root), in a session of its own (no controlling terminal to
    reach through /dev/tty) whose process group dies with the calling thread; the counterpart of spawn.spawn, whose id maps and removal root mode needs
    not (the caller removes the staging directory)."""
    return GroupPopen(list(argv), stdin=stdin, stdout=stdout, stderr=stderr, pass_fds=tuple(pass_fds),
                      env=sandbox_env(os.environ if env is None else env), start_new_session=True,
                      preexec_fn=lambda: die_with_parent(signal.SIGTERM))


def clean_up_when_orphaned(scratch: Path) -> None:
    """In the inner half: when the caller dies (the SIGTERM launch asked for), kill the rest of the
    build and remove SCRATCH, the staging directory, as the sandbox's init does in the other
    modes; the caller removes it in every other case."""
    parent = os.getppid()

    def on_term(signum: int, _frame: object) -> None:
        if os.getppid() == parent:
            raise SystemExit(128 + signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for _ in range(3):
            _kill_group_but_me()
        shutil.rmtree(scratch, ignore_errors=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)


def _kill_group_but_me() -> None:
    """SIGKILL every other process of this process group (this one leads its session, so it cannot
    leave the group to killpg it)."""
    me, group = os.getpid(), os.getpgid(0)
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.getpgid(int(name)) == group:
                os.kill(int(name), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


SHM = Path("/dev/shm")
MEMORY_STAGING_FREE = 2 << 30


def memory_staging(mountinfo: str, free: int, path: Path = SHM, needed: int = MEMORY_STAGING_FREE, *,
                   device_nodes: bool = False) -> Path | None:
    """PATH if it is a tmpfs (per MOUNTINFO, /proc/self/mountinfo; the last mount there is the one
    seen) with FREE >= NEEDED bytes, mounted without noexec (and without nodev for DEVICE_NODES,
    root mode's): root mode and chrootless mode cannot mount the tmpfs the other modes stage in, and
    dpkg's fsyncs of its database make a disk slower by half (bookworm minbase here); a container's
    64 MiB /dev/shm is too small, and Docker mounts even a larger one (--shm-size) noexec and nodev,
    where no maintainer script could run (systemd mounts a host's nodev)."""
    seen = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" in fields and len(fields) > 5 and fields[4] == str(path):
            seen = fields
    refused = {"noexec", "nodev"} if device_nodes else {"noexec"}
    if seen is None or seen[seen.index("-") + 1] != "tmpfs" or set(seen[5].split(",")) & refused:
        return None
    return path if free >= needed else None


def staging_problem(path: Path, flags: int, *, device_nodes: bool) -> str | None:
    """Why no tree can be built in PATH, whose file system has statvfs FLAGS (None if it can): without
    a namespace's tmpfs dpkg and the maintainer scripts run from the tree itself, and root mode's
    /dev nodes (DEVICE_NODES) are opened there."""
    if flags & os.ST_NOEXEC:
        return f"{path} is on a file system mounted noexec: dpkg's maintainer scripts cannot run from a tree staged there"
    if device_nodes and flags & os.ST_NODEV:
        return (f"{path} is on a file system mounted nodev: the device nodes root mode makes in a tree staged there "
                "(/dev/null) cannot be opened")
    return None


def staging_base(*, device_nodes: bool) -> Path | None:
    """memory_staging for this host."""
    try:
        st = os.statvfs(SHM)
        return memory_staging(Path("/proc/self/mountinfo").read_text(), st.f_bavail * st.f_frsize,
                              device_nodes=device_nodes)
    except OSError:
        return None


def _enter(root: str) -> None:
    """In the child, before exec: into ROOT, without the capabilities that leave it (where root
    may drop them: CAP_SETPCAP)."""
    die_with_parent()
    os.chroot(root)
    os.chdir("/")
    try:
        drop_bounding(CHROOT_DROPPED_CAPS)
    except OSError as e:
        if e.errno != errno.EPERM:
            raise


def chroot_run(root: Path, argv: Sequence[str], *, env: Mapping[str, str], check: bool = True,
               input: bytes | None = None, stdout: Any = None, stderr: Any = None,
               pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess:
    """spawn.chroot_run for root mode: ARGV chrooted into ROOT (prepared), in this process group."""
    try:
        result = subprocess.run(list(argv), env=dict(env), input=input,
                                stdin=subprocess.DEVNULL if input is None else None, stdout=stdout,
                                stderr=stderr, pass_fds=tuple(pass_fds), preexec_fn=lambda: _enter(str(root)))
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"cannot run {argv[0]} in {root}: {e}") from e
    if check and result.returncode != 0:
        raise BuildError(f"`{' '.join(argv)}` failed in {root} with exit status {result.returncode}")
    return result


@contextmanager
def prepared(root: Path, debs_dir: str) -> Iterator[None]:
    """ROOT with the /dev maintainer scripts need, made with mknod, and an empty directory DEBS_DIR
    (relative to ROOT) for the packages (provide); all of it gone again afterwards."""
    with inroot.Tree(root) as tree:
        for d in CHROOT_DIRS:
            _real_dir(tree, d)
        tree.mkdir(debs_dir)
        made = _make_devices(tree)
    try:
        yield
    finally:
        with inroot.Tree(root) as tree:
            tree.empty(debs_dir)
            tree.rmdir(debs_dir)
            _remove_devices(tree, made)


def _real_dir(tree: inroot.Tree, rel: str) -> None:
    st = tree.lstat(rel)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise BuildError(f"/{rel} in {tree.root} is not a directory; refusing to make devices in it")
    if st is None:
        tree.mkdir(rel, 0o755)


def _make_devices(tree: inroot.Tree) -> list[str]:
    """The nodes and links of DEVICES and DEV_LINKS that the tree lacks; the ones made."""
    made = []
    for name, (major, minor) in DEVICES.items():
        if tree.lstat(f"dev/{name}") is not None:
            continue
        with tree.entry(f"dev/{name}") as (fd, base):
            try:
                os.mknod(base, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=fd)
                os.chmod(base, 0o666, dir_fd=fd)
            except OSError as e:
                raise BuildError(f"cannot make the device node /dev/{name}: {e.strerror}",
                                 hint="root mode needs CAP_MKNOD") from e
        made.append(name)
    for name, target in DEV_LINKS.items():
        if tree.lstat(f"dev/{name}") is None:
            tree.symlink(target, f"dev/{name}")
            made.append(name)
    return made


def _remove_devices(tree: inroot.Tree, made: Sequence[str]) -> None:
    for name in made:
        node = tree.lstat(f"dev/{name}")
        if node is not None and (stat.S_ISCHR(node.st_mode) or stat.S_ISLNK(node.st_mode)):
            tree.unlink(f"dev/{name}")


def provide(root: Path, debs_dir: str, paths: Sequence[str]) -> None:
    """Copy the .deb files PATHS to DEBS_DIR in ROOT (copies, not links: what runs in the tree
    as root could write through a link into the files of the build)."""
    with inroot.Tree(root) as tree:
        for path in paths:
            rel = f"{debs_dir}/{os.path.basename(path)}"
            if tree.lstat(rel) is not None:
                continue
            with tree.entry(rel) as (fd, base):
                with open(path, "rb") as src, open(os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644,
                                                           dir_fd=fd), "wb") as dst:
                    _copy(src.fileno(), dst.fileno())


def _copy(src: int, dst: int) -> None:
    """All of SRC into DST by sendfile, in the kernel: five times faster here than reading and writing
    the expanded .debs (hundreds of MB for a large package set) through Python."""
    while os.sendfile(dst, src, None, 1 << 30):
        pass
