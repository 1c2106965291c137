"""What the end-to-end tests share: running the real CLI and mmdebstrap, reading their trees, and
looking for what a build left on the host."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from debian.deb822 import Deb822

from ocistrap import doctor, hostarch

FROZEN_MIRROR_APTOPT = 'Acquire::Check-Valid-Until "false"'


@dataclass(frozen=True)
class Config:
    """A package selection both tools are asked for."""

    suite: str
    include: tuple[str, ...] = ()
    frozen: bool = False

    def lock_args(self) -> list[str]:
        args = [self.suite]
        if self.include:
            args.append(f"--include={','.join(self.include)}")
        if self.frozen:
            args.append("--no-check-valid-until")
        return args

    def aptopts(self) -> list[str]:
        return [FROZEN_MIRROR_APTOPT] if self.frozen else []


CONFIGS = {
    "bookworm": Config("bookworm"),
    "sid": Config("sid", frozen=True),
    "bookworm+hello,procps": Config("bookworm", include=("hello", "procps")),
    "bookworm+systemd": Config("bookworm", include=("systemd",)),
}


def ocistrap(*args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None,
             check: bool = True, via: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """The real command line in its own process, as a user would run it (under the command VIA)."""
    result = subprocess.run([*via, sys.executable, "-m", "ocistrap", *args], capture_output=True, text=True,
                            env=None if env is None else dict(env), cwd=cwd)
    if check:
        assert result.returncode == 0, f"ocistrap {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
    return result


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    """ARGV's standard output; it must succeed."""
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def locked(work: Path, cache_dir: Path) -> Callable[[str], Path]:
    """`ocistrap lock` of a configuration (CONFIGS), made on first use."""
    @cache
    def make(name: str) -> Path:
        out = work / f"{name}.lock"
        ocistrap("lock", *CONFIGS[name].lock_args(), "--cache-dir", str(cache_dir), "-o", str(out))
        return out
    return make


