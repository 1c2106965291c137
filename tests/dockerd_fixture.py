"""A Docker engine of the test session's own (Debian's ``docker.io``), for tests that run as root.

``dockerd`` starts ``dockerd`` with its data root, exec root, pid file and socket in a temp dir
and containerd namespaces of its own, so that it shares nothing with a Docker engine the machine
may run; no bridge and no iptables rules (containers use the host's network). It is stopped,
and its directory removed, when the session ends.
"""

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Docker:
    """The docker client pointed at one private daemon."""

    root: Path

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    def env(self) -> dict[str, str]:
        """The client's environment; `docker build` is the classic builder, which the 20.10 engine
        uses by default (a newer client would take BuildKit where its buildx plugin is installed)."""
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.root / "client"),
                "DOCKER_BUILDKIT": "0"}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, env=self.env())
        if check:
            assert result.returncode == 0, f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        return result


def daemon_argv(root: Path) -> list[str]:
    return ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2",
            f"--data-root={root / 'data'}", f"--exec-root={root / 'exec'}", f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{root / 'docker.sock'}", "--containerd-namespace=ocistrap-test",
            "--containerd-plugins-namespace=ocistrap-test-plugins"]


def _log_tail(root: Path, lines: int = 20) -> str:
    log = root / "dockerd.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _wait_ready(docker: Docker, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while docker("version", check=False).returncode != 0:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"dockerd did not start ({process.returncode}):\n{_log_tail(docker.root)}")
        time.sleep(0.2)


def _mounts_below(root: Path) -> Sequence[str]:
    """What the daemon left mounted under ROOT (overlay layers, its exec root), deepest first."""
    prefix = f"{root}/"
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True)


def stop(process: subprocess.Popen, root: Path) -> None:
    """SIGTERM the daemon (it stops its containers and its containerd), wait, then remove ROOT."""
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for point in _mounts_below(root):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    shutil.rmtree(root)


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Docker]:
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        pytest.skip("needs Docker's engine: the Debian package docker.io (make deps installs it)")
    root = tmp_path_factory.mktemp("dockerd")
    docker = Docker(root)
    with open(root / "dockerd.log", "wb") as log:
        process = subprocess.Popen(daemon_argv(root), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    try:
        _wait_ready(docker, process)
        yield docker
    finally:
        stop(process, root)
