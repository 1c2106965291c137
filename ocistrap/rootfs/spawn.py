"""Run commands as root of a private user namespace, and in chroots inside it.

``spawn()`` runs on the host as the caller: it starts this module as a small
helper that unshares user, mount, PID, IPC and UTS namespaces, waits while
the caller maps ids (``idmaps``), becomes uid 0, and forks an init (PID 1 of
the new PID namespace) that runs the payload. The helper and the init die
with their parent (PR_SET_PDEATHSIG), and when the init dies the kernel kills
everything in its PID namespace, so no process outlives the caller.

A tree built on disk in a sandbox belongs to subordinate ids the caller
cannot delete, so ``spawn(remove_on_exit=DIR)`` makes the init, which is root
of the namespace, delete DIR whenever the payload ends: also when the caller
is killed (the init then gets SIGTERM instead of SIGKILL as its parent-death
signal); ``scratchdirs`` makes such directories. ``chroot_run`` and
``host_view_run`` run a command of the tree, or of the host against the tree,
from code already inside a sandbox.
"""

import errno
import fcntl
import json
import os
import platform
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from ocistrap.errors import BuildError, OcistrapError
from ocistrap.rootfs import detect, inroot
from ocistrap.rootfs.idmaps import SYSTEM_PATH, IdMaps, _mappers, _write_maps, load_maps, writes_own_maps
from ocistrap.rootfs.innerlog import notice
from ocistrap.rootfs.mounting import PROC_FLAGS, _detach_mounts, _remount_readonly, proc_or_empty
from ocistrap.rootfs.syscalls import (
    CAP_SYS_CHROOT,
    CAP_SYS_PTRACE,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOSUID,
    MS_PRIVATE,
    MS_REC,
    NAMESPACES,
    die_with_parent,
    drop_bounding,
    interface_up,
    libc,
    make_undumpable,
    mount,
    ok_or_raise,
    open_dir,
    try_flock,
    umount,
    unshare,
)

# What a command run in the chroot loses for good (bounding set): leaving the chroot with a
# second chroot(), and reaching a process outside it through ptrace or /proc/PID/root.
CHROOT_DROPPED_CAPS = (CAP_SYS_CHROOT, CAP_SYS_PTRACE)

# Host environment that names a way out (sockets of agents, buses, displays, container
# engines); never passed into the sandbox.
HOST_ENV = frozenset({"SSH_AUTH_SOCK", "SSH_AGENT_PID", "GPG_AGENT_INFO", "DBUS_SESSION_BUS_ADDRESS",
                      "DBUS_SYSTEM_BUS_ADDRESS", "XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY",
                      "XAUTHORITY", "DOCKER_HOST", "CONTAINER_HOST", "PODMAN_HOST", "KRB5CCNAME",
                      "PULSE_SERVER", "SESSION_MANAGER", "TMUX", "STY"})
HOSTNAME = "localhost"
"""The host name maintainer scripts see (the UTS namespace's): postfix's writes it into main.cf,
ssl-cert's into its certificate. The building machine's would make the image differ from machine
to machine and tell who built it; "localhost" is one every /etc/hosts resolves. The network
namespace has its loopback interface up, as a container's has: postfix's newaliases stops
when no interface is. Both are best effort (innerboot.identity_notes says what the scripts get instead)."""
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
    problem = detect.userns_verdict(detect.UsernsProbe(
        "unshare", err, sysctls=sysctls, seccomp=detect.seccomp_filtered(detect.read_proc("status")),
        root=os.geteuid() == 0))
    assert problem is not None
    return problem


def sandbox_env(environ: Mapping[str, str]) -> dict[str, str]:
    """ENVIRON without what points at the host's sockets and sessions (HOST_ENV, and any
    *_SOCK or *_SOCKET)."""
    return {k: v for k, v in environ.items()
            if k not in HOST_ENV and not k.endswith(("_SOCK", "_SOCKET"))}


# ---- spawn: runs on the host ----

