"""Crashes and full disks during `ocistrap build`, as an unprivileged user.

SIGKILL and Ctrl-C (SIGINT to the whole process group, as a terminal sends it) land in each
phase of a build: the metadata download, the .deb downloads, the unpacking of the essential
set, the writing of the layer and the push (dpkg configuring: test_e2e_build.py). The phase
is recognised from the `--log-format json` step lines together with what can be seen from
outside (a request that reached the mirror, a partial file, the processes of the sandbox, the
bytes a proxy passed on); a phase too short to hit is slowed by a throttling proxy. After each:
no process of the build left, no file of subordinate ids on the host, no output, a consistent
cache. The metadata and download phases use a small signed archive made on the spot; the others
need a real bootstrap from deb.debian.org.

Disk full for real: on the small tmpfs scripts/as-user.sh mounts (OCISTRAP_TEST_SMALLFS),
filled up but for a little room, while filling the cache, writing a layer and writing an
output; then the filler goes and the same command succeeds.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e_helpers import HostDirs, assert_nothing_foreign, descendants, ocistrap, start_interruptible, wait_gone
from lockfetch_support import SUITE, assert_cache_verified, assert_partials_honest, template  # noqa: F401
from repo_factory import Mirror, RepoBuilder, SigningKey, serving

pytestmark = [pytest.mark.e2e]

SIGNALS = [signal.SIGKILL, signal.SIGINT]
signal_ids = pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: s.name)


# ---- a build in its own process group, watched through its JSON log ----

@dataclass
class Run:
    proc: subprocess.Popen
    stderr: Path

    def lines(self) -> list[str]:
        return self.stderr.read_text(errors="replace").splitlines()

    def events(self) -> list[dict]:
        found = []
        for line in self.lines():
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
        return found

    def step(self) -> str:
        """The innermost step that has started and not ended."""
        open_steps: list[str] = []
        for event in self.events():
            if event.get("event") == "start":
                open_steps.append(event["text"])
            elif event.get("event") == "done" and event.get("text") in open_steps:
                open_steps.remove(event["text"])
        return open_steps[-1] if open_steps else ""

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"the build ended ({self.proc.returncode}) before {what}:\n" + \
                "\n".join(self.lines()[-5:])
            assert time.monotonic() < deadline, f"never saw {what}"
            time.sleep(0.01)

    def interrupt(self, signum: signal.Signals) -> "Outcome":
        """Send SIGNUM as a crash (SIGKILL to the build) or a Ctrl-C (SIGINT to the group) would."""
        watched = set(descendants(self.proc.pid)) | group(self.proc.pid)
        step = self.step()
        try:
            if signum == signal.SIGINT:
                os.killpg(self.proc.pid, signum)
            else:
                self.proc.send_signal(signum)
            status = self.proc.wait(timeout=60)
        finally:
            self.proc.kill()
            self.proc.wait()
        return Outcome(signum, status, step, self.lines(), watched | group(self.proc.pid))


@dataclass
class Outcome:
    signum: signal.Signals
    status: int
    step: str
    lines: list[str]
    processes: set[int]

    def check(self, *roots: Path) -> None:
        """What every interrupted build must leave: the exit, no process, no file of subordinate ids."""
        text = "\n".join(self.lines)
        if self.signum == signal.SIGINT:
            assert self.status == 130, text
            assert "Traceback" not in text, text
            errors = [e for e in map(_json, self.lines) if e.get("event") == "error"]
            assert [e["text"] for e in errors] == ["interrupted"] and _json(self.lines[-1]) == errors[0], text
        else:
            assert self.status == -signal.SIGKILL
        assert wait_gone(self.processes) == {}, f"processes outlived the build: {wait_gone(self.processes, 0)}"
        assert_nothing_foreign(*roots)


def _json(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:
        return {}


def group(pgid: int) -> set[int]:
    """The live processes of process group PGID."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, ValueError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.add(int(entry.name))
    return found


def start(base: Path, *argv: str) -> Run:
    host = HostDirs.under(base)
    stderr = base / "stderr"
    with open(stderr, "w") as err:
        proc = start_interruptible([sys.executable, "-m", "ocistrap", "--log-format", "json", *argv],
                                   env=host.env(), stdout=subprocess.DEVNULL, stderr=err)
    return Run(proc, stderr)


# ---- a throttling TCP proxy (for mirrors and registries alike) ----