def start_interruptible(argv: Sequence[str], **popen: Any) -> subprocess.Popen:
    """Start ARGV in a process group of its own that a Ctrl-C (SIGINT to the group) stops:
    a shell that starts the tests in the background ignores SIGINT, and ARGV would inherit that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(list(argv), process_group=0, **popen)
    finally:
        signal.signal(signal.SIGINT, previous)


def printed_digests(stdout: str) -> dict[str, str]:
    """`ocistrap build` prints one `REF sha256:...` line per output."""
    pairs = [line.rsplit(" ", 1) for line in stdout.splitlines() if line.strip()]
    assert pairs and all(len(p) == 2 and p[1].startswith("sha256:") for p in pairs), stdout
    return dict(pairs)


def mmdebstrap(suite: str, out: Path, *, include: Sequence[str] = (), aptopts: Sequence[str] = ()) -> Path:
    """The reference rootless bootstrap of SUITE (minbase) into the tarball OUT."""
    argv = ["mmdebstrap", "--mode=unshare", "--variant=minbase", "--quiet"]
    argv += [f"--include={','.join(include)}"] if include else []
    argv += [f"--aptopt={opt}" for opt in aptopts]
    result = subprocess.run([*argv, suite, str(out)], capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"
    return out


# ---- trees ----

def member_name(name: str) -> str:
    """`./etc/x`, `etc/x/` and `etc/x` are one path; the root is ``""``."""
    name = name.removeprefix("./").strip("/")
    return "" if name == "." else name


@dataclass(frozen=True)
class Entry:
    """What the tree comparison looks at; a hard link counts as the file it shares an inode with."""

    kind: str
    mode: int
    uid: int
    gid: int
    target: str = ""

    def __str__(self) -> str:
        target = f" -> {self.target}" if self.target else ""
        return f"{self.kind} {self.mode:04o} {self.uid}:{self.gid}{target}"


@dataclass(frozen=True)
class Tree:
    entries: dict[str, Entry]
    hardlinks: frozenset[frozenset[str]]


def _kind(member: tarfile.TarInfo) -> str:
    if member.isdir():
        return "dir"
    if member.issym():
        return "symlink"
    if member.isreg() or member.islnk():
        return "file"
    return f"type {member.type.decode()}"


def read_tree(tarball: Path) -> Tree:
    """Every path's entry, and the groups of paths that are hard links of each other
    (whichever of them the archive stored first)."""
    members: dict[str, tarfile.TarInfo] = {}
    groups: dict[str, set[str]] = {}
    with tarfile.open(tarball) as tar:
        for m in tar:
            name = member_name(m.name)
            members[name] = m
            if m.islnk():
                target = member_name(m.linkname)
                group = groups.setdefault(target, {target})
                group.add(name)
                groups[name] = group
    entries = {}
    for name, m in members.items():
        inode = members.get(member_name(m.linkname), m) if m.islnk() else m
        entries[name] = Entry(_kind(m), inode.mode, inode.uid, inode.gid, m.linkname if m.issym() else "")
    unique = {id(g): frozenset(g) for g in groups.values()}
    return Tree(entries, frozenset(unique.values()))


MERGED_USR = ("usr/bin/", "usr/sbin/", "usr/lib/", "usr/lib32/", "usr/lib64/", "usr/libo32/", "usr/libx32/")


def split_by_usrmerge(group: frozenset[str]) -> bool:
    """Hard links a package ships in /bin, /sbin or /lib that usrmerge's conversion copies apart
    (it moves files with cp); a tree merged before unpacking, as ocistrap's and debootstrap's,
    keeps them."""
    return all(path.startswith(MERGED_USR) for path in group)


def tree_differences(ours: Tree, theirs: Tree, ignore: Callable[[str], bool]) -> list[str]:
    """One line per path whose type, mode, owner or link target differ, or that only one tree has,
    and per hard link group only one has (but those usrmerge's conversion splits)."""
    lines = []
    for path in sorted(set(ours.entries) | set(theirs.entries)):
        a, b = ours.entries.get(path), theirs.entries.get(path)
        if a != b and not ignore(path):
            lines.append(f"/{path}: ocistrap {a or 'missing'}, mmdebstrap {b or 'missing'}")
    kept = {frozenset(p for p in g if not ignore(p)) for g in ours.hardlinks}
    for group in {frozenset(p for p in g if not ignore(p)) for g in theirs.hardlinks} ^ kept:
        if len(group) > 1:
            side = "ocistrap" if group in kept else "mmdebstrap"
            if side == "ocistrap" and split_by_usrmerge(group):
                continue
            lines.append(f"hard links only in {side}: {' '.join(sorted(group))}")
    return lines


# Regular files whose bytes are not mmdebstrap's, for a known reason.
NOT_COMPARED = {
    "var/lib/dpkg/status-old": "dpkg's backup of its status before its last run; apt runs dpkg in other steps",
    "var/lib/apt/extended_states": "apt writes it in its own order (the auto-installed set is compared)",
}
SAME_LINES = {
    "etc/shells": "update-shells lists /bin/sh, /usr/bin/sh... in pairs on a tree merged before "
                  "unpacking; usrmerge's conversion appends the /usr names after the others",
}
UNDATED = {
    "etc/shadow": "the last password change is the day of the build for mmdebstrap (run without "
                  "SOURCE_DATE_EPOCH), the build's epoch for ocistrap; compared without that field",
}


def undated(data: bytes) -> bytes:
    """/etc/shadow without each account's last-change day (its third field)."""
    lines = [line.split(b":") for line in data.splitlines()]
    return b"\n".join(b":".join(f[:2] + f[3:]) for f in lines)


def file_digests(tarball: Path) -> dict[str, str]:
    """The SHA-256 of every regular file (hard links count as their file), by path; for
    SAME_LINES files, of their sorted lines; for UNDATED ones, without the date."""
    digests: dict[str, str] = {}
    with tarfile.open(tarball) as tar:
        for m in tar:
            name = member_name(m.name)
            if m.islnk():
                digests[name] = digests[member_name(m.linkname)]
            elif m.isreg():
                handle = tar.extractfile(m)
                assert handle is not None
                data = handle.read()
                if name in SAME_LINES:
                    data = b"\n".join(sorted(data.splitlines()))
                if name in UNDATED:
                    data = undated(data)
                digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def content_differences(ours: Path, theirs: Path, ignore: Callable[[str], bool]) -> list[str]:
    """One line per regular file of both trees whose bytes differ (but NOT_COMPARED ones)."""
    a, b = file_digests(ours), file_digests(theirs)
    return [f"/{path}: contents differ" for path in sorted(a.keys() & b.keys())
            if a[path] != b[path] and path not in NOT_COMPARED and not ignore(path)]


HOST_SPECIFIC = {
    "",                                       # the root entry
    "etc/hostname", "etc/resolv.conf",        # host identity, copied from the host by mmdebstrap
    "etc/apt/sources.list",                   # mmdebstrap writes one-line sources,
    "etc/apt/sources.list.d/debian.sources",  # ocistrap deb822
}


def host_specific(path: str) -> bool:
    """What mmdebstrap takes from the host or writes in another form; /dev is the host's there."""
    return path in HOST_SPECIFIC or path.startswith("dev/")


def mmdebstrap_differences(ours: Path, theirs: Path) -> list[str]:
    """How the tree of the tarball OURS differs from mmdebstrap's THEIRS: entries, hard links, bytes."""
    return (tree_differences(read_tree(ours), read_tree(theirs), host_specific)
            + content_differences(ours, theirs, host_specific))


def read_members(tarball: Path, paths: Iterable[str]) -> dict[str, bytes]:
    """The contents of the regular files PATHS (those present), in one pass over the archive."""
    wanted, found = set(paths), {}
    with tarfile.open(tarball) as tar:
        for m in tar:
            name = member_name(m.name)
            if name in wanted and m.isreg():
                handle = tar.extractfile(m)
                assert handle is not None
                found[name] = handle.read()
    return found


def installed(status: bytes) -> set[tuple[str, str, str]]:
    """(name, version, architecture) of every package dpkg's status file calls installed."""
    return {(p["Package"], p["Version"], p["Architecture"])
            for p in Deb822.iter_paragraphs(status.decode())
            if p.get("Status", "").endswith(" installed")}


def auto_installed(extended_states: bytes) -> set[str]:
    return {p["Package"] for p in Deb822.iter_paragraphs(extended_states.decode())
            if p.get("Auto-Installed") == "1"}


# ---- what a build leaves behind ----

@dataclass(frozen=True)
class HostDirs:
    """A build's private TMPDIR and XDG_RUNTIME_DIR, so that what it leaves there is its own."""

    tmp: Path
    runtime: Path

    @classmethod
    def under(cls, base: Path) -> "HostDirs":
        dirs = cls(base / "tmp", base / "runtime")
        for d in (dirs.tmp, dirs.runtime):
            d.mkdir(mode=0o700, parents=True)
        return dirs

    def env(self) -> dict[str, str]:
        return {**os.environ, "TMPDIR": str(self.tmp), "XDG_RUNTIME_DIR": str(self.runtime)}


def assert_nothing_foreign(*roots: Path) -> None:
    foreign = foreign_paths(roots, os.getuid(), os.getgid())
    assert not foreign, "left on the host, owned by subordinate ids:\n" + "\n".join(foreign[:50])


def foreign_paths(roots: Iterable[Path], uid: int, gid: int) -> list[str]:
    """Paths under ROOTS (and ROOTS) not owned by UID:GID: a user cannot remove those."""
    found = []
    for root in roots:
        for top, dirs, files in os.walk(root, onerror=lambda e: found.append(f"unreadable: {e}")):
            for path in [Path(top), *(Path(top) / n for n in dirs + files)]:
                st = path.lstat()
                if (st.st_uid, st.st_gid) != (uid, gid):
                    found.append(f"{path} ({st.st_uid}:{st.st_gid})")
    return sorted(set(found))


def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every live process (zombies hold nothing)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
        if state not in ("Z", "X"):
            table[int(entry.name)] = (int(ppid), comm)
    return table


def descendants(pid: int) -> dict[int, str]:
    """Every process below PID (sandbox helpers, their init, dpkg, maintainer scripts)."""
    table = _parents()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, comm) in table.items():
            if ppid == parent and child not in found:
                found[child] = comm
                frontier.append(child)
    return found


