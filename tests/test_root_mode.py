"""Root's own ways to build, run as root (marker root: `make test-root`, which `make test` runs as
root before it re-runs the rest as an unprivileged account; anywhere else these tests skip).

Root with user namespaces writes its own id map (ids 0-65535 to themselves); root of a container
(no CAP_SYS_ADMIN, Docker's seccomp profile: no namespace at all) builds in root mode. The
container is stood for by `setpriv --bounding-set -sys_admin` and tests/docker_seccomp.py, so
that no container engine is needed; the tree must still be mmdebstrap's.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import docker_seccomp
import pytest
from e2e_helpers import (  # noqa: F401  (fixtures)
    CONFIGS,
    ROOT_PODMAN_LIMITS,
    cache_dir,
    descendants,
    locked,
    mmdebstrap,
    mmdebstrap_differences,
    ocistrap,
    printed_digests,
    root_podman,
    start_interruptible,
    wait_for_dpkg,
    wait_gone,
    work,
)

from ocistrap.rootfs import buildmode, spawn

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
# root of a container: Docker's default capabilities lack CAP_SYS_ADMIN, its seccomp profile refuses namespaces
CONTAINER_ROOT = ("setpriv", "--bounding-set", "-sys_admin", "--", sys.executable, str(HERE / "docker_seccomp.py"))


def test_root_writes_its_identity_map_itself(tmp_path: Path) -> None:
    """The sandbox of root's unshare mode: no newuidmap (root has no /etc/subuid range), and an
    owner given inside is the same id outside, as checked here from the host's namespace."""
    mode = buildmode.decide_mode("unshare")
    assert mode.reason == "requested with --mode unshare" and not mode.maps.is_single
    target = tmp_path / "owned"
    proc = spawn.spawn(["sh", "-c", f"touch {target} && chown 4242:7 {target} && cat /proc/self/uid_map"],
                       maps=mode.maps, stdout=subprocess.PIPE)
    out, _ = proc.communicate()
    assert proc.returncode == 0
    assert out.split() == [b"0", b"0", b"1", b"1", b"1", b"65535"]
    st = target.stat()
    assert (st.st_uid, st.st_gid) == (4242, 7)


def test_a_container_s_root_has_no_namespace_but_may_build_in_root_mode() -> None:
    result = ocistrap("doctor", via=CONTAINER_ROOT)
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith(("ok", "FAIL"))}
    assert "a seccomp filter refuses to make user namespaces" in lines["build"]
    assert lines["build"].startswith("ok    build mode           root, because unshare mode cannot build here: "
                                     "a seccomp filter")
    assert lines["build"].endswith("; root mode: a plain chroot with device nodes made by mknod, no /proc, /sys or devpts")
    refused = ocistrap("build", "bookworm", "--mode", "unshare", "-o", "tar:/dev/null", via=CONTAINER_ROOT, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "a seccomp filter refuses to make user namespaces (the default profile of Docker and of Kubernetes' "
        "RuntimeDefault does): run the container with a profile that allows unshare, e.g. "
        "`--security-opt seccomp=unconfined`, or build in another mode")


@pytest.fixture(scope="module")
def builds(work: Path, cache_dir: Path, locked: Callable[[str], Path]) -> dict[str, tuple[Path, str, str]]:
    """bookworm minbase built by root in unshare mode on the host and in root mode as a
    container's root, from one lock: (rootfs tarball, the build's log, its digest) of each."""
    out = {}
    for name, via in (("unshare", ()), ("root", CONTAINER_ROOT)):
        rootfs = work / f"{name}.tar"
        result = ocistrap("build", "--lock", str(locked("bookworm")), "--cache-dir", str(cache_dir),
                          "-o", f"tar:{rootfs}", via=via)
        out[name] = (rootfs, result.stderr, printed_digests(result.stdout)[f"tar:{rootfs}"])
    return out


@pytest.mark.e2e
@pytest.mark.network
def test_root_mode_builds_mmdebstraps_tree(builds, work: Path) -> None:
    rootfs, log, _ = builds["root"]
    assert "sandbox: root mode (a seccomp filter refuses to make user namespaces" in log
    reference = mmdebstrap(CONFIGS["bookworm"].suite, work / "mmdebstrap.tar")
    differences = mmdebstrap_differences(rootfs, reference)
    assert not differences, "\n".join(differences[:50])


@pytest.mark.e2e
@pytest.mark.network
def test_root_mode_and_root_s_unshare_mode_build_the_same_image(builds) -> None:
    assert "sandbox: unshare mode (root maps ids 0-65535 to themselves" in builds["unshare"][1]
    assert builds["root"][2] == builds["unshare"][2]


