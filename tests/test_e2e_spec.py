"""Spec files end to end, as an unprivileged user against deb.debian.org: `ocistrap lock -f` and
`ocistrap build -f examples/debian-bookworm.toml` give the same lock and the same image digest as
the equivalent command line, and the example Containerfile builds FROM that image with podman."""

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import cache_dir, ocistrap, podman_env, printed_digests, run, work  # noqa: F401  (shared fixtures)

from ocistrap.debian import lock

pytestmark = [pytest.mark.e2e, pytest.mark.network]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SPEC = EXAMPLES / "debian-bookworm.toml"
EQUIVALENT = ("bookworm", "--variant", "minbase", "--compression", "gzip", "--cmd", "bash",
              "--label", "org.opencontainers.image.title=Debian bookworm minbase")
STORAGE_NAME = "localhost/ocistrap-test/spec-debian:bookworm"
HELLO_TAG = "localhost/ocistrap-test/spec-hello:latest"
PODMAN = ("podman", "--log-level=error")


def environment() -> dict[str, str]:
    """Both builds dated by the signed Release, whatever the caller's environment says."""
    return {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}


def built_digest(*argv: str) -> str:
    digests = set(printed_digests(ocistrap("build", *argv, env=environment()).stdout).values())
    assert len(digests) == 1, digests
    return digests.pop()


def image_config(layout: Path, tag: str) -> dict:
    def blob(digest: str) -> dict:
        return json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_text())
    index = json.loads((layout / "index.json").read_text())
    manifest, = (m for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag)
    return blob(blob(manifest["digest"])["config"]["digest"])


@pytest.fixture(scope="module")
def podman_cleanup() -> Iterator[None]:
    yield
    for name in (HELLO_TAG, STORAGE_NAME):
        subprocess.run([*PODMAN, "rmi", "--force", name], capture_output=True)


def test_lock_from_the_spec_equals_the_command_line_lock(work, cache_dir):
    from_spec, from_flags = work / "spec.lock", work / "flags.lock"
    ocistrap("lock", "-f", str(SPEC), "--cache-dir", str(cache_dir), "-o", str(from_spec))
    ocistrap("lock", *EQUIVALENT[:3], "--cache-dir", str(cache_dir), "-o", str(from_flags))
    assert lock.read(from_spec).digest() == lock.read(from_flags).digest()


def test_build_from_the_spec_is_the_command_line_image_and_podman_builds_from_it(
        work, cache_dir, podman_env, podman_cleanup):
    flags_lock = work / "flags-build.lock"
    ocistrap("lock", *EQUIVALENT[:3], "--cache-dir", str(cache_dir), "-o", str(flags_lock))
    spec_layout, flags_layout = work / "spec-layout", work / "flags-layout"
    from_spec = built_digest("-f", str(SPEC), "--cache-dir", str(cache_dir),
                             "-o", f"oci:{spec_layout}:test", "-o", f"containers-storage:{STORAGE_NAME}")
    from_flags = built_digest("--lock", str(flags_lock), *EQUIVALENT[3:], "--cache-dir", str(cache_dir),
                              "-o", f"oci:{flags_layout}:test")
    assert from_spec == from_flags
    labels = image_config(spec_layout, "test")["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "Debian bookworm minbase"

    run(*PODMAN, "build", "--layers=false", "--pull=never", "--build-arg", f"BASE={STORAGE_NAME}",
        "-f", str(EXAMPLES / "Containerfile"), "-t", HELLO_TAG, str(EXAMPLES), env=podman_env)
    assert run(*PODMAN, "run", "--rm", HELLO_TAG, env=podman_env).strip() == "Hello, world!"


def test_every_example_locks_as_it_says(tmp_path, cache_dir):
    locks = {}
    for path in sorted(EXAMPLES.glob("*.toml")):
        out = tmp_path / f"{path.stem}.lock"
        ocistrap("lock", "-f", str(path), "--cache-dir", str(cache_dir), "-o", str(out))
        locks[path.stem] = lock.read(out)
    sid = locks["debian-sid-build-essential"]
    assert sid.suite == "sid" and [layer.name for layer in sid.layers] == ["build-essential"]
    in_layer = {p.name for arch in sid.architectures.values() for p in arch.packages if p.layer == 1}
    assert {"build-essential", "gcc", "make"} <= in_layer
    assert locks["debian-trixie-slim"].slim and locks["debian-trixie-slim"].suite == "trixie"
    assert set(locks["debian-bookworm-multiarch"].architectures) == {"amd64", "arm64"}
    runner = {p.name for arch in locks["ocistrap-runner"].architectures.values() for p in arch.packages}
    assert {"python3", "python3-venv", "dpkg", "gpgv", "debian-archive-keyring", "ca-certificates"} <= runner
    assert not any(EXAMPLES.glob("*.lock")), "-o overrides the spec's lock key"
