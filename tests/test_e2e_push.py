"""Pushing, end to end as an unprivileged user: log in to a real docker-registry with htpasswd
auth on 127.0.0.1, build with --push, and check what skopeo, podman and umoci make of the result;
the same image through containers-storage; diff layers from --layer; failed logins.

Three builds serve the whole module (all from the same signed Release, sharing one package
cache): `ocistrap build bookworm --push` as a user types it, the same from `ocistrap lock` into
oci: and containers-storage:, and a layered lock with two --layer groups.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from e2e_helpers import (  # noqa: F401  (shared fixtures)
    PODMAN,
    cache_dir,
    locked,
    member_name,
    ocistrap,
    podman_env,
    podman_images,
    printed_digests,
    read_members,
    run,
    work,
)
from registry_fixture import REGISTRY_PASSWORD, REGISTRY_USER, RealRegistry, free_port

from ocistrap.debian import lock
from ocistrap.oci import ocilayout

pytestmark = [pytest.mark.e2e, pytest.mark.network]

REPOSITORY = "test/debian"
STORAGE_NAME = "localhost/ocistrap-test/debian:bookworm"
LAYERS = (("tools", ("procps", "less")), ("hello", ("hello",)))
HELLO_CONTAINERFILE = "FROM {image}\nRUN apt-get update && apt-get install -y hello && hello\n"


@dataclass(frozen=True)
class Session:
    """A registry behind htpasswd auth that the account has logged in to, with its own auth file."""

    server: RealRegistry
    auth_file: Path

    def ref(self, tag: str) -> str:
        return f"{self.server.host}/{REPOSITORY}:{tag}"

    def env(self) -> dict[str, str]:
        """The environment for ocistrap, skopeo and podman alike: all read REGISTRY_AUTH_FILE."""
        return {**os.environ, "REGISTRY_AUTH_FILE": str(self.auth_file)}


@dataclass(frozen=True)
class Pushed:
    digest: str
    stderr: str


@dataclass(frozen=True)
class Image:
    digest: str
    layout: Path
    tag: str = "bookworm"
    log: str = ""

    @property
    def oci(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    def manifest(self) -> dict:
        _, desc = ocilayout.read(self.layout, self.tag)
        return ocilayout.read_json(self.layout, desc)

    def config(self) -> dict:
        return json.loads(ocilayout.blob_path(self.layout, self.manifest()["config"]["digest"]).read_bytes())

    def layer_blobs(self) -> list[Path]:
        return [ocilayout.blob_path(self.layout, d["digest"]) for d in self.manifest()["layers"]]


def uploaded(stderr: str) -> int:
    """The blob count of the push summary `N blob(s) uploaded (...)`."""
    found = re.findall(r"(\d+) blob\(s\) uploaded", stderr)
    assert len(found) == 1, f"expected one push summary in:\n{stderr}"
    return int(found[0])


def login(host: str, password: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`ocistrap login HOST -u USER --password-stdin` with PASSWORD on its standard input."""
    return subprocess.run([sys.executable, "-m", "ocistrap", "login", host, "-u", REGISTRY_USER,
                           "--password-stdin"], input=password + "\n", capture_output=True, text=True, env=env)


def start_auth_registry(root: Path) -> RealRegistry:
    if shutil.which("docker-registry") is None or shutil.which("htpasswd") is None:
        pytest.skip("needs docker-registry and htpasswd (apt-get install docker-registry apache2-utils)")
    line = subprocess.run(["htpasswd", "-Bbn", REGISTRY_USER, REGISTRY_PASSWORD],
                          capture_output=True, text=True, check=True).stdout
    (root / "htpasswd").write_text(line.strip() + "\n")
    server = RealRegistry(root, free_port(), htpasswd=root / "htpasswd")
    server.start()
    return server


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """One registry for the module's builds (the `auth_registry` fixture is per test); logged in
    with `ocistrap login`."""
    server = start_auth_registry(tmp_path_factory.mktemp("push-registry"))
    try:
        here = Session(server, tmp_path_factory.mktemp("push-auth") / "auth.json")
        result = login(server.host, REGISTRY_PASSWORD, here.env())
        assert result.returncode == 0, result.stderr
        assert str(here.auth_file) in result.stdout
        yield here
    finally:
        server.kill()


@pytest.fixture(scope="module")
def pushed(session: Session, cache_dir: Path) -> Pushed:
    """`ocistrap build bookworm --push REF` exactly as the issue types it."""
    result = ocistrap("build", "bookworm", "--cache-dir", str(cache_dir), "--push", session.ref("bookworm"),
                      env=session.env())
    digest, = printed_digests(result.stdout).values()
    return Pushed(digest, result.stderr)


@pytest.fixture(scope="module")
def plain(work: Path, cache_dir: Path, locked, podman_images: list[str]) -> Image:
    """bookworm minbase from `ocistrap lock`, into an OCI layout and the account's containers-storage."""
    layout = work / "plain"
    podman_images.append(STORAGE_NAME)
    result = ocistrap("build", "--lock", str(locked("bookworm")), "--cache-dir", str(cache_dir),
                      "-o", f"oci:{layout}:bookworm", "-o", f"containers-storage:{STORAGE_NAME}")
    digests = set(printed_digests(result.stdout).values())
    assert len(digests) == 1, result.stdout
    return Image(digests.pop(), layout)


