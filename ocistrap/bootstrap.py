"""Install a locked package set into a staging root inside the sandbox, then stream it out.

Two halves talk through pipes: ``bootstrap()`` runs on the host as the
caller, starts ``python -m ocistrap.bootstrap`` inside the user namespace with
the plan on stdin, and hands the tar stream it writes on stdout to a sink.
The inner half (``run_inner``) is "root" in the namespace: it unpacks the
essential packages, installs them with dpkg in a chroot (maintainer scripts
run, owners are real), installs the rest in Pre-Depends order, resets host
identity files, and writes the tree as a tar stream. The tree never appears
on the host: it lives on a tmpfs of the namespace (or in --workdir, removed
from inside).
"""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Generic, NamedTuple, NoReturn, TypeVar

from ocistrap import doctor, expand, hostdpkg, inroot, layer, log, recorder, resolve, sandbox, slim, unpack
from ocistrap.errors import BuildError, OcistrapError

if TYPE_CHECKING:  # the inner half starts faster without the lockfile's schema validator
    from ocistrap.lock import LockedArchive

T = TypeVar("T")

DEBS_MOUNT = "var/cache/ocistrap-debs"
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
MERGED_USR_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libo32", "libx32")
"""The directories usrmerge's convert-usrmerge moves into /usr."""
APT_LOCKS = ("var/cache/apt/archives/lock", "var/lib/apt/lists/lock")
APT_PARTIAL = ("var/cache/apt/archives/partial", "var/lib/apt/lists/partial")
# the unpacking child's answers: DONE, or one of the others followed by why it stopped
DONE, REFUSED, FAILED = "done", "refused:", "failed:"
MESSAGE_SIZE = 1 << 16
INNER_ERROR = "ocistrap (inside the sandbox): "


@dataclass(frozen=True)
class Deb:
    """A verified .deb in the cache and what ordering needs to know of it."""

    name: str
    path: str
    pre_depends: str = ""
    provides: str = ""
    arch: str = ""
    auto: bool = False
    layer: int = 0


@dataclass(frozen=True)
class Plan:
    """Everything the inner half needs; crosses the namespace boundary as JSON."""

    arch: str
    essential: list[Deb]
    rest: list[Deb]
    sources: str
    staging: str
    tmpfs: bool
    epoch: int
    debs_dir: str
    keyrings: dict[str, str] = field(default_factory=dict)
    layer_count: int = 1
    layer_fds: list[int] = field(default_factory=list)
    slim: bool = False
    record_owners: bool = False
    ready_fd: int = -1
    phases_fd: int = -1

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> "Plan":
        raw = json.loads(data)
        raw["essential"] = [Deb(**d) for d in raw["essential"]]
        raw["rest"] = [Deb(**d) for d in raw["rest"]]
        return cls(**raw)


def extended_states(debs: Iterable[Deb]) -> str:
    """apt's record of automatically installed packages, so `apt autoremove` works in the image."""
    return "".join(f"Package: {d.name}\nArchitecture: {d.arch}\nAuto-Installed: 1\n\n"
                   for d in sorted(debs, key=lambda d: d.name) if d.auto)


def sources_text(archives: Sequence["LockedArchive"], components: Sequence[str], signed_by: Sequence[str]) -> str:
    """The deb822 apt sources of the image: where its packages came from, one stanza per mirror."""
    suites: dict[str, list[str]] = {}
    for archive in archives:
        suites.setdefault(archive.mirror, []).append(archive.suite)
    return "\n".join(f"Types: deb\nURIs: {uri}\nSuites: {' '.join(names)}\n"
                     f"Components: {' '.join(components)}\nSigned-By: {' '.join(signed_by)}\n"
                     for uri, names in suites.items())


def merged_usr_aliases(plan: Plan) -> tuple[str, ...]:
    """The top-level directories to unpack the essential set through as merged /usr has them
    (``bin -> usr/bin``): usrmerge's, when the plan installs usrmerge, none otherwise.

    usrmerge's postinst converts an unmerged tree to that same end, moving every
    file of /bin, /sbin and /lib with cp and rm, emulated for a foreign
    architecture; on a merged tree it finds nothing to do, as after debootstrap.
    """
    names = {d.name for d in (*plan.essential, *plan.rest)}
    return MERGED_USR_DIRS if "usrmerge" in names else ()


