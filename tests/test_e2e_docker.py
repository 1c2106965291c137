"""ocistrap in real Docker containers (Debian's docker.io engine, a daemon of this session's own),
with Docker's default seccomp profile and default capabilities: no user namespace, no mount.

The container image is one ocistrap builds (bookworm with python3, gpgv, the archive keyring and
ca-certificates), loaded from its docker-archive: output; ocistrap runs in it from this checkout
and the test venv (on /usr/bin/python3, which is bookworm's python3.11 in the image too), both
mounted read-only at their own paths. Root of the container builds in root mode, an account
(`--user`) and the restricted pod of examples/kubernetes-job.yaml (its security settings as Docker
flags: no capability, no new privileges, a read-only root) in chrootless mode; every build in a container is compared
with the host's build of the same lock (root's unshare mode, which gives the same image as an
account's).

A `docker build` whose RUN step builds into an oci-archive: that the host verifies and runs, and a
fleet of four containers building two suites for two architectures at once from one cache volume,
pushing to a loopback registry, joined by `ocistrap index` and run by podman for each
architecture, stand for the CI jobs of the issue.

Root-only (marker root): starting a Docker engine needs root. `make test-root` runs it.
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kube_pod
import pytest
from dockerd_fixture import Docker, dockerd  # noqa: F401  (fixture)
from e2e_helpers import (  # noqa: F401  (fixtures)
    CHECKOUT,
    OWN_MAP_STEP,
    ROOT_PODMAN_LIMITS,
    RUNNER,
    STEP_EPOCH,
    archive_digest,
    arm64_runnable,
    cache_dir,
    locked,
    ocistrap,
    podman_build_step,
    printed_digests,
    root_podman,
    runner_lock,
    sandbox_lines,
    work,
)
from registry_fixture import registry  # noqa: F401  (fixture)

from ocistrap import hostarch

pytestmark = [pytest.mark.root, pytest.mark.e2e, pytest.mark.network]

SECCOMP_REFUSAL = ("a seccomp filter refuses to make user namespaces (the default profile of Docker and of "
                   "Kubernetes' RuntimeDefault does)")

# `docker run` flags of each kind of user in a container; the restricted pod is the pod of
# examples/kubernetes-job.yaml (tests/kube_pod.py): uid 1000, every capability dropped, no new
# privileges, a read-only root with tmpfs volumes for its home, /tmp and /dev/shm.
USERS: dict[str, tuple[str, ...]] = {
    "root": (),
    "account": ("--user", "1000:1000"),
    "restricted-pod": tuple(kube_pod.docker_flags(kube_pod.job())),
}
# The mode `--mode auto` picks there under Docker's default profile, which refuses user namespaces.
MODE_IN_CONTAINER = {"root": "root", "account": "chrootless", "restricted-pod": "chrootless"}


@pytest.fixture(scope="session")
def runner_archive(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The image ocistrap runs in, built by ocistrap on the host as a docker-archive: tagged RUNNER."""
    base = tmp_path_factory.mktemp("runner")
    lock = runner_lock(cache_dir, base)
    archive = base / "runner.tar"
    ocistrap("build", "--lock", str(lock), "--cache-dir", str(cache_dir), "-o", f"docker-archive:{archive}:{RUNNER}")
    return archive


@pytest.fixture(scope="session")
def runner(dockerd: Docker, runner_archive: Path) -> str:  # noqa: F811
    """The runner image `docker load`ed; it must import ocistrap and its dependencies from the
    mounted checkout and venv."""
    dockerd("load", "--quiet", "--input", str(runner_archive))
    imports = in_container(dockerd, (), "-c", "import ocistrap.cli, debian, jsonschema, oras, zstandard")
    assert imports.returncode == 0, f"ocistrap does not import in {RUNNER}:\n{imports.stderr}"
    return RUNNER


