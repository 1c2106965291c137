"""Install a locked package set into a staging root inside the sandbox, then stream it out.

Two halves talk through pipes: ``bootstrap()`` runs on the host as the
caller, starts ``python -m ocistrap.rootfs.innerboot`` inside the user namespace with
the plan on stdin, and hands the tar stream it writes on stdout to a sink.
The inner half (``run_inner``) is "root" in the namespace: it unpacks the
essential packages, installs them with dpkg in a chroot (maintainer scripts
run, owners are real), installs the rest in Pre-Depends order, resets host
identity files, and writes the tree as a tar stream. The tree never appears
on the host: it lives on a tmpfs of the namespace (or in --workdir, removed
from inside).
"""

import functools
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Generic, NamedTuple, TypeVar

from ocistrap import hostarch, log
from ocistrap.errors import BuildError, OcistrapError
from ocistrap.rootfs import buildmode, idmaps, plainroot, spawn
from ocistrap.rootfs.bootplan import Plan
from ocistrap.rootfs.innerboot import read_phases
from ocistrap.rootfs.innerlog import INNER_ERROR, NOTICE

T = TypeVar("T")


# ---- outer half: runs on the host as the caller ----

class Installed(NamedTuple, Generic[T]):
    """What SINK made of each layer, and the mode that built them (a fallback holds for
    the next architecture)."""

    layers: list[T]
    mode: buildmode.BuildMode


def bootstrap(plan: Plan, sink: Callable[[BinaryIO], T], *, mode: buildmode.BuildMode,
              remove_on_exit: Path | None = None,
              ready: Callable[[], Iterable[object]] | None = None) -> Installed[T]:
    """Run the plan inside a fresh sandbox and feed each layer's tar stream to SINK, in order.

    MODE (buildmode.decide_mode) says how the sandbox runs; when newuidmap refuses the
    caller's ranges, its fallback (if auto left one) takes over. READY, if given,
    yields once per package of the plan (essential first, then the rest) as its
    file becomes usable: the sandbox starts before the last ones are expanded.
    """
    while True:
        log.get().info(f"sandbox: {mode.name} mode ({mode.reason})")
        try:
            kind = mode.kind
            layers = RUNNERS[kind.runner](replace(plan, record_owners=mode.records_owners, mounts=kind.namespace,
                                                  tmpfs=plan.tmpfs and kind.namespace), sink,
                                          maps=mode.maps, remove_on_exit=remove_on_exit, ready=ready)
            return Installed(layers, mode)
        except idmaps.MapRefused as e:
            mode = mode.fallback(e)


def _bootstrap(plan: Plan, sink: Callable[[BinaryIO], T], *, maps: idmaps.IdMaps,
               remove_on_exit: Path | None, ready: Callable[[], Iterable[object]] | None,
               launch: Callable[..., subprocess.Popen] = spawn.spawn) -> list[T]:
    """Each layer travels through its own pipe, so the streams need no framing:
    the inner half closes one pipe before it starts writing the next. The
    sandbox deletes REMOVE_ON_EXIT (the staging directory) when it ends,
    even if this process is killed. LAUNCH starts the inner half: in a sandbox
    (spawn.spawn), or as root without one (plainroot.launch).
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
            proc = launch([sys.executable, "-m", "ocistrap.rootfs.innerboot"], stdin=subprocess.PIPE,
                          stdout=errors, stderr=errors, pass_fds=child_fds,
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
        progress = _InnerLog(errors, len(plan.essential) + len(plan.rest))
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


class _HostGroup(subprocess.Popen):
    """The inner half started with no namespace, in a process group of its own: kill() ends the
    group (the recorder, the bootstrap, dpkg and the maintainer scripts), not just its leader."""

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_on_host(argv: list[str], *, maps: idmaps.IdMaps, remove_on_exit: Path | None,
                   **popen: Any) -> subprocess.Popen:
    """spawn.spawn's counterpart for chrootless mode: the inner half runs here, as the caller;
    the staging directory is the caller's to remove (the pipeline's scratch directory)."""
    del maps, remove_on_exit
    try:
        return _HostGroup(argv, start_new_session=True, **popen)
    except OSError as e:
        raise BuildError(f"cannot start the bootstrap: {e.strerror}") from e


def _bootstrap_chrootless(plan: Plan, sink: Callable[[BinaryIO], T], **kwargs: Any) -> list[T]:
    """No namespace: the host's dpkg installs into the staging directory from outside (see
    innerboot, Plan.chrootless), the recorder keeping owners and devices. The host's dpkg
    installs only packages of its own architecture."""
    native = hostarch.native_arch()
    if plan.arch != native:
        raise BuildError(f"chrootless mode builds only this host's architecture ({native}), not {plan.arch}",
                         hint=f"build {plan.arch} with --mode unshare or single-uid (user namespaces and qemu-user)")
    return _bootstrap(replace(plan, chrootless=True, tmpfs=False), sink, launch=_start_on_host, **kwargs)


# buildmode.ModeKind.runner -> how that kind runs a plan.
RUNNERS: dict[str, Callable[..., list[Any]]] = {"namespace": _bootstrap,
                                                "root": functools.partial(_bootstrap, launch=plainroot.launch),
                                                "chrootless": _bootstrap_chrootless}


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


def complete_lines(chunk: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines of CHUNK, and the incomplete last one to prepend to the next chunk."""
    *lines, rest = chunk.split(b"\n")
    return lines, rest


def count_configured(lines: Iterable[bytes]) -> int:
    """How many of LINES are dpkg's "Setting up PACKAGE" (one per package configured)."""
    return sum(line.startswith(SETTING_UP) for line in lines)


class _InnerLog:
    """Follows the inner half's log, all the outer half sees of the inside, while it grows:
    packages configured n/N for the live display, the inside's own notices ("ocistrap: ...",
    which dpkg unpacks a foreign architecture, a /sys left empty) as messages of the log and,
    with --debug, every other line as a detail (the log stays whole for the error the inside
    gives up with, and JSON output stays one object per line)."""

    INTERVAL = 0.25

    def __init__(self, log_file: BinaryIO, total: int) -> None:
        self.fd = log_file.fileno()
        self.out = log.get()
        self.meter = self.out.meter(total)
        self.offset = 0
        self.rest = b""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="inner-log", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        while not self.done.wait(self.INTERVAL):
            self._follow()
        self._follow()
        if self.rest:
            self._show([self.rest])

    def _follow(self) -> None:
        while data := os.pread(self.fd, 1 << 20, self.offset):
            self.offset += len(data)
            lines, self.rest = complete_lines(self.rest + data)
            if count := count_configured(lines):
                self.meter.add(items=count)
            self._show(lines)

    def _show(self, lines: list[bytes]) -> None:
        for line in (raw.decode("utf-8", "replace") for raw in lines):
            if line.startswith(NOTICE):
                self.out.info(line.removeprefix(NOTICE))
            else:
                self.out.detail(line)


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