def _groups(deb: Deb, field: str) -> tuple[tuple[str, ...], ...]:
    groups = resolve.parse_relations(getattr(deb, field), arch=deb.arch or "all",
                                     what=f"{field.replace('_', '-')} of {deb.name}")
    return tuple(tuple(alt.name for alt in group) for group in groups)


def install_batches(rest: Sequence[Deb], installed: Iterable[Deb]) -> list[list[Deb]]:
    """Split Rest into dpkg --install calls so that every Pre-Depends is configured first.

    A package goes into the first batch after all of its Pre-Depends are
    provided by earlier batches (or the essential set); dpkg orders
    configuration inside a batch by Depends itself.
    """
    available = set()
    for deb in installed:
        available |= _provided(deb)
    remaining = list(rest)
    batches: list[list[Deb]] = []
    while remaining:
        ready = [d for d in remaining if all(available.intersection(group)
                                             for group in _groups(d, "pre_depends"))]
        if not ready:
            names = ", ".join(d.name for d in remaining)
            raise BuildError(f"cannot order the installation of {names}: their Pre-Depends "
                                 f"are not in the locked package set")
        batches.append(ready)
        for deb in ready:
            available |= _provided(deb)
        remaining = [d for d in remaining if d not in ready]
    return batches


def _provided(deb: Deb) -> set[str]:
    return {deb.name}.union(*_groups(deb, "provides"))


# ---- outer half: runs on the host as the caller ----

class Installed(NamedTuple, Generic[T]):
    """What SINK made of each layer, and the mode that built them (a fallback holds for
    the next architecture)."""

    layers: list[T]
    mode: sandbox.BuildMode


def bootstrap(plan: Plan, sink: Callable[[BinaryIO], T], *, mode: sandbox.BuildMode,
              remove_on_exit: Path | None = None,
              ready: Callable[[], Iterable[object]] | None = None) -> Installed[T]:
    """Run the plan inside a fresh sandbox and feed each layer's tar stream to SINK, in order.

    MODE (sandbox.decide_mode) says how the sandbox runs; when newuidmap refuses the
    caller's ranges, its fallback (if auto left one) takes over. READY, if given,
    yields once per package of the plan (essential first, then the rest) as its
    file becomes usable: the sandbox starts before the last ones are expanded.
    """
    while True:
        log.get().info(f"sandbox: {mode.name} mode ({mode.reason})")
        try:
            layers = RUNNERS[mode.kind.runner](replace(plan, record_owners=mode.records_owners), sink,
                                               maps=mode.maps, remove_on_exit=remove_on_exit, ready=ready)
            return Installed(layers, mode)
        except sandbox.MapRefused as e:
            mode = mode.fallback(e)


def _bootstrap(plan: Plan, sink: Callable[[BinaryIO], T], *, maps: sandbox.IdMaps,
               remove_on_exit: Path | None, ready: Callable[[], Iterable[object]] | None) -> list[T]:
    """Each layer travels through its own pipe, so the streams need no framing:
    the inner half closes one pipe before it starts writing the next. The
    sandbox deletes REMOVE_ON_EXIT (the staging directory) when it ends,
    even if this process is killed.
    """
    out = log.get()
    pipes = [os.pipe() for _ in range(plan.layer_count)]
    announcer = _Announcer(ready)
    phases_r, phases_w = os.pipe()
    plan = replace(plan, layer_fds=[w for _, w in pipes], ready_fd=announcer.inner_fd, phases_fd=phases_w)
    child_fds = [*plan.layer_fds, *announcer.inner_fds, phases_w]
    readers = [os.fdopen(r, "rb") for r, _ in pipes]
    phases = os.fdopen(phases_r, "rb")
    with tempfile.TemporaryFile(prefix="ocistrap-bootstrap-", suffix=".log") as errors:
        try:
            proc = sandbox.spawn([sys.executable, "-m", "ocistrap.bootstrap"], stdin=subprocess.PIPE,
                                 stdout=None if out.debug else errors,
                                 stderr=None if out.debug else errors, pass_fds=child_fds,
                                 maps=maps, remove_on_exit=remove_on_exit)
        except BaseException:
            for reader in readers:
                reader.close()
            phases.close()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
            announcer.start()
        assert proc.stdin is not None
        progress = _ConfigureProgress(errors, len(plan.essential) + len(plan.rest))
        try:
            proc.stdin.write(plan.dumps())
            proc.stdin.close()
            progress.start()
            results = []
            for reader in readers:
                with out.step("unpacking and configuring"):
                    reader.peek(1)  # the inside streams a layer once its tree is ready
                    for name, seconds in read_phases(phases.readline()):
                        out.record(name, seconds)
                results.append(sink(reader))
        except BaseException as e:
            proc.kill()
            proc.wait()
            announcer.raise_failure()
            if isinstance(e, OcistrapError) and (inner := _inner_error(errors)):
                # the stream ended early because the inside failed, and said why
                raise BuildError(f"installing the packages failed: {inner}",
                                     hint="run with --debug to see the whole log") from e
            raise
        finally:
            progress.stop()
            for reader in readers:
                reader.close()
            phases.close()
        status = proc.wait()
        if status != 0:
            announcer.raise_failure()
            raise BuildError(f"installing the packages failed (exit status {status}): "
                                 f"{_tail(errors)}", hint="run with --debug to see the whole log")
    return results