@dataclass
class Throttle:
    """Forwards 127.0.0.1:port to TARGET, at most RATE bytes/s each way (None: unlimited)."""

    target: tuple[str, int]
    rate: int | None
    sent: int = 0
    server: socket.socket = field(default_factory=socket.socket)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.getsockname()[1]}"

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(32768):
                dest.sendall(data)
                if counted:
                    self.sent += len(data)
                if self.rate:
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (source, dest):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@contextmanager
def throttled(target: str, rate: int) -> Iterator[Throttle]:
    """A Throttle in front of TARGET (host:port) while the block runs."""
    host, _, port = target.rpartition(":")
    proxy = Throttle((host, int(port)), rate)
    proxy.server.bind(("127.0.0.1", 0))
    proxy.server.listen()
    threading.Thread(target=proxy.serve, daemon=True).start()
    try:
        yield proxy
    finally:
        proxy.server.close()


# ---- the small signed archive: metadata and downloads ----

@pytest.fixture
def mirror(template: RepoBuilder) -> Iterator[Mirror]:  # noqa: F811
    with serving(template.root) as served:
        yield served


def lock_args(mirror_url: str, keyring: Path, cache: Path) -> list[str]:
    return [SUITE, "--mirror", mirror_url, "--keyring", str(keyring), "--cache-dir", str(cache),
            "--arch", "amd64", "--variant", "essential"]


@signal_ids
def test_interrupted_while_downloading_the_metadata(signum, mirror, signing_key: SigningKey, tmp_path):
    cache, layout = tmp_path / "cache", tmp_path / "layout"
    for suffix in ("", ".xz", ".gz"):
        mirror.tamper(f"dists/{SUITE}/main/binary-amd64/Packages{suffix}", delay=60)
    run = start(tmp_path, "build", *lock_args(mirror.url, signing_key.keyring, cache), "-o", f"oci:{layout}:t")
    run.wait_for(lambda: any("/binary-amd64/Packages" in p for p in mirror.requests), "the index requested")
    outcome = run.interrupt(signum)
    assert outcome.step.startswith(("verifying", "reading package indices")), outcome.step
    outcome.check(tmp_path, cache)
    assert not layout.exists()
    assert_cache_verified(cache)
    mirror.tampers.clear()
    ocistrap("lock", *lock_args(mirror.url, signing_key.keyring, cache), "-o", str(tmp_path / "honest.lock"))
    ocistrap("fetch", str(tmp_path / "honest.lock"), "--keyring", str(signing_key.keyring), "--cache-dir", str(cache))


@signal_ids
def test_interrupted_while_downloading_the_debs(signum, mirror, template: RepoBuilder,  # noqa: F811
                                                signing_key: SigningKey, tmp_path):
    cache, layout, locked = tmp_path / "cache", tmp_path / "layout", tmp_path / "ocistrap.debian.lock"
    big = next(d for d in template.debs if d.filename.split("/")[-1].startswith("bigdata_"))
    big_sha256 = big.stanza.split("SHA256: ")[1].split()[0]
    with throttled(mirror.url.removeprefix("http://"), rate=200_000) as proxy:
        url = f"http://{proxy.host}"
        keyring = ["--keyring", str(signing_key.keyring), "--cache-dir", str(cache)]
        ocistrap("lock", *lock_args(url, signing_key.keyring, cache), "-o", str(locked))
        run = start(tmp_path, "build", "--lock", str(locked), *keyring, "-o", f"oci:{layout}:t")
        partial = cache / "partial" / big_sha256
        run.wait_for(lambda: partial.exists() and partial.stat().st_size > 100_000, "half of the big .deb")
        outcome = run.interrupt(signum)
        assert outcome.step.startswith("fetching"), outcome.step
        outcome.check(tmp_path, cache)
        assert not layout.exists()
        assert_cache_verified(cache)
        assert_partials_honest(cache, template.root)
        proxy.rate = None
        ocistrap("fetch", str(locked), *keyring)
    assert (cache / "blobs" / "sha256" / big_sha256).exists()


# ---- a real bootstrap: unpacking, layer, push ----

@dataclass(frozen=True)
class Real:
    lock: Path
    cache: Path

    def build(self, *argv: str) -> list[str]:
        return ["build", "--lock", str(self.lock), "--cache-dir", str(self.cache), *argv]

    def check_cache(self) -> None:
        """Every blob verified, no scratch of a build left, and `ocistrap fetch` content."""
        assert_cache_verified(self.cache)
        ocistrap("fetch", str(self.lock), "--cache-dir", str(self.cache))


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Real:
    """bookworm minbase locked and fetched once; the crash tests share its cache, as users do."""
    base = tmp_path_factory.mktemp("real")
    found = Real(base / "bookworm.lock", base / "cache")
    ocistrap("lock", "bookworm", "--cache-dir", str(found.cache), "-o", str(found.lock))
    found.check_cache()
    return found


