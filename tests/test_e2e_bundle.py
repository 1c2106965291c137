"""The air-gapped workflow end to end: bookworm minbase locked, bundled into a loopback
registry, built `--from` it with the mirror unreachable (every request to anything but
loopback goes to a dead proxy), into the very image the mirror gives; `verify` passes."""

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_helpers import cache_dir, locked, ocistrap, printed_digests, work  # noqa: F401  (shared fixtures)
from registry_fixture import RealRegistry, registry  # noqa: F401  (fixture)

pytestmark = [pytest.mark.e2e, pytest.mark.network]


def test_a_build_from_a_bundle_without_the_mirror_is_the_mirrors_image(
        locked: Callable[[str], Path], cache_dir: Path, work: Path, registry: RealRegistry) -> None:
    lock = locked("bookworm")
    from_mirror = ocistrap("build", "--lock", str(lock), "--cache-dir", str(cache_dir),
                           "-o", f"oci:{work / 'mirror'}:bookworm")
    bundle_ref = f"{registry.host}/bundles/bookworm:1"
    ocistrap("bundle", str(lock), "--cache-dir", str(cache_dir), "-o", f"docker://{bundle_ref}")
    walled = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
              "no_proxy": "127.0.0.1,localhost"}
    inside = ocistrap("build", "--from", f"docker://{bundle_ref}", "--cache-dir", str(work / "inside-cache"),
                      "-o", f"oci:{work / 'inside'}:bookworm", env=walled)
    assert set(printed_digests(inside.stdout).values()) == set(printed_digests(from_mirror.stdout).values())
    ocistrap("verify", f"oci:{work / 'inside'}:bookworm", "--lock", str(lock), env=walled)