# sandbox.ModeKind.runner -> how that kind runs a plan.
RUNNERS: dict[str, Callable[..., list[Any]]] = {"namespace": _bootstrap}


class _Announcer:
    """Tells the inner half, one byte per package in plan order, which packages are ready. Its
    thread owns the pipe's write end and closes it when done (at the end, when the inside is
    gone, or when making a package failed, whose error the outer half then raises)."""

    def __init__(self, ready: Callable[[], Iterable[object]] | None) -> None:
        self.ready = ready
        self.error: BaseException | None = None
        self.inner_fds: list[int] = []
        self.inner_fd = -1
        if ready is not None:
            self.inner_fd, self.fd = os.pipe()
            self.inner_fds = [self.inner_fd]

    def start(self) -> None:
        if self.ready is not None:
            threading.Thread(target=self._run, name="announce-ready", daemon=True).start()

    def _run(self) -> None:
        assert self.ready is not None
        try:
            for _ in self.ready():
                os.write(self.fd, b".")
        except BrokenPipeError:
            pass
        except BaseException as e:
            self.error = e
        finally:
            os.close(self.fd)

    def raise_failure(self) -> None:
        """Raise the error that stopped the packages from being made ready, if one did, with the
        cause it had (a full disk, say), not the early end of the layer stream it led to."""
        if isinstance(self.error, OcistrapError):
            raise self.error


SETTING_UP = b"Setting up "


def count_configured(chunk: bytes) -> tuple[int, bytes]:
    """How many complete lines of CHUNK are dpkg's "Setting up PACKAGE" (one per package
    configured), and the incomplete last line to prepend to the next chunk."""
    *lines, rest = chunk.split(b"\n")
    return sum(line.startswith(SETTING_UP) for line in lines), rest


class _ConfigureProgress:
    """Packages configured n/N for the live display, read from dpkg's output in the inner
    half's log while it grows (the log is all the outer half sees of the inside)."""

    INTERVAL = 0.25

    def __init__(self, log_file: BinaryIO, total: int) -> None:
        self.fd = log_file.fileno()
        self.meter = log.get().meter(total)
        self.offset = 0
        self.rest = b""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="configure-progress", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        while not self.done.wait(self.INTERVAL):
            data = os.pread(self.fd, 1 << 20, self.offset)
            if not data:
                continue
            self.offset += len(data)
            count, self.rest = count_configured(self.rest + data)
            if count:
                self.meter.add(items=count)


def _inner_error(log_file: BinaryIO) -> str:
    """The error the inner half printed before it gave up ("" if none)."""
    log_file.seek(0)
    lines = log_file.read().decode("utf-8", "replace").splitlines()
    return next((line for line in reversed(lines) if line.startswith(INNER_ERROR)), "")


def _tail(log_file: BinaryIO, lines: int = 1) -> str:
    log_file.seek(0)
    text = log_file.read().decode("utf-8", "replace").strip().splitlines()
    useful = [line for line in text if line.strip()]
    return " | ".join(useful[-lines:]) if useful else "no output"


# ---- inner half: runs as root inside the user namespace ----