def in_container(docker: Docker, flags: Sequence[str], *args: str,
                 mounts: Sequence[Path] = ()) -> subprocess.CompletedProcess[str]:
    """`docker run` of the venv's python with ARGS in the runner image, with Docker's default
    seccomp profile and capabilities (but FLAGS), the host's network, this checkout and the venv
    read-only and MOUNTS writable, each at its own path."""
    volumes = [f"{CHECKOUT}:{CHECKOUT}:ro", f"{sys.prefix}:{sys.prefix}:ro", *(f"{m}:{m}" for m in mounts)]
    return docker("run", "--rm", "--network", "host", "--env", f"SOURCE_DATE_EPOCH={STEP_EPOCH}",
                  *(f"--volume={v}" for v in volumes), *flags, RUNNER, f"{sys.prefix}/bin/python", *args,
                  check=False)


@pytest.fixture(scope="module")
def minbase(locked: Callable[[str], Path], cache_dir: Path, work: Path) -> tuple[Path, str]:  # noqa: F811
    """The lock of bookworm minbase made on the host, and the digest of the host's build of it."""
    lock = locked("bookworm")
    layout = work / "host-layout"
    result = ocistrap("build", "--mode", "unshare", "--lock", str(lock), "--cache-dir", str(cache_dir),
                      "-o", f"oci:{layout}:bookworm", env={**os.environ, "SOURCE_DATE_EPOCH": STEP_EPOCH})
    return lock, printed_digests(result.stdout)[f"oci:{layout}:bookworm"]


def user_dir(work: Path, who: str, name: str, lock: Path) -> Path:
    """A directory NAME of WHO's own for its outputs and cache, with the host's LOCK in it."""
    path = work / name
    path.mkdir()
    shutil.copy(lock, path / "bookworm.lock")
    if USERS[who]:
        uid, gid = (int(i) for i in USERS[who][1].split(":"))
        for p in (path, path / "bookworm.lock"):
            os.chown(p, uid, gid)
    return path


def doctor_lines(stdout: str) -> dict[str, str]:
    """Each checked item of `ocistrap doctor` by its name: `ok    build mode   …` -> `build mode`."""
    lines = {}
    for line in stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("ok", "FAIL"):
            name = " ".join(rest.split()[:2])
            lines[name] = line
    return lines


@pytest.mark.parametrize("who", USERS)
def test_doctor_in_a_container_names_the_seccomp_refusal_and_the_mode(who: str, dockerd: Docker,  # noqa: F811
                                                                     runner: str) -> None:
    result = in_container(dockerd, USERS[who], "-m", "ocistrap", "doctor")
    assert "Traceback" not in result.stderr
    build = doctor_lines(result.stdout)["build mode"]
    assert SECCOMP_REFUSAL in build
    assert result.returncode == 0, result.stdout
    assert build.split(None, 3)[:3] == ["ok", "build", "mode"]
    assert build.split(None, 3)[3].startswith(f"{MODE_IN_CONTAINER[who]}, because ")


@pytest.mark.parametrize("who", USERS)
def test_auto_builds_the_host_s_image_in_a_container(
        who: str, dockerd: Docker, runner: str, minbase: tuple[Path, str], work: Path) -> None:  # noqa: F811
    """Root of a container (root mode) and an account in it (chrootless mode) build bookworm
    minbase from the host's lock into a bind-mounted oci: layout, each saying in one line which
    mode and why, and get the host's digest."""
    lock, host_digest = minbase
    out = user_dir(work, who, who, lock)
    layout = f"oci:{out / 'layout'}:bookworm"
    result = in_container(dockerd, USERS[who], "-m", "ocistrap", "build", "--lock", str(out / "bookworm.lock"),
                          "--cache-dir", str(out / "cache"), "-o", layout, mounts=[out])
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    mode = MODE_IN_CONTAINER[who]
    said = [line.strip() for line in result.stderr.splitlines() if line.strip().startswith("sandbox: ")]
    assert len(said) == 1 and said[0].startswith(f"sandbox: {mode} mode (") and SECCOMP_REFUSAL in said[0], said
    assert printed_digests(result.stdout) == {layout: host_digest}