def scratch_blobs(cache: Path, before: set[Path]) -> list[Path]:
    """Layer blobs being written in the build directories of the cache not among BEFORE."""
    return [blob for build in scratch_dirs(cache) - before for blob in build.glob("layout/blobs/sha256/.tmp-*")]


def scratch_dirs(cache: Path) -> set[Path]:
    """Builds' private directories in the cache (SIGKILL leaves its own behind until the next build)."""
    return set((cache / "partial").glob("build-*"))


def assert_no_new_scratch_after_ctrl_c(outcome: Outcome, cache: Path, before: set[Path]) -> None:
    if outcome.signum == signal.SIGINT:
        assert scratch_dirs(cache) - before == set(), "Ctrl-C left the build's scratch in the cache"


def interrupt_and_check(run: Run, signum: int, tmp_path: Path, real: "Real", layout: Path,
                        before: set[Path]) -> None:
    """Interrupt a build of the real archive into LAYOUT and check that it left nothing."""
    outcome = run.interrupt(signum)
    outcome.check(tmp_path, real.cache)
    assert not layout.exists()
    assert_no_new_scratch_after_ctrl_c(outcome, real.cache, before)
    real.check_cache()


@pytest.mark.network
@signal_ids
def test_interrupted_while_expanding_the_packages(signum, real, tmp_path):
    shutil.rmtree(real.cache / "derived")
    layout, before = tmp_path / "layout", scratch_dirs(real.cache)
    run = start(tmp_path, *real.build("-o", f"oci:{layout}:t"))
    run.wait_for(lambda: "dpkg-deb" in descendants(run.proc.pid).values() and
                 any((real.cache / "partial").glob(".tmp-*")), "dpkg-deb expanding a package into the cache")
    interrupt_and_check(run, signum, tmp_path, real, layout, before)


def chrooted(pid: int) -> bool:
    """Whether PID runs chrooted (the essential set's unpacker does, in the staging root)."""
    try:
        return os.readlink(f"/proc/{pid}/root") != "/"
    except OSError:
        return False


@pytest.mark.network
@signal_ids
def test_interrupted_while_unpacking_the_essential_set(signum, real, tmp_path):
    layout, before = tmp_path / "layout", scratch_dirs(real.cache)
    run = start(tmp_path, *real.build("-o", f"oci:{layout}:t"))

    def unpacking() -> bool:
        below = descendants(run.proc.pid)
        return run.step().startswith("unpacking and configuring") and "dpkg" not in below.values() and \
            any(chrooted(pid) for pid, name in below.items() if name.startswith("python"))
    run.wait_for(unpacking, "ocistrap's chrooted unpacker unpacking the essential set")
    interrupt_and_check(run, signum, tmp_path, real, layout, before)


@pytest.mark.network
@signal_ids
def test_interrupted_while_writing_the_layer(signum, real, tmp_path):
    layout, before = tmp_path / "layout", scratch_dirs(real.cache)
    run = start(tmp_path, *real.build("-o", f"oci:{layout}:t"))
    run.wait_for(lambda: run.step() == "writing layer" and any(p.stat().st_size > 1 << 20
                                                                 for p in scratch_blobs(real.cache, before)),
                 "a layer blob half written")
    interrupt_and_check(run, signum, tmp_path, real, layout, before)


@pytest.mark.network
@signal_ids
def test_interrupted_while_pushing(signum, real, fake_registry, tmp_path):
    before = scratch_dirs(real.cache)
    with throttled(fake_registry.host, rate=6_000_000) as proxy:
        run = start(tmp_path, *real.build("--push", f"{proxy.host}/faults/debian:bookworm"))
        run.wait_for(lambda: run.step() == "writing outputs" and proxy.sent > 2_000_000, "a push half done")
        outcome = run.interrupt(signum)
    outcome.check(tmp_path, real.cache)
    assert fake_registry.state.tags.get("faults/debian", {}) == {} and fake_registry.state.manifests == {}
    assert_no_new_scratch_after_ctrl_c(outcome, real.cache, before)
    real.check_cache()


@pytest.mark.network
def test_an_honest_build_with_the_same_cache_succeeds(real, tmp_path):
    """After every crash above: the cache still builds, the image verifies, and the scratch
    directories SIGKILL left behind are swept by this build."""
    layout = tmp_path / "layout"
    ocistrap(*real.build("-o", f"oci:{layout}:t"))
    assert "ok" in ocistrap("verify", f"oci:{layout}:t").stdout.lower()
    assert scratch_dirs(real.cache) == set()