def run_inner(plan: Plan, outs: Sequence[BinaryIO]) -> None:
    """Build the tree described by PLAN, writing the base layer and each diff layer to OUTS."""
    root = Path(plan.staging)
    sandbox.mount_staging(root, tmpfs=plan.tmpfs)
    owners = _start_recorder(root.parent) if plan.record_owners else None
    ready = _Ready(plan.ready_fd)
    phases = Phases(plan.phases_fd)
    try:
        _setup(root, plan)
        aliased = merged_usr_aliases(plan)
        with phases.timed(UNPACKING_ESSENTIAL):
            _extract_all(plan.essential, root, ready, aliased)
        unpack.alias_usr_only(root, aliased)
        if plan.slim:
            slim.prune(root)
        installed = list(plan.essential)
        before: layer.Snapshot | None = None
        for number, out in enumerate(outs):
            group = [d for d in plan.rest if d.layer == number]
            with _chroot(root, plan, first_round=number == 0):
                if number == 0:
                    _dpkg_install(root, plan.essential, phases)
                ready.wait(len(plan.essential) + len(plan.rest))
                for batch in install_batches(group, installed):
                    _dpkg_install(root, batch, phases)
            installed += group
            _finish(root, plan, [d for d in installed if d in plan.rest])
            restat = owners.records().apply if owners else layer.unchanged
            phases.report()
            with out:
                if before is None:
                    layer.write_tree(root, out, epoch=plan.epoch, restat=restat)
                else:
                    layer.write_diff(root, before, out, epoch=plan.epoch, restat=restat)
            before = layer.snapshot(root, restat=restat)
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


def _start_recorder(scratch: Path) -> recorder.Recorder:
    """Record owners and devices from here on (see ocistrap.recorder); the supervisor finds
    processes through a proc file system of this PID namespace, outside the tree."""
    proc = scratch / "proc"
    proc.mkdir(exist_ok=True)
    sandbox.mount_proc(proc)
    return recorder.start(str(proc))


@contextmanager
def _chroot(root: Path, plan: Plan, *, first_round: bool) -> Iterator[None]:
    """The chroot as maintainer scripts need it, for one round of dpkg; gone again afterwards.

    The first round installs dpkg itself, so start-stop-daemon is moved aside as
    mmdebstrap does; later rounds cover it with a bind mount instead, which leaves
    the real file untouched and so out of the diff layers.
    """
    with inroot.Tree(root) as tree:
        tree.mkdir(DEBS_MOUNT)
        debs = Path(tree.mount_point(DEBS_MOUNT))
    sandbox.bind_mount(Path(plan.debs_dir), debs, readonly=True)
    try:
        sandbox.prepare_chroot(root)
        try:
            _divert_daemons(root, move=first_round)
            yield
            _undivert_daemons(root)
        finally:
            sandbox.release_chroot(root)
    finally:
        sandbox.unmount(debs)
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
                 aliased: Sequence[str] = ()) -> None:
    """Unpack DEBS' data in order as mmdebstrap does (keeping merged-/usr symlinks, making
    ALIASED ones when missing), with the
    member checks of ocistrap.unpack, in a child chrooted into ROOT: a member that got past
    them still could not reach the host files that root of the namespace may write.

    DEBS are expanded (ocistrap.expand): the child reads each plain data.tar straight from
    the file, through a descriptor positioned at it."""
    pid, ours = sandbox.fork_with_channel(lambda channel: _unpacker(root, channel, aliased),
                                          socket.SOCK_SEQPACKET)
    try:
        with ours:
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


def _unpacker(root: Path, channel: socket.socket, aliased: Sequence[str]) -> NoReturn:
    """The chrooted child: unpack each stream the parent sends, answer DONE or why it failed.

    It runs only code already imported: after chroot() the host's Python is out of reach.
    """
    try:
        os.chroot(root)
        os.chdir("/")
        os.umask(0o022)
        while True:
            message, fds, _, _ = socket.recv_fds(channel, MESSAGE_SIZE, 1)
            if not fds:
                break
            size, name = message.decode().split(" ", 1)
            with os.fdopen(fds[0], "rb") as stream:
                unpack.unpack(expand.Bounded(stream, int(size)), "/", package=name,  # type: ignore[arg-type]
                              aliased=aliased)
            channel.send(DONE.encode())
    except unpack.UnpackError as e:
        channel.send((REFUSED if e.refused else FAILED).encode() + str(e).encode())
    except BaseException as e:
        traceback.print_exc()
        channel.send(f"{FAILED}unpacking failed: {type(e).__name__}: {e}".encode())
    finally:
        os._exit(0)