@pytest.fixture(scope="module")
def layered(work: Path, cache_dir: Path, locked, session: Session, pushed: Pushed) -> Image:
    """bookworm with `--layer tools=procps,less --layer hello=hello`, locked, built and pushed
    into the repository that already holds the plain image."""
    lockfile = work / "layered.lock"
    options = [f"--layer={name}={','.join(packages)}" for name, packages in LAYERS]
    ocistrap("lock", "bookworm", *options, "--cache-dir", str(cache_dir), "-o", str(lockfile))
    releases = {arch.releases for arch in lock.read(lockfile).architectures.values()}
    assert releases == {arch.releases for arch in lock.read(locked("bookworm")).architectures.values()}, (
        "the two locks must come from the same signed Releases for their base layers to be comparable")
    layout = work / "layered"
    result = ocistrap("build", "--lock", str(lockfile), "--cache-dir", str(cache_dir),
                      "-o", f"oci:{layout}:bookworm", "--push", session.ref("layered"), env=session.env())
    digests = set(printed_digests(result.stdout).values())
    assert len(digests) == 1, result.stdout
    return Image(digests.pop(), layout, log=result.stderr)


def skopeo_inspect(session: Session, tag: str, *options: str) -> dict:
    return json.loads(run("skopeo", "inspect", "--tls-verify=false", "--authfile", str(session.auth_file),
                          *options, f"docker://{session.ref(tag)}"))


def podman_run(image: str, *argv: str, env: dict[str, str], options: tuple[str, ...] = ()) -> str:
    return run(*PODMAN, "run", "--rm", *options, image, *argv, env=env)


def podman_build_hello(image: str, context: Path, tag: str, env: dict[str, str], *options: str) -> str:
    """`podman build` of a Containerfile FROM IMAGE that installs and runs hello from deb.debian.org."""
    context.mkdir()
    (context / "Containerfile").write_text(HELLO_CONTAINERFILE.format(image=image))
    return run(*PODMAN, "build", "--layers=false", *options, "-t", tag, str(context), env=env)


def debian_version(image: Image) -> str:
    return read_members(image.layer_blobs()[0], ["etc/debian_version"])["etc/debian_version"].decode()


# ---- 1. login, build --push, and the tools that consume the image ----

def test_build_push_stores_the_image_under_its_tag(pushed, plain, session):
    inspected = skopeo_inspect(session, "bookworm")
    assert inspected["Digest"] == pushed.digest
    assert len(inspected["Layers"]) == 1
    assert pushed.digest == plain.digest, "the same lock built twice (once implicitly) must be the same image"


def test_podman_runs_and_builds_from_the_pushed_image(pushed, plain, session, podman_env, podman_images, tmp_path):
    env = {**podman_env, "REGISTRY_AUTH_FILE": str(session.auth_file)}
    image = session.ref("bookworm")
    podman_images.append(image)
    out = podman_run(image, "cat", "/etc/debian_version", env=env, options=("--pull=always", "--tls-verify=false"))
    assert out == debian_version(plain)
    tag = "localhost/ocistrap-test/hello:registry"
    podman_images.append(tag)
    built = podman_build_hello(image, tmp_path / "context", tag, env, "--tls-verify=false")
    assert "Hello, world!" in built


def test_containers_storage_output_runs_and_builds(plain, podman_env, podman_images, tmp_path):
    out = podman_run(STORAGE_NAME, "cat", "/etc/debian_version", env=podman_env, options=("--pull=never",))
    assert out == debian_version(plain)
    stored = json.loads(run("skopeo", "inspect", "--raw", f"containers-storage:{STORAGE_NAME}"))
    assert stored == plain.manifest(), "skopeo stores the manifest unchanged, so its digest is ours"
    tag = "localhost/ocistrap-test/hello:storage"
    podman_images.append(tag)
    built = podman_build_hello(STORAGE_NAME, tmp_path / "context", tag, podman_env, "--pull=never")
    assert "Hello, world!" in built


# ---- 2. pushing what is already there ----

def test_pushing_the_same_image_again_uploads_nothing(pushed, plain, session):
    assert uploaded(pushed.stderr) == 2, "the first push uploads the layer and the config"
    again = ocistrap("push", plain.oci, session.ref("bookworm"), env=session.env())
    assert again.stdout.split()[-1] == plain.digest
    assert uploaded(again.stderr) == 0, again.stderr


# ---- 3. logins that fail, and logout ----