def wait_for_dpkg(proc: subprocess.Popen, timeout: float = 180) -> None:
    """Return once the build runs dpkg (inside its sandbox, or on the host in chrootless mode)."""
    deadline = time.monotonic() + timeout
    while "dpkg" not in descendants(proc.pid).values():
        assert proc.poll() is None, f"the build ended ({proc.returncode}) before dpkg ran"
        assert time.monotonic() < deadline, "dpkg never started"
        time.sleep(0.05)


def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> dict[int, str]:
    """Those of PIDS still alive after TIMEOUT seconds."""
    pids = set(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid: comm for pid, (_, comm) in _parents().items() if pid in pids}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def arm64_runnable() -> bool:
    """Whether the host's qemu-aarch64 binfmt handler runs arm64 binaries (in chroots and containers too: flag F)."""
    return doctor.check_binfmt(doctor.SystemHost(), "arm64", hostarch.native_arch()).ok


# ---- rootful podman (tests that run as root) ----

# this host refuses runc's raising of the open-files and process limits
ROOT_PODMAN_LIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


@pytest.fixture
def root_podman(tmp_path: Path) -> Iterator[list[str]]:
    """Root's podman with storage and run directory of the test's own, so that it shares nothing
    with the machine's, on runc and cgroupfs as these machines need (ENVIRONMENT.md); the run
    directory's path must be short (podman refuses one over 50 characters)."""
    with tempfile.TemporaryDirectory(prefix="ocistrap-podman-", ignore_cleanup_errors=True) as run:
        yield ["podman", "--root", str(tmp_path / "podman-storage"), "--runroot", run, "--cgroup-manager=cgroupfs",
               "--runtime", "runc", "--events-backend", "file"]