POLICY, SSD, SSD_REAL = "usr/sbin/policy-rc.d", "sbin/start-stop-daemon", "sbin/start-stop-daemon.REAL"


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
        sandbox.bind_mount(fake, Path(tree.mount_point(SSD)), readonly=True)


def _undivert_daemons(root: Path) -> None:
    with inroot.Tree(root) as tree:
        tree.unlink(POLICY)
        if tree.exists(SSD_REAL):
            tree.rename(SSD_REAL, SSD)
        elif (root.parent / "fake-start-stop-daemon").exists():
            sandbox.unmount(Path(tree.mount_point(SSD)))
            (root.parent / "fake-start-stop-daemon").unlink()


def _dpkg_install(root: Path, debs: Sequence[Deb], phases: Phases) -> None:
    if not debs:
        return
    paths = [f"/{DEBS_MOUNT}/{Path(d.path).name}" for d in debs]
    # no fsync: the staging root is thrown away if anything fails
    if _host_dpkg_unpacks(root, debs):
        _dpkg_install_foreign(root, debs, paths, phases)
        return
    returncode = _dpkg_timed(root, ["--install", "--force-depends", "--force-unsafe-io", *paths], phases)
    if returncode != 0:
        raise BuildError(f"dpkg --install failed for {', '.join(d.name for d in debs)}")


CONFIGURE_STARTS = b"processing: configure: "


def _dpkg_timed(root: Path, args: Sequence[str], phases: Phases) -> int:
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
        result = sandbox.chroot_run(root, ["dpkg", f"--status-fd={status_w}", *args], env=CHROOT_ENV, check=False,
                                    pass_fds=(status_w,))
    finally:
        os.close(status_w)
        watcher.join()
    end = time.monotonic()
    boundary = configuring[0] if configuring else end
    phases.add(DPKG_UNPACKING, boundary - start)
    phases.add(DPKG_CONFIGURING, end - boundary)
    return result.returncode


def _host_dpkg_unpacks(root: Path, debs: Sequence[Deb]) -> bool:
    """True if the host's dpkg is to unpack DEBS, packages of a foreign architecture
    (ocistrap.hostdpkg); the log says which dpkg does what, and why."""
    arch = debs[0].arch
    if not arch or arch == doctor.native_arch():
        return False
    dpkg = next((d.path for d in debs if d.name == "dpkg"), None)
    why_not = hostdpkg.refusal(hostdpkg.probe(root, CHROOT_ENV), arch, hostdpkg.target_version(root, dpkg))
    print(f"ocistrap: {arch}: " + (f"the target's dpkg unpacks and configures, emulated: {why_not}" if why_not
                                   else "the host's dpkg unpacks, the target's configures, emulated"),
          file=sys.stderr, flush=True)
    return why_not is None


def _dpkg_install_foreign(root: Path, debs: Sequence[Deb], paths: Sequence[str], phases: Phases) -> None:
    """`dpkg --install` of the .debs at PATHS in two steps: the host's dpkg unpacks them natively,
    then the target's configures DEBS in the same order, as --install would have. dpkg's backup
    of its database is left as one --install leaves it, not as it was between the steps."""
    names = [d.name for d in debs]
    with inroot.Tree(root) as tree:
        before = tree.read_bytes(hostdpkg.STATUS)
    with phases.timed(DPKG_UNPACKING):
        unpacked = hostdpkg.unpack(root, paths, CHROOT_ENV)
    if unpacked != 0:
        raise BuildError(f"dpkg --unpack (the host's dpkg) failed for {', '.join(names)}")
    with phases.timed(DPKG_CONFIGURING):
        result = sandbox.chroot_run(root, ["dpkg", "--configure", "--force-depends", "--force-unsafe-io", *names],
                                    env=CHROOT_ENV, check=False)
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
        for d in ("var/lib/apt/lists", "var/cache/apt/archives"):
            tree.empty(d, keep={"partial", "lock"})
        if not tree.exists("etc/fstab"):
            _ensure_file(tree, "etc/fstab", FSTAB)
        if tree.exists("usr/bin/apt-get"):
            _apt_state(tree, rest)


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


def _main() -> int:
    """Entry point inside the sandbox: layers go to the pipes the plan names;
    stdout becomes stderr so that no child's output goes anywhere unexpected. Maintainer
    scripts run as this uid, so this process, whose root is the host's, is made undumpable."""
    sandbox.make_undumpable()
    plan = Plan.loads(sys.stdin.buffer.read())
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