@pytest.mark.parametrize("who", USERS)
def test_unshare_mode_in_a_container_is_refused_in_one_line_before_anything_is_fetched(
        who: str, dockerd: Docker, runner: str, minbase: tuple[Path, str], work: Path) -> None:  # noqa: F811
    out = user_dir(work, who, f"{who}-unshare", minbase[0])
    result = in_container(dockerd, USERS[who], "-m", "ocistrap", "build", "--mode", "unshare", "--lock",
                          str(out / "bookworm.lock"), "--cache-dir", str(out / "cache"),
                          "-o", f"oci:{out / 'layout'}:bookworm", mounts=[out])
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"ocistrap: error: {SECCOMP_REFUSAL}: run the container with a profile "
                                          "that allows unshare, e.g. `--security-opt seccomp=unconfined`, or build "
                                          "in another mode"]
    assert sorted(os.listdir(out)) == ["bookworm.lock"]


DOCKERFILE = """FROM {runner}
COPY root/ /
COPY bookworm.lock /in/bookworm.lock
ENV SOURCE_DATE_EPOCH={epoch}
WORKDIR /out
RUN ["{python}", "-m", "ocistrap", "build", "--lock", "/in/bookworm.lock", "--cache-dir", "/tmp/cache", \
     "-o", "oci-archive:/out/image.tar:bookworm"]
"""