def test_wrong_password_is_refused_in_one_line_and_never_shown(auth_registry, tmp_path):
    wrong = "not-the-Pa55word-4711"
    auth_file = tmp_path / "auth.json"
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth_file)}
    default_file = Path(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent")) / "containers" / "auth.json"
    default_before = default_file.read_bytes() if default_file.exists() else None

    result = login(auth_registry.host, wrong, env)

    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocistrap: error: "), result.stderr
    assert REGISTRY_USER in lines[0] and auth_registry.host in lines[0]
    basic = base64.b64encode(f"{REGISTRY_USER}:{wrong}".encode()).decode()
    for secret in (wrong, basic):
        assert secret not in result.stdout + result.stderr
    assert not auth_file.exists()
    assert (default_file.read_bytes() if default_file.exists() else None) == default_before


def test_logout_forgets_the_login_and_push_then_asks_for_one(auth_registry, plain, tmp_path):
    auth_file = tmp_path / "auth.json"
    env = {**os.environ, "REGISTRY_AUTH_FILE": str(auth_file)}
    assert login(auth_registry.host, REGISTRY_PASSWORD, env).returncode == 0
    assert list(json.loads(auth_file.read_text())["auths"]) == [auth_registry.host]
    assert auth_file.stat().st_mode & 0o077 == 0

    ocistrap("logout", auth_registry.host, env=env)

    assert json.loads(auth_file.read_text())["auths"] == {}
    refused = ocistrap("push", plain.oci, f"{auth_registry.host}/{REPOSITORY}:x", env=env, check=False)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("ocistrap: error: ")
    assert f"ocistrap login {auth_registry.host}" in refused.stderr


# ---- 4. diff layers ----

@cache
def tar_entries(blob: Path) -> dict[str, tuple]:
    """Each member's header fields and content digest, by normalized path."""
    entries = {}
    with tarfile.open(blob) as tar:
        for m in tar:
            data = tar.extractfile(m).read() if m.isreg() else b""
            entries[member_name(m.name)] = (m.type, m.mode, m.uid, m.gid, m.mtime, m.linkname,
                                            dict(m.pax_headers), hashlib.sha256(data).hexdigest())
    return entries


def test_layered_image_shares_the_plain_base_layer(layered, plain, session):
    manifest = skopeo_inspect(session, "layered", "--raw")
    base, = plain.manifest()["layers"]
    assert len(manifest["layers"]) == 1 + len(LAYERS)
    assert manifest["layers"][0] == base
    assert uploaded(layered.log) == len(LAYERS) + 1, "only the diff layers and the config are new"
    assert layered.config()["rootfs"]["diff_ids"][0] == plain.config()["rootfs"]["diff_ids"][0]
    history = [h["created_by"] for h in layered.config()["history"]]
    assert len(history) == 1 + len(LAYERS)
    for (name, packages), created_by in zip(LAYERS, history[1:]):
        assert f"layer {name}: {', '.join(packages)}" in created_by


def test_each_group_lands_in_its_own_layer(layered):
    base, tools, hello = (set(tar_entries(blob)) for blob in layered.layer_blobs())
    assert "usr/bin/ps" in tools and "usr/bin/less" in tools and "usr/bin/ps" not in base
    assert "usr/bin/hello" in hello and "usr/bin/hello" not in base | tools
    assert "usr/bin/ps" not in hello, "a later layer must not repeat what an earlier one installed"
    whiteouts = sorted(p for p in tools | hello if p.rpartition("/")[2].startswith(".wh."))
    assert whiteouts == [], "groups only add packages: nothing of the layers below is removed"


def test_diff_layers_hold_only_changes(layered):
    below: dict[str, tuple] = {}
    repeated = []
    for number, blob in enumerate(layered.layer_blobs()):
        entries = tar_entries(blob)
        if number:
            repeated += [f"layer {number}: /{path}" for path, entry in entries.items()
                         if entry[0] != tarfile.DIRTYPE and below.get(path) == entry]
        below.update(entries)
    assert repeated == []


def test_layered_image_unpacks_and_runs(layered, session, work, podman_env, podman_images):
    bundle = work / "layered-bundle"
    run("umoci", "unpack", "--rootless", "--image", f"{layered.layout}:{layered.tag}", str(bundle))
    rootfs = bundle / "rootfs"
    assert (rootfs / "usr/bin/hello").is_file() and (rootfs / "usr/bin/ps").is_file()
    env = {**podman_env, "REGISTRY_AUTH_FILE": str(session.auth_file)}
    image = session.ref("layered")
    podman_images.append(image)
    out = podman_run(image, "sh", "-c", "hello && ps -o comm= -p 1", env=env,
                     options=("--pull=always", "--tls-verify=false"))
    assert out.splitlines() == ["Hello, world!", "sh"]


# ---- 5. verify reads back from the registry ----

@pytest.mark.parametrize("fixture,tag,layers", [("pushed", "bookworm", 1), ("layered", "layered", 1 + len(LAYERS))])
def test_verify_checks_the_pushed_image(fixture, tag, layers, request, session):
    image = request.getfixturevalue(fixture)
    result = ocistrap("verify", f"docker://{session.ref(tag)}", env=session.env())
    assert f"OK, 1 image(s), {layers} layer(s)" in result.stdout
    assert skopeo_inspect(session, tag)["Digest"] == image.digest