@pytest.mark.e2e
@pytest.mark.network
def test_what_a_maintainer_script_sees_in_root_mode(builds, tmp_path: Path) -> None:
    """The chroot of root mode, entered as the build enters it, in the image's own tree: the
    README's list of what /dev, /proc and /sys hold there."""
    tree = tmp_path / "tree"
    tree.mkdir()
    with tarfile.open(builds["root"][0]) as tar:
        tar.extractall(tree, numeric_owner=True)
    script = ("from pathlib import Path; from ocistrap.rootfs import plainroot; import sys\n"
              f"with plainroot.prepared(Path({str(tree)!r}), 'var/cache/ocistrap-debs'):\n"
              f"    r = plainroot.chroot_run(Path({str(tree)!r}), ['sh', '-c', "
              "'echo x > /dev/null && head -c 4 /dev/urandom | wc -c && ls /dev && find /proc /sys -mindepth 1 | wc -l'], "
              "env={'PATH': '/usr/bin:/bin'}, stdout=-1)\n"
              "sys.stdout.write(r.stdout.decode())\n")
    result = subprocess.run([*CONTAINER_ROOT, sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    count, *devices, listed = result.stdout.split()
    assert count == "4"
    assert devices == sorted(["fd", "full", "null", "random", "stderr", "stdin", "stdout", "tty", "urandom", "zero"])
    assert listed == "0"  # /proc and /sys are empty
    assert sorted(os.listdir(tree / "dev")) == []  # the nodes are gone again


@pytest.mark.e2e
@pytest.mark.network
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_root_mode_build_killed_while_dpkg_runs_leaves_nothing(signum, locked, cache_dir, work) -> None:
    """No init of a namespace removes the staging tree in root mode: the inner half does when
    its caller dies, and the caller does otherwise."""
    base = work / f"killed-{signum.name}"
    staging = base / "staging"
    staging.mkdir(parents=True)
    argv = [*CONTAINER_ROOT, sys.executable, "-m", "ocistrap", "build", "--lock", str(locked("bookworm")),
            "--cache-dir", str(cache_dir), "--staging-dir", str(staging), "-o", f"oci:{base / 'layout'}:test"]
    proc = start_interruptible(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_dpkg(proc)
        building = descendants(proc.pid)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)  # as Ctrl-C in a terminal: the whole foreground group
        else:
            proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert wait_gone(building) == {}, f"processes outlived the build: {wait_gone(building, 0)}"
    assert wait_empty(staging) == [], "the staging directory was left behind"
    assert not (base / "layout").exists()


def wait_empty(path: Path, timeout: float = 10.0) -> list[str]:
    """What is still in PATH after TIMEOUT seconds (the inner half removes it after its caller died)."""
    deadline = time.monotonic() + timeout
    while (left := os.listdir(path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# ---- a real container ----

@pytest.mark.e2e
@pytest.mark.network
@pytest.mark.skipif(shutil.which("podman") is None or shutil.which("runc") is None, reason="needs podman and runc")
def test_root_of_a_real_container_builds_the_same_image(builds, work: Path,
                                                        root_podman: list[str]) -> None:  # noqa: F811
    """Rootful podman with Docker's refusals: this checkout and its venv (on /usr/bin/python3)
    mounted into an image ocistrap built (bookworm with python3, gpgv and the keyring). Without
    CAP_MKNOD (podman's default) nothing can build, and the one line says so; with it, root mode
    builds the host's image byte for byte."""
    base = work / "podman"
    (base / "out").mkdir(parents=True)
    profile = base / "seccomp.json"
    profile.write_text(json.dumps(docker_seccomp.podman_profile()))
    image = "localhost/ocistrap-root-test:bookworm"
    ocistrap("build", "bookworm", "--variant", "minbase", "--include", "python3,gpgv,debian-archive-keyring",
             "-o", f"docker-archive:{base / 'runner.tar'}:{image}")
    podman = root_podman
    subprocess.run([*podman, "load", "-q", "-i", str(base / "runner.tar")], check=True, capture_output=True)
    checkout = HERE.parent
    run = [*podman, "run", "--rm", "--network", "host", "--security-opt", f"seccomp={profile}", *ROOT_PODMAN_LIMITS,
           "-v", f"{checkout}:{checkout}:ro", "-v", f"{sys.prefix}:{sys.prefix}:ro", "-v", f"{base / 'out'}:/out"]
    build = [f"{sys.prefix}/bin/python", "-m", "ocistrap", "build", "bookworm", "--variant", "minbase",
             "-o", "tar:/out/rootfs.tar"]
    refused = subprocess.run([*run, image, *build], capture_output=True, text=True)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith("run the container with `--cap-add MKNOD`")
    built = subprocess.run([*run, "--cap-add", "MKNOD", image, *build], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert "sandbox: root mode (a seccomp filter refuses to make user namespaces" in built.stderr
    assert printed_digests(built.stdout)["tar:/out/rootfs.tar"] == builds["unshare"][2]
