"""A foreign architecture built through qemu-user binfmt, as the unprivileged account."""

import json
import struct
import subprocess
from pathlib import Path

import pytest

from e2e_helpers import ocistrap, printed_digests
from ocistrap import doctor

pytestmark = [pytest.mark.e2e, pytest.mark.network]

EM_AARCH64 = 183


def arm64_runnable() -> bool:
    return doctor.check_binfmt(doctor.SystemHost(), "arm64", doctor.native_arch()).ok


@pytest.mark.skipif(doctor.native_arch() == "arm64", reason="arm64 is native here")
def test_arm64_image_runs_its_maintainer_scripts_under_qemu(tmp_path: Path) -> None:
    if not arm64_runnable():
        pytest.fail("no qemu-aarch64 binfmt handler: `make test` as root sets it up; see `ocistrap doctor --arch arm64`")
    layout = tmp_path / "images"
    result = ocistrap("build", "bookworm", "--variant", "essential", "--arch", "arm64", "--no-updates",
                      "--cache-dir", str(tmp_path / "cache"), "-o", f"oci:{layout}:arm64")
    digest = printed_digests(result.stdout)[f"oci:{layout}:arm64"]
    ocistrap("verify", f"oci:{layout}:arm64")
    manifest = json.loads((layout / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes())
    config = json.loads((layout / "blobs/sha256" / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
    assert (config["os"], config["architecture"], config.get("variant")) == ("linux", "arm64", "v8")
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{layout}:arm64", str(bundle)],
                   check=True, capture_output=True)
    rootfs = bundle / "rootfs"
    header = (rootfs / "usr/bin/bash").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and struct.unpack_from("<H", header, 18)[0] == EM_AARCH64
    status = (rootfs / "var/lib/dpkg/status").read_text()
    assert "Architecture: arm64" in status and "Status: install ok half" not in status
    assert (rootfs / "var/lib/dpkg/arch").read_text().split() == ["arm64"]


def test_missing_binfmt_handler_is_a_clear_error_before_any_download(tmp_path: Path) -> None:
    result = ocistrap("build", "bookworm", "--arch", "nosuch", "--cache-dir", str(tmp_path / "cache"),
                      "-o", f"oci:{tmp_path / 'out'}", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"ocistrap: error: cannot build for nosuch on this {doctor.native_arch()} host: "
        "unknown Debian architecture 'nosuch'"]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
