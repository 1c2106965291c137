"""containers-storage: names, the missing-tool error, and real rootless stores (e2e, as an unprivileged account)."""

import json
import os
import shutil
import subprocess

import pytest
from e2e_helpers import podman_env_in
from image_helpers import build_image

from ocistrap.errors import TransportError
from ocistrap.oci import image, ocilayout
from ocistrap.transports import containers_storage, parse_reference
from ocistrap.transports import write as write_to


@pytest.mark.parametrize(
    "text, name",
    [
        ("containers-storage:debian", "localhost/debian:latest"),
        ("containers-storage:debian:bookworm", "localhost/debian:bookworm"),
        ("containers-storage:ocistrap/debian:sid", "localhost/ocistrap/debian:sid"),
        ("containers-storage:localhost/debian:sid", "localhost/debian:sid"),
        ("containers-storage:quay.io/x/debian:1", "quay.io/x/debian:1"),
        ("containers-storage:127.0.0.1:5000/debian", "127.0.0.1:5000/debian:latest"),
    ],
)
def test_storage_name(text, name):
    assert containers_storage.storage_name(parse_reference(text)) == name


@pytest.mark.parametrize(
    "text, message",
    [("containers-storage:", "needs a name"), (f"containers-storage:debian@sha256:{'a' * 64}", "not a digest")],
)
def test_storage_name_refused(text, message):
    with pytest.raises(TransportError, match=message):
        containers_storage.storage_name(parse_reference(text))


def test_clear_error_without_skopeo_or_podman(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="neither skopeo nor podman is installed"):
        write_to(tmp_path / "l", desc, parse_reference("containers-storage:debian"))


def podman(*argv: str, env: dict[str, str]) -> str:
    result = subprocess.run(["podman", "--log-level=error", *argv], capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"podman {argv}: {result.stderr}"
    return result.stdout


def exported_file(name: str, path: str, env: dict[str, str], tmp_path) -> bytes:
    container = podman("create", name, env=env).strip()
    try:
        podman("export", "-o", str(tmp_path / "fs.tar"), container, env=env)
    finally:
        podman("rm", container, env=env)
    out = subprocess.run(["tar", "-xOf", str(tmp_path / "fs.tar"), path], capture_output=True, check=True)
    return out.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("tool", containers_storage.TOOLS)
def test_image_lands_in_rootless_podman_storage(tmp_path, monkeypatch, tool):
    if shutil.which(tool) is None or shutil.which("podman") is None:
        pytest.skip(f"{tool} and podman are needed")
    monkeypatch.setattr(containers_storage, "TOOLS", (tool,))
    env = podman_env_in(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    layout = tmp_path / "l"
    desc = build_image(layout, [{"etc/hostname": b"ocistrap\n"}, {"etc/os-release": b"ID=debian\n"}])
    config = ocilayout.children(layout, desc)[0]
    name = f"ocistrap-test-storage-{tool}:{os.getpid()}"
    try:
        write_to(layout, desc, parse_reference(f"containers-storage:{name}"))
        info = json.loads(podman("image", "inspect", f"localhost/{name}", env=env))[0]
        assert info["Id"] == config.hex
        assert info["RootFS"]["Layers"] == ocilayout.read_json(layout, config)["rootfs"]["diff_ids"]
        if tool == "skopeo":
            assert info["Digest"] == desc.digest
        assert exported_file(f"localhost/{name}", "etc/os-release", env, tmp_path) == b"ID=debian\n"
    finally:
        subprocess.run(["podman", "rmi", "--force", f"localhost/{name}"], env=env, capture_output=True)


@pytest.mark.e2e
def test_index_stores_this_machine_s_platform(tmp_path, monkeypatch):
    if shutil.which("skopeo") is None or shutil.which("podman") is None:
        pytest.skip("skopeo and podman are needed")
    env = podman_env_in(tmp_path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", env["XDG_RUNTIME_DIR"])
    layout = tmp_path / "l"
    amd64 = build_image(layout, [{"etc/arch": b"amd64"}], arch="amd64")
    arm64 = build_image(layout, [{"etc/arch": b"arm64"}], arch="arm64")
    index = ocilayout.put_json(layout, image.make_index([amd64, arm64]), image.MEDIA_TYPE_INDEX)
    name = f"localhost/ocistrap-test-index:{os.getpid()}"
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    if native not in ("amd64", "arm64"):
        pytest.skip(f"no image for {native} in this index")
    try:
        write_to(layout, index, parse_reference(f"containers-storage:{name}"))
        assert exported_file(name, "etc/arch", env, tmp_path) == native.encode()
    finally:
        subprocess.run(["podman", "rmi", "--force", name], env=env, capture_output=True)
