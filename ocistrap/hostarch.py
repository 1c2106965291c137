"""This machine's Debian architecture and which foreign ones it can run (qemu binfmt handlers)."""

import platform
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ocistrap.errors import BuildError

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



def _exit_program(machine: int, code: bytes) -> bytes:
    """A static little-endian ELF64 executable for MACHINE: one loadable segment that runs CODE."""
    base, ehsize, phsize = 0x400000, 64, 56
    size = ehsize + phsize + len(code)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, machine, 1, base + ehsize + phsize, ehsize, 0, 0, ehsize, phsize, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return header + segment + code


# Programs that only exit 0, to ask the kernel itself whether it runs an architecture: inside a
# container /proc has no binfmt_misc to read, yet the host's handlers (flag F) run its programs.
EXIT_PROGRAMS = {
    # movz x0, #0; movz x8, #94 (exit_group); svc #0
    "arm64": _exit_program(183, struct.pack("<3I", 0xD2800000, 0xD2800BC8, 0xD4000001)),
}


def runs_here(arch: str) -> bool | None:
    """Whether an ARCH program runs here (None: ocistrap has no such program to try)."""
    program = EXIT_PROGRAMS.get(arch)
    if program is None:
        return None
    with tempfile.TemporaryDirectory(prefix="ocistrap-binfmt-") as tmp:
        path = Path(tmp) / arch
        path.write_bytes(program)
        path.chmod(0o700)
        try:
            return subprocess.run([str(path)], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


@dataclass(frozen=True)
class Check:
    """One line of the doctor's report: DETAIL says what is fine or exactly what to do."""

    name: str
    ok: bool
    detail: str


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


def binfmt_verdict(arch: str, native: str, entry: str | None, mounted: bool, ran: bool | None = None) -> Check:
    """Whether ARCH's binaries can run here, from the qemu-ARCH binfmt_misc entry's text, or
    where binfmt_misc cannot be read, from whether an ARCH program RAN."""
    name = f"binfmt {arch}"
    if arch == native or arch in NATIVE_COMPAT.get(native, set()):
        return Check(name, True, f"{arch} runs natively on {native}")
    qemu = QEMU_NAMES.get(arch)
    if qemu is None:
        return Check(name, False, f"unknown Debian architecture {arch!r}")
    if not mounted and ran:
        return Check(name, True, f"binfmt_misc cannot be read here (as in a container), but an {arch} program ran: "
                                 "the host's handler runs it")
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


def binfmt_check(arch: str, native: str, read_text: Callable[[Path], str | None],
                 runs: Callable[[str], bool | None]) -> Check:
    """Whether ARCH runs here, read through READ_TEXT (None for a file that cannot be read), else
    tried with RUNS (runs_here) where binfmt_misc cannot be read."""
    qemu = QEMU_NAMES.get(arch, arch)
    mounted = read_text(BINFMT_DIR / "status") is not None
    ran = None if mounted or arch == native else runs(arch)
    return binfmt_verdict(arch, native, read_text(BINFMT_DIR / f"qemu-{qemu}"), mounted, ran)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def require_runnable(architectures: Iterable[str]) -> None:
    """Fail before any download when maintainer scripts of an architecture could not run here."""
    native = native_arch()
    for arch in architectures:
        check = binfmt_check(arch, native, _read_text, runs_here)
        if not check.ok:
            raise BuildError(f"cannot build for {arch} on this {native} host: {check.detail}")