def helper_argv(mode: str, *args: str) -> list[str]:
    """Start this module in an isolated interpreter that still finds this package."""
    package_parent = str(Path(__file__).resolve().parents[2])
    boot = (f"import sys; sys.path.insert(0, {package_parent!r}); "
            "from ocistrap.rootfs.spawn import _helper_main; _helper_main(sys.argv[1:])")
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
    if err == errno.EPERM and read_sysctls().get(detect.APPARMOR_SYSCTL) == "1":
        raise BuildError(detect.created_without_capabilities(step, err, read_sysctls()))
    raise BuildError(f"setting up the sandbox failed at {step}: {os.strerror(err)}")


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
    if not writes_own_maps(maps, os.geteuid()):
        _mappers()
    remove = None if remove_on_exit is None else Path(remove_on_exit).resolve()
    keep, init_gone = _removal_fds(remove) if remove is not None else ((), None)
    up_r, up_w = os.pipe()
    down_r, down_w = os.pipe()
    helper_fds = (up_w, down_r, *keep)
    try:
        proc = (subprocess.Popen if init_gone is None else RemovingPopen)(
            helper_argv("run", str(os.getpid()), str(up_w), str(down_r)),
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
    lock = open_dir(path)
    try_flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
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
    """Make a user and mount namespace, map this process's own ids in it and make its mounts
    private; on failure print which step failed and how (detect.UsernsProbe). Then mount a proc of
    a PID namespace made in it (what a container that masks parts of its /proc refuses), and print
    the error if that fails."""
    uid, gid = os.geteuid(), os.getegid()
    step = "unshare"
    try:
        unshare(CLONE_NEWUSER | CLONE_NEWNS)
        step = "map"
        _write_self_maps(uid, gid)
        step = "mount"
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        step = "making a PID namespace"
        unshare(CLONE_NEWPID)
    except OSError as e:
        print(json.dumps({"step": step, "errno": e.errno}), flush=True)  # os._exit flushes nothing
        os._exit(1)
    child = os.fork()
    if child == 0:
        try:
            mount("proc", "/proc", "proc", PROC_FLAGS)
        except OSError as e:
            print(json.dumps({"proc_errno": e.errno}), flush=True)
        os._exit(0)
    os.waitpid(child, 0)
    os._exit(0)


def _write_self_maps(uid: int, gid: int) -> None:
    """Map UID and GID to root of the namespace just made, from inside it: what needs the
    namespace's own capabilities (which AppArmor's restriction withholds)."""
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1\n")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1\n")


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
    _name_host_and_loopback()
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


def _name_host_and_loopback() -> None:
    """HOSTNAME and lo up, where a seccomp filter lets them be (a podman build step's refuses
    sethostname): the inner half says what the scripts get instead (innerboot)."""
    for step in (lambda: socket.sethostname(HOSTNAME), lambda: interface_up("lo")):
        try:
            step()
        except PermissionError:
            pass


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
    notice("processes of the sandbox did not die")


def _remove(path: str) -> None:
    """Delete PATH from inside the namespace: detach what is mounted in it, then remove
    the tree without crossing into another filesystem."""
    _detach_mounts(path)
    try:
        result = subprocess.run(["rm", "-rf", "--one-file-system", "--", path],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                env={"PATH": SYSTEM_PATH}, timeout=REMOVE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        notice(f"cannot remove {path}: {e}")
        return
    if result.returncode != 0:
        notice(f"cannot remove {path} (rm exited with status {result.returncode})")


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
        result = subprocess.run(helper_argv("chroot", str(root), *argv), env=dict(env), input=input,
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
        return subprocess.run(helper_argv("view", str(root), *argv), env=dict(env),
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
        notice(f"cannot run {argv[0]} in {root}: {e.strerror}")
        os._exit(126)
    child = os.fork()
    if child == 0:
        try:
            die_with_parent()
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            NESTED[kind](root)
            os.execvp(argv[0], argv)
        except OSError as e:
            notice(f"cannot run {argv[0]} in {root}: {e.strerror}")
            os._exit(127 if e.errno == errno.ENOENT else 126)
        except OcistrapError as e:
            notice(f"cannot run {argv[0]} in {root}: {e}")
        os._exit(126)
    _, status = os.waitpid(child, 0)
    os._exit(_exit_code(status))


def _enter_chroot(root: str) -> None:
    """A /proc of this PID namespace; an empty one where a container's masks forbid it (prepare_chroot said so)."""
    proc_or_empty(os.path.join(root, "proc"), quiet=True)
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
        proc_or_empty(os.path.join(VIEW, proc), quiet=True)
    os.chdir(VIEW)
    ok_or_raise(libc.syscall(_PIVOT_ROOT[platform.machine()], b".", b"."))
    umount(".", MNT_DETACH)
    os.chdir("/")
    drop_bounding((CAP_SYS_PTRACE,))


NESTED: dict[str, Callable[[str], None]] = {"chroot": _enter_chroot, "view": _enter_view}
