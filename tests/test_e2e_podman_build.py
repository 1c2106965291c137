"""ocistrap in a RUN step of the account's rootless `podman build`, as a Containerfile build job
runs it: the step's root (the account's ids, 65536 of them from /etc/subuid) makes a user namespace
with its own map, and podman's masks of the container's /proc make the kernel refuse a new proc, so
the chroot's /proc is left empty (as in root mode). The image the step writes is the host's, byte for byte.

Root's `podman build` is tested in tests/test_e2e_docker.py (root only).
"""

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import (  # noqa: F401  (fixtures)
    OWN_MAP_STEP,
    PODMAN,
    RUNNER,
    STEP_EPOCH,
    archive_digest,
    cache_dir,
    locked,
    ocistrap,
    podman_build_step,
    podman_environment,
    printed_digests,
    remove_podman_images,
    runner_lock,
    sandbox_lines,
    work,
)

pytestmark = [pytest.mark.e2e, pytest.mark.network]


@pytest.fixture(scope="module")
def podman_env() -> dict[str, str]:
    try:
        return podman_environment()
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def runner(cache_dir: Path, work: Path, podman_env: dict[str, str]) -> Iterator[str]:  # noqa: F811
    """The runner image in the account's podman storage, built by ocistrap; removed at the end."""
    lock = runner_lock(cache_dir, work)
    ocistrap("build", "--lock", str(lock), "--cache-dir", str(cache_dir), "-o", f"containers-storage:{RUNNER}",
             env=podman_env)
    yield RUNNER
    remove_podman_images([RUNNER])


def test_a_rootless_podman_build_step_builds_the_host_s_image_in_unshare_mode(
        runner: str, locked: Callable[[str], Path], cache_dir: Path, work: Path,  # noqa: F811
        podman_env: dict[str, str]) -> None:
    lock = locked("bookworm")
    layout = f"oci:{work / 'host'}:bookworm"
    host = ocistrap("build", "--lock", str(lock), "--cache-dir", str(cache_dir), "-o", layout,
                    env={**os.environ, "SOURCE_DATE_EPOCH": STEP_EPOCH})
    result, archive = podman_build_step(PODMAN, lock, work / "podman-build", env=podman_env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert sandbox_lines(output) == OWN_MAP_STEP
    ocistrap("verify", f"oci-archive:{archive}:bookworm")
    assert archive_digest(archive, "bookworm") == printed_digests(host.stdout)[layout]