# ---- disk full, for real ----

@pytest.fixture
def smallfs() -> Path:
    """The small file system, emptied; the tests fill it up."""
    path = os.environ.get("OCISTRAP_TEST_SMALLFS")
    if not path:
        pytest.skip("OCISTRAP_TEST_SMALLFS is unset: run through scripts/as-user.sh as root (make test), "
                    "which mounts a small tmpfs for the disk-full tests")
    root = Path(path)
    for entry in root.iterdir():
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return root


def fill(fs: Path, leave: int) -> Path:
    """A file taking all of FS's free space but LEAVE bytes."""
    st = os.statvfs(fs)
    filler = fs / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize - leave)
    return filler


def assert_no_space_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """One `ocistrap: error:` line saying no space is left, where, and what to do."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocistrap: error: "), result.stderr
    assert "no space left" in lines[0].lower() and "free space" in lines[0], lines[0]
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def test_disk_full_while_filling_the_cache(smallfs, mirror, template: RepoBuilder,  # noqa: F811
                                           signing_key: SigningKey, tmp_path):
    cache, locked = smallfs / "cache", tmp_path / "ocistrap.debian.lock"
    keyring = ["--keyring", str(signing_key.keyring), "--cache-dir", str(cache)]
    ocistrap("-q", "lock", *lock_args(mirror.url, signing_key.keyring, cache), "-o", str(locked))
    filler = fill(smallfs, leave=400_000)
    assert_no_space_line(ocistrap("-q", "fetch", str(locked), *keyring, check=False), str(cache))
    assert_cache_verified(cache)
    assert_partials_honest(cache, template.root)
    filler.unlink()
    ocistrap("-q", "fetch", str(locked), *keyring)


@pytest.mark.network
def test_disk_full_while_writing_a_layer(smallfs, real, tmp_path):
    cache, layout = smallfs / "cache", tmp_path / "layout"
    shutil.copytree(real.cache, cache, ignore=shutil.ignore_patterns("build-*"))
    argv = ["-q", "build", "--lock", str(real.lock), "--cache-dir", str(cache), "-o", f"oci:{layout}:t"]
    filler = fill(smallfs, leave=20_000_000)
    assert_no_space_line(ocistrap(*argv, check=False), "layer blob", str(cache), "--cache-dir")
    assert not layout.exists()
    assert list((cache / "partial").iterdir()) == [], "a failed build left its scratch in the cache"
    assert_cache_verified(cache)
    filler.unlink()
    ocistrap(*argv)


@pytest.mark.network
def test_disk_full_while_expanding_the_packages(smallfs, real, tmp_path):
    cache, layout = smallfs / "cache", tmp_path / "layout"
    shutil.copytree(real.cache, cache, ignore=shutil.ignore_patterns("build-*", "derived"))
    argv = ["-q", "build", "--lock", str(real.lock), "--cache-dir", str(cache), "-o", f"oci:{layout}:t"]
    filler = fill(smallfs, leave=20_000_000)
    assert_no_space_line(ocistrap(*argv, check=False), str(cache))
    assert not layout.exists()
    assert list((cache / "partial").iterdir()) == [], "a failed build left its scratch in the cache"
    assert_cache_verified(cache)
    filler.unlink()
    ocistrap(*argv)
    assert_cache_verified(cache)


OUTPUTS = {  # transport: (-o reference, what the error names, what `verify` reads)
    "oci-archive": ("oci-archive:{out}/image.tar:t", "oci-archive:{out}/image.tar", "oci-archive:{out}/image.tar:t"),
    "oci": ("oci:{out}/layout:t", "oci:{out}/layout", "oci:{out}/layout:t"),
    "docker-archive": ("docker-archive:{out}/image.tar:test/t:latest", "docker-archive:{out}/image.tar",
                       "docker-archive:{out}/image.tar"),
}


@pytest.mark.network
@pytest.mark.parametrize("transport", list(OUTPUTS))
def test_disk_full_while_writing_the_output(smallfs, real, tmp_path, transport):
    out = smallfs / "out"
    ref, named, readable = (text.format(out=out) for text in OUTPUTS[transport])
    argv = [*real.build("-o", ref)]
    filler = fill(smallfs, leave=20_000_000)
    assert_no_space_line(ocistrap("-q", *argv, check=False), named)
    assert not out.exists() or list(out.iterdir()) == [], "a half-written output or its scratch was left"
    assert_cache_verified(real.cache)
    filler.unlink()
    ocistrap("-q", *argv)
    assert ocistrap("verify", readable).returncode == 0