# ---- rootless podman ----

PODMAN = ("podman", "--log-level=error")
CONTAINERS_CONF = """[containers]
netns="host"
[engine]
runtime="runc"
cgroup_manager="cgroupfs"
events_logger="file"
"""


def podman_environment(runtime_fallback: Path | None = None) -> dict[str, str]:
    """The environment rootless podman needs on these machines (ENVIRONMENT.md); its
    containers.conf is written only if the account has none. Without XDG_RUNTIME_DIR,
    RUNTIME_FALLBACK is made and used, or RuntimeError says what is missing."""
    path = Path.home() / ".config" / "containers" / "containers.conf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(CONTAINERS_CONF)
    env = dict(os.environ)
    if not env.get("XDG_RUNTIME_DIR"):
        if runtime_fallback is None:
            raise RuntimeError("rootless podman needs XDG_RUNTIME_DIR (scripts/as-user.sh sets it)")
        runtime_fallback.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime_fallback)
    return env


def podman_env_in(tmp_path: Path) -> dict[str, str]:
    """podman_environment, with a runtime directory under TMP_PATH if the account has none."""
    return podman_environment(runtime_fallback=tmp_path / "xdg-runtime")


@pytest.fixture
def podman_env() -> dict[str, str]:
    try:
        return podman_environment()
    except RuntimeError as e:
        pytest.fail(str(e))