def build_context(path: Path, runner: str, lock: Path) -> Path:
    """A `docker build` context at PATH: the venv and what ocistrap runs from (the package and
    its schemas, `ocistrap.specs`) under root/, each at its own absolute path (COPY puts them there in the image), the LOCK and a Dockerfile
    whose RUN step builds it."""
    for source in (Path(sys.prefix), CHECKOUT / "ocistrap", CHECKOUT / "specs"):
        shutil.copytree(source, path / "root" / source.relative_to("/"), symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(lock, path / "bookworm.lock")
    (path / "Dockerfile").write_text(DOCKERFILE.format(runner=runner, epoch=STEP_EPOCH, python=f"{sys.prefix}/bin/python"))
    return path


def test_a_docker_build_step_writes_an_oci_archive_the_host_verifies_and_runs(
        dockerd: Docker, runner: str, minbase: tuple[Path, str], work: Path,  # noqa: F811
        root_podman: list[str]) -> None:  # noqa: F811
    """A RUN step (Docker's classic builder: root, default seccomp profile and capabilities) builds
    the host's lock in root mode into an oci-archive:; taken out of the built image with
    `docker create` and `docker cp`, it verifies on the host, has the host's digest and runs."""
    lock, host_digest = minbase
    base = work / "docker-build"
    context = build_context(base / "context", runner, lock)
    built = "localhost/ocistrap-built:bookworm"
    result = dockerd("build", "--network", "host", "--tag", built, str(context), check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    # the classic builder colours a step's stderr with terminal escapes
    said = [line[line.index("sandbox: "):] for line in output.splitlines() if "sandbox: " in line]
    assert len(said) == 1 and said[0].startswith("sandbox: root mode (") and SECCOMP_REFUSAL in said[0], said

    container = dockerd("create", built).stdout.strip()
    archive = base / "image.tar"
    try:
        dockerd("cp", f"{container}:/out/image.tar", str(archive))
    finally:
        dockerd("rm", container)
    ocistrap("verify", f"oci-archive:{archive}:bookworm")
    assert archive_digest(archive, "bookworm") == host_digest
    ran = subprocess.run([*root_podman, "run", "--rm", "--network", "host", *ROOT_PODMAN_LIMITS,
                          f"oci-archive:{archive}:bookworm", "cat", "/etc/debian_version"],
                         capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().split(".")[0] == "12"


FLEET_SUITES = ("bookworm", "trixie")
FLEET_ARCHES = ("amd64", "arm64")
FLEET_CACHE = "ocistrap-fleet-cache"


@pytest.mark.skipif(hostarch.native_arch() != "amd64", reason="the fleet pairs amd64 with arm64 under qemu")
def test_a_fleet_of_containers_builds_two_suites_for_two_architectures_into_one_index_each(
        dockerd: Docker, runner: str, registry, cache_dir: Path, work: Path,  # noqa: F811
        root_podman: list[str]) -> None:  # noqa: F811
    """Four containers (root, Docker's default seccomp profile and capabilities: root mode; arm64
    through the host's qemu binfmt handler, registered with F) build bookworm and trixie for amd64
    and arm64 at once, from locks made on the host and one cache volume they share, each pushing
    to a loopback registry; `ocistrap index` joins each suite's two images under one tag, and
    podman runs each architecture of it."""
    if not arm64_runnable():
        pytest.fail("no qemu-aarch64 binfmt handler: `make test` as root sets it up; see `ocistrap doctor --arch arm64`")
    locks = work / "fleet"
    locks.mkdir()
    jobs = [(suite, arch) for suite in FLEET_SUITES for arch in FLEET_ARCHES]

    def lock(job: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        suite, arch = job
        return ocistrap("lock", suite, "--variant", "essential", "--arch", arch, "--no-updates",
                        "--cache-dir", str(cache_dir), "-o", str(locks / f"{suite}-{arch}.lock"))

    def build(job: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        suite, arch = job
        return in_container(dockerd, ("--volume", f"{FLEET_CACHE}:/cache"), "-m", "ocistrap", "build",
                            "--lock", str(locks / f"{suite}-{arch}.lock"), "--cache-dir", "/cache",
                            "--push", f"{registry.host}/debian:{suite}-{arch}", mounts=[locks])

    dockerd("volume", "create", FLEET_CACHE)
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(lock, jobs))
            results = dict(zip(jobs, pool.map(build, jobs)))
    finally:
        dockerd("volume", "rm", FLEET_CACHE, check=False)
    for job, result in results.items():
        assert "Traceback" not in result.stderr, (job, result.stderr)
        assert result.returncode == 0, (job, result.stderr)
        assert list(printed_digests(result.stdout)) == [f"docker://{registry.host}/debian:{job[0]}-{job[1]}"]

    for suite in FLEET_SUITES:
        ocistrap("index", f"{registry.host}/debian:{suite}",
                 *(f"{registry.host}/debian:{suite}-{arch}" for arch in FLEET_ARCHES))
        for arch in FLEET_ARCHES:
            ran = subprocess.run([*root_podman, "run", "--rm", "--network", "host", *ROOT_PODMAN_LIMITS,
                                  "--tls-verify=false", "--pull=always", "--arch", arch,
                                  f"{registry.host}/debian:{suite}", "dpkg", "--print-architecture"],
                                 capture_output=True, text=True)
            assert ran.returncode == 0, (suite, arch, ran.stderr)
            assert ran.stdout.strip() == arch, (suite, arch, ran.stdout)



def test_a_podman_build_step_builds_in_unshare_mode_with_the_container_s_proc(
        runner_archive: Path, minbase: tuple[Path, str], work: Path, root_podman: list[str]) -> None:  # noqa: F811
    """A RUN step of root's `podman build` (the container's root, podman's default capabilities
    and seccomp profile, which lets it make user namespaces): root maps its own ids and builds in
    unshare mode; the kernel refuses a new /proc where podman masks parts of the container's, so
    the chroot's /proc is left empty, as in root mode. The archive, written to a directory bound into the
    step, has the host's digest."""
    lock, host_digest = minbase
    subprocess.run([*root_podman, "load", "--quiet", "--input", str(runner_archive)], check=True, capture_output=True)
    result, archive = podman_build_step(root_podman, lock, work / "podman-build")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert sandbox_lines(output) == OWN_MAP_STEP
    ocistrap("verify", f"oci-archive:{archive}:bookworm")
    assert archive_digest(archive, "bookworm") == host_digest
