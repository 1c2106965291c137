"""A foreign architecture built through qemu-user binfmt, as the unprivileged account."""

import json
import struct
import subprocess
from pathlib import Path

import pytest
from debian.deb822 import Deb822
from e2e_helpers import (
    PODMAN,
    arm64_runnable,
    installed,
    mmdebstrap_differences,
    ocistrap,
    podman_environment,
    printed_digests,
    read_members,
    remove_podman_images,
)
from registry_fixture import registry  # noqa: F401  (fixture)

from ocistrap import hostarch
from ocistrap.rootfs import hostdpkg

pytestmark = [pytest.mark.e2e, pytest.mark.network]

EM_AARCH64 = 183
NATIVE_UNPACK = "arm64: the host's dpkg unpacks, the target's configures, emulated"
ROUTE = ("arm64: the host's dpkg unpacks", "arm64: the target's dpkg unpacks")


def blob(layout: Path, digest: str) -> dict:
    return json.loads((layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())


@pytest.mark.skipif(hostarch.native_arch() != "amd64", reason="the test pairs amd64 with arm64 under qemu")
def test_amd64_arm64_index_runs_each_platform_and_arm64_ran_its_scripts_under_qemu(tmp_path: Path, registry) -> None:
    if not arm64_runnable():
        pytest.fail("no qemu-aarch64 binfmt handler: `make test` as root sets it up; see `ocistrap doctor --arch arm64`")
    layout, image = tmp_path / "images", f"{registry.host}/test/multi:bookworm"
    result = ocistrap("build", "bookworm", "--variant", "essential", "--arch", "amd64,arm64", "--no-updates",
                      "--cache-dir", str(tmp_path / "cache"), "-o", f"oci:{layout}:multi", "--push", image)
    digest = printed_digests(result.stdout)[f"oci:{layout}:multi"]
    assert printed_digests(result.stdout)[f"docker://{image}"] == digest
    ocistrap("verify", f"oci:{layout}:multi")
    ocistrap("verify", f"docker://{image}")
    index = blob(layout, digest)
    platforms = {(m["platform"]["architecture"], m["platform"].get("variant")): m for m in index["manifests"]}
    assert set(platforms) == {("amd64", None), ("arm64", "v8")}
    config = blob(layout, blob(layout, platforms["arm64", "v8"]["digest"])["config"]["digest"])
    assert (config["os"], config["architecture"], config.get("variant")) == ("linux", "arm64", "v8")

    env = podman_environment()
    try:
        machines = [subprocess.run([*PODMAN, "run", "--rm", "--tls-verify=false", "--pull=always", "--arch", arch,
                                    image, "uname", "-m"], env=env, capture_output=True, text=True, check=True)
                    .stdout.strip() for arch in ("arm64", "amd64")]
    finally:
        remove_podman_images([image])
    assert machines == ["aarch64", "x86_64"]

    subprocess.run(["skopeo", "copy", f"oci:{layout}:multi", f"oci:{tmp_path / 'arm'}:arm64",
                    "--override-arch", "arm64"], check=True, capture_output=True)
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{tmp_path / 'arm'}:arm64", str(bundle)],
                   check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    header = (rootfs / "usr/bin/bash").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and struct.unpack_from("<H", header, 18)[0] == EM_AARCH64
    status = (rootfs / "var/lib/dpkg/status").read_text()
    assert "Architecture: arm64" in status and "Status: install ok half" not in status
    assert (rootfs / "var/lib/dpkg/arch").read_text().split() == ["arm64"]


def host_dpkg_series() -> tuple[int, int] | None:
    done = subprocess.run(["dpkg", "--version"], capture_output=True, text=True, check=False)
    parsed = hostdpkg.parse_version_output(done.stdout)
    return hostdpkg.series(parsed[0]) if parsed else None


@pytest.mark.skipif(hostarch.native_arch() != "amd64", reason="the test builds arm64 under qemu on amd64")
def test_arm64_minbase_unpacked_by_the_host_dpkg_matches_rootless_mmdebstrap(tmp_path: Path) -> None:
    """bookworm's dpkg is 1.21: on a bookworm host its own dpkg unpacks natively (and only the
    maintainer scripts and the configuring dpkg run under qemu); the tree must still be mmdebstrap's."""
    if not arm64_runnable():
        pytest.fail("no qemu-aarch64 binfmt handler: `make test` as root sets it up; see `ocistrap doctor --arch arm64`")
    reference = tmp_path / "mmdebstrap.tar"
    done = subprocess.run(["mmdebstrap", "--mode=unshare", "--variant=minbase", "--quiet", "--architectures=arm64",
                           "bookworm", str(reference)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ours = tmp_path / "ocistrap.tar"
    result = ocistrap("--debug", "build", "bookworm", "--variant", "minbase", "--arch", "arm64",
                      "--cache-dir", str(tmp_path / "cache"), "-o", f"tar:{ours}")
    routes = {line.strip() for line in result.stderr.splitlines() if line.strip().startswith(ROUTE)}
    if host_dpkg_series() == (1, 21):
        assert routes == {NATIVE_UNPACK}, routes
    else:
        assert routes and NATIVE_UNPACK not in routes, routes

    differences = mmdebstrap_differences(ours, reference)
    assert not differences, f"{len(differences)} differences:\n" + "\n".join(differences[:200])
    status = "var/lib/dpkg/status"
    ours_status, theirs_status = read_members(ours, [status])[status], read_members(reference, [status])[status]
    assert installed(ours_status) == installed(theirs_status)
    assert [(p["Package"], p["Status"]) for p in Deb822.iter_paragraphs(ours_status.decode())] == \
        [(p["Package"], p["Status"]) for p in Deb822.iter_paragraphs(theirs_status.decode())]
    assert read_members(ours, ["var/lib/dpkg/arch"])["var/lib/dpkg/arch"] == b"arm64\n"


def test_missing_binfmt_handler_is_a_clear_error_before_any_download(tmp_path: Path) -> None:
    result = ocistrap("build", "bookworm", "--arch", "nosuch", "--cache-dir", str(tmp_path / "cache"),
                      "-o", f"oci:{tmp_path / 'out'}", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"ocistrap: error: cannot build for nosuch on this {hostarch.native_arch()} host: "
        "unknown Debian architecture 'nosuch'"]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