def remove_podman_images(names: Iterable[str]) -> None:
    """Drop images the tests put into the account's podman storage."""
    names = list(names)
    if names:
        subprocess.run([*PODMAN, "rmi", "--force", *names], capture_output=True)


@pytest.fixture(scope="module")
def podman_images() -> Iterator[list[str]]:
    """Names of images a test module puts into the account's podman storage, removed at its end."""
    names: list[str] = []
    yield names
    remove_podman_images(names)


# ---- ocistrap inside containers ----

CHECKOUT = Path(__file__).resolve().parent.parent
RUNNER = "localhost/ocistrap-runner:bookworm"
"""The image ocistrap runs in inside containers: bookworm with what it needs of the system; ocistrap
itself comes from this checkout and the test venv, bound in read-only at their own paths."""
RUNNER_PACKAGES = "python3,gpgv,debian-archive-keyring,ca-certificates"
STEP_EPOCH = "1700000000"
PODMAN_STEP = """FROM {runner}
ENV SOURCE_DATE_EPOCH={epoch}
RUN ["{python}", "-m", "ocistrap", "build", "--lock", "{lock}", "--cache-dir", "/tmp/cache", \\
     "-o", "oci-archive:{out}/image.tar:bookworm"]
"""


def runner_lock(cache_dir: Path, directory: Path) -> Path:
    """The lock of the RUNNER image, made in DIRECTORY."""
    lock = directory / "runner.lock"
    ocistrap("lock", "bookworm", "--include", RUNNER_PACKAGES, "--cache-dir", str(cache_dir), "-o", str(lock))
    return lock


def archive_digest(archive: Path, tag: str) -> str:
    """The digest an oci-archive's index.json gives the image tagged TAG."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        index = json.load(member)
    refs = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m["digest"] for m in index["manifests"]}
    return refs[tag]


def podman_build_step(podman: Sequence[str], lock: Path, base: Path,
                      env: Mapping[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`podman build` (PODMAN, as root or the account) of a Containerfile FROM the RUNNER whose RUN
    step builds LOCK into BASE/out/image.tar (a directory bound into the step): its result and the
    archive's path. The image it makes is removed again."""
    out = base / "out"
    out.mkdir(parents=True)
    (base / "Containerfile").write_text(PODMAN_STEP.format(runner=RUNNER, epoch=STEP_EPOCH, lock=lock, out=out,
                                                           python=f"{sys.prefix}/bin/python"))
    volumes = [f"{CHECKOUT}:{CHECKOUT}:ro", f"{sys.prefix}:{sys.prefix}:ro", f"{lock.parent}:{lock.parent}:ro",
               f"{out}:{out}"]
    built = base / "image-id"
    environment = None if env is None else dict(env)
    result = subprocess.run([*podman, "build", "--network", "host", "--pull=never", "--layers=false",
                             "--iidfile", str(built), *(f"--volume={v}" for v in volumes),
                             "--file", str(base / "Containerfile"), str(base)],
                            capture_output=True, text=True, env=environment)
    if built.exists():  # the image the step made (the build's archive included) is of no further use
        subprocess.run([*podman, "rmi", "--force", built.read_text().strip()], capture_output=True, env=environment)
    return result, out / "image.tar"


OWN_MAP_STEP = ["sandbox: unshare mode (root maps ids 0-65535 to themselves (its own map, no newuidmap))",
                "leaving the chroot's /proc empty: the kernel refuses a new one where parts of this container's "
                "/proc are masked; maintainer scripts that need one do less (systemd's runs systemd-tmpfiles), and "
                "the tree then differs from a host build"]
"""What a RUN step of podman build says of its sandbox: its root makes a user namespace with its own
map, and podman's masks of the container's /proc make the kernel refuse a new proc."""


def sandbox_lines(output: str) -> list[str]:
    """The lines of a build's OUTPUT that say how its sandbox runs."""
    return [line.strip() for line in output.splitlines() if "sandbox: " in line or "/proc empty" in line]
