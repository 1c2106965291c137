"""End to end, as an unprivileged user against deb.debian.org: the real CLI in its own process,
checked against rootless mmdebstrap and against the tools that consume images.

Expensive things happen once: one mmdebstrap run per configuration, one lock per configuration,
one build per set of build options, all sharing one package cache.
"""

import json
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import pytest
from debian.deb822 import Deb822
from e2e_helpers import (  # noqa: F401  (fixtures)
    CONFIGS,
    HostDirs,
    Tree,
    assert_nothing_foreign,
    auto_installed,
    cache_dir,
    descendants,
    installed,
    locked,
    member_name,
    mmdebstrap,
    mmdebstrap_differences,
    ocistrap,
    podman_env,
    printed_digests,
    read_members,
    read_tree,
    run,
    start_interruptible,
    wait_for_dpkg,
    wait_gone,
    work,
)

from ocistrap.debian import lock

pytestmark = [pytest.mark.e2e, pytest.mark.network]

SOURCE_DATE_EPOCH = "1700000000"


@dataclass(frozen=True)
class Built:
    digest: str
    rootfs: Path
    layout: Path
    host: HostDirs
    tag: str = "test"
    log: str = ""

    @property
    def oci(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


@pytest.fixture(scope="module")
def reference(work: Path) -> Callable[[str], Path]:
    """mmdebstrap's tarball of a configuration, made on first use."""
    @cache
    def make(name: str) -> Path:
        config = CONFIGS[name]
        return mmdebstrap(config.suite, work / f"mmdebstrap-{name}.tar", include=config.include,
                          aptopts=config.aptopts())
    return make


@pytest.fixture(scope="module")
def build(work: Path, cache_dir: Path, locked: Callable[[str], Path]) -> Callable[..., Built]:
    """`ocistrap build --lock` of a configuration with OPTIONS, made once per (label, options);
    always into `tar:` and `oci:`, plus EXTRA outputs."""
    @cache
    def make(label: str, config: str = "bookworm", *options: str, epoch: str | None = None,
             extra: tuple[str, ...] = (), via: tuple[str, ...] = ()) -> Built:
        out = work / label
        built = Built(digest="", rootfs=out / "rootfs.tar", layout=out / "layout", host=HostDirs.under(out))
        env = built.host.env()
        env.pop("SOURCE_DATE_EPOCH", None)
        if epoch is not None:
            env["SOURCE_DATE_EPOCH"] = epoch
        refs = [f"tar:{built.rootfs}", built.oci, *extra]
        result = ocistrap("build", "--lock", str(locked(config)), "--cache-dir", str(cache_dir), *options,
                          *(a for ref in refs for a in ("-o", ref)), env=env, via=via)
        digests = printed_digests(result.stdout)
        assert list(digests) == refs and len(set(digests.values())) == 1, result.stdout
        return replace(built, digest=digests[refs[0]], log=result.stderr)
    return make


@pytest.fixture(scope="module")
def main_build(build: Callable[..., Built], work: Path) -> Built:
    """The bookworm minbase image every consumer test reads, in every output format."""
    return build("main", extra=(f"docker-archive:{work / 'main' / 'docker.tar'}:test/debian:bookworm",
                                f"oci-archive:{work / 'main' / 'image.tar'}:bookworm"))


# ---- 1. resolution ----

@pytest.mark.parametrize("name", ["bookworm", "sid", "bookworm+hello,procps"])
def test_lock_resolves_what_mmdebstrap_installs(name, reference, locked):
    status = read_members(reference(name), ["var/lib/dpkg/status"])["var/lib/dpkg/status"]
    theirs = installed(status)
    ours = {(p.name, p.version, p.architecture)
            for arch in lock.read(locked(name)).architectures.values() for p in arch.packages}
    assert sorted(ours - theirs) == [] and sorted(theirs - ours) == [], (
        f"only ocistrap: {sorted(ours - theirs)}; only mmdebstrap: {sorted(theirs - ours)}")


# ---- 2. the tree ----

def test_tree_matches_mmdebstrap(main_build, reference):
    differences = mmdebstrap_differences(main_build.rootfs, reference("bookworm"))
    assert not differences, f"{len(differences)} differences:\n" + "\n".join(differences[:200])


def test_package_database_matches_mmdebstrap(main_build, reference):
    files = ["var/lib/dpkg/status", "var/lib/apt/extended_states"]
    ours, theirs = read_members(main_build.rootfs, files), read_members(reference("bookworm"), files)

    def versions(status: bytes) -> list[tuple[str, str]]:
        return [(p["Package"], p["Version"]) for p in Deb822.iter_paragraphs(status.decode())]

    assert versions(ours[files[0]]) == versions(theirs[files[0]])
    assert auto_installed(ours[files[1]]) == auto_installed(theirs[files[1]])


# ---- 3. ready for downstream use ----

def resolve_in(tree: Tree, path: str) -> str:
    """PATH with the tree's directory symlinks followed (merged /usr: sbin -> usr/sbin)."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        entry = tree.entries.get("/".join(parts[:i]))
        if entry is not None and entry.kind == "symlink":
            base = "" if entry.target.startswith("/") else "/".join(parts[:i - 1])
            target = "/".join(p for p in (base, entry.target.strip("/")) if p)
            return resolve_in(tree, "/".join([target, *parts[i:]]))
    return path


def test_image_is_ready_for_apt_and_containers(main_build):
    tree = read_tree(main_build.rootfs)
    ssd = resolve_in(tree, "sbin/start-stop-daemon")
    sources_path = "etc/apt/sources.list.d/debian.sources"
    files = read_members(main_build.rootfs, [sources_path, ssd, "etc/machine-id"])

    stanzas = [dict(s) for s in Deb822.iter_paragraphs(files[sources_path].decode())]
    assert [(s["Types"], s["URIs"], s["Suites"], s["Components"]) for s in stanzas] == [
        ("deb", "http://deb.debian.org/debian", "bookworm bookworm-updates", "main"),
        ("deb", "http://deb.debian.org/debian-security", "bookworm-security", "main")]
    for s in stanzas:
        for keyring in s["Signed-By"].split():
            assert tree.entries.get(resolve_in(tree, keyring.lstrip("/")), None) is not None, keyring
    assert files.get("etc/machine-id", b"") == b""

    apt_state = [p for p in tree.entries if p.startswith(("var/lib/apt/lists/", "var/cache/apt/archives/"))]
    assert sorted(apt_state) == ["var/cache/apt/archives/lock", "var/cache/apt/archives/partial",
                                 "var/lib/apt/lists/lock", "var/lib/apt/lists/partial"]
    assert files[ssd].startswith(b"\x7fELF"), f"{ssd} is not the real start-stop-daemon"
    build_time_files = ("usr/sbin/policy-rc.d", "sbin/start-stop-daemon.REAL",
                        "etc/dpkg/dpkg.cfg.d/ocistrap-build", "var/cache/ocistrap-debs")
    assert [p for p in build_time_files if resolve_in(tree, p) in tree.entries] == []


def test_systemd_machine_id_is_emptied(build):
    built = build("systemd", "bookworm+systemd")
    files = read_members(built.rootfs, ["etc/machine-id", "var/lib/dpkg/status"])
    assert any(p[0] == "systemd" for p in installed(files["var/lib/dpkg/status"]))
    assert files["etc/machine-id"] == b""


# ---- 4. reproducible ----

def image_config(built: Built) -> dict:
    index = json.loads((built.layout / "index.json").read_text())
    manifest, = [m for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == built.tag]
    blob = built.layout / "blobs" / "sha256"
    config = json.loads((blob / manifest["digest"].removeprefix("sha256:")).read_text())["config"]
    return json.loads((blob / config["digest"].removeprefix("sha256:")).read_text())


def release_time(lockfile: Path) -> datetime:
    return max(datetime.fromisoformat(r.date)
               for arch in lock.read(lockfile).architectures.values() for r in arch.releases)


def created(built: Built) -> datetime:
    return datetime.fromisoformat(image_config(built)["created"].replace("Z", "+00:00"))


def test_rebuild_is_identical_and_dated_by_the_release(main_build, build, locked):
    again = build("again")
    assert again.digest == main_build.digest
    assert created(again) == release_time(locked("bookworm"))


def test_rebuild_with_source_date_epoch_is_identical(main_build, build):
    first, second = build("epoch-1", epoch=SOURCE_DATE_EPOCH), build("epoch-2", epoch=SOURCE_DATE_EPOCH)
    assert first.digest == second.digest != main_build.digest
    assert created(first) == datetime.fromtimestamp(int(SOURCE_DATE_EPOCH), timezone.utc)


def last_password_changes(rootfs: Path) -> set[str]:
    with tarfile.open(rootfs) as tar:
        shadow = tar.extractfile(next(m for m in tar if member_name(m.name) == "etc/shadow"))
        assert shadow is not None
        return {line.split(":")[2] for line in shadow.read().decode().splitlines()}


def test_maintainer_scripts_date_by_the_epoch_not_the_clock(main_build, build, locked):
    """shadow's postinst dates every account's last password change by SOURCE_DATE_EPOCH when set:
    with the build's clock, a lock rebuilt on another day gave another image (it did, before)."""
    epoch_build = build("epoch-1", epoch=SOURCE_DATE_EPOCH)
    assert last_password_changes(epoch_build.rootfs) == {str(int(SOURCE_DATE_EPOCH) // 86400)}
    assert last_password_changes(main_build.rootfs) == {str(int(release_time(locked("bookworm")).timestamp()) // 86400)}


def test_zstd_rebuild_of_an_image_with_systemd_is_identical(build):
    first = build("zstd-1", "bookworm+systemd", "--compression", "zstd")
    second = build("zstd-2", "bookworm+systemd", "--compression", "zstd")
    assert first.digest == second.digest
    manifest = subprocess.run(["skopeo", "inspect", "--raw", first.oci], capture_output=True, text=True,
                              check=True).stdout
    assert json.loads(manifest)["layers"][0]["mediaType"].endswith("+zstd")


def test_staging_on_disk_builds_the_same_image(main_build, build, work):
    staging = work / "staging"
    staging.mkdir()
    on_disk = build("on-disk", "bookworm", "--staging-dir", str(staging))
    assert on_disk.digest == main_build.digest
    assert list(staging.iterdir()) == []


def test_timings_split_the_install_into_unpacking_and_configuring(main_build, locked, cache_dir, work):
    """`--timings` (as JSON here) breaks the sandbox's work down: ocistrap's unpacking of the
    essential set, dpkg until it starts configuring, dpkg configuring; the image is the same."""
    out = work / "timed"
    result = ocistrap("--timings", "--log-format", "json", "build", "--lock", str(locked("bookworm")),
                      "--cache-dir", str(cache_dir), "-o", f"oci:{out}:t")
    assert printed_digests(result.stdout)[f"oci:{out}:t"] == main_build.digest
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    steps = next(e["steps"] for e in events if e.get("event") == "timings")
    names = [s["name"] for s in steps]
    parent = names.index("unpacking and configuring")
    children = steps[parent + 1:parent + 4]
    assert [s["name"] for s in children] == ["unpacking the essential set", "dpkg unpacking", "dpkg configuring"]
    assert all(s["depth"] == steps[parent]["depth"] + 1 and s["seconds"] > 0 for s in children), children
    assert sum(s["seconds"] for s in children) <= steps[parent]["seconds"]


def test_single_uid_mode_builds_the_same_image(main_build, build, work):
    """Only the caller's id mapped: owners, modes and devices recorded instead of applied
    still give the unshare build's bytes, so also mmdebstrap's tree. The staging tree is on
    disk, where inode numbers are reused: records of removed files must not stick to new ones."""
    staging = work / "single-uid-staging"
    staging.mkdir()
    single = build("single-uid", "bookworm", "--mode", "single-uid", "--staging-dir", str(staging))
    assert list(staging.iterdir()) == []
    assert "sandbox: single-uid mode (requested with --mode single-uid)" in single.log
    assert "sandbox: unshare mode" in main_build.log
    assert single.digest == main_build.digest
    assert "ok" in ocistrap("verify", single.oci).stdout.lower()


def test_auto_mode_falls_back_to_single_uid_inside_a_user_namespace(main_build, build):
    """In a user namespace of its own (a rootless container) newuidmap cannot map the caller's
    subordinate ids: the build says why and records owners instead."""
    nested = build("nested", via=("unshare", "--user", "--map-current-user"))
    assert "sandbox: single-uid mode (ocistrap runs inside a user namespace that does not map root" in nested.log
    assert nested.digest == main_build.digest


# ---- 5. real tools accept the output ----

def test_verify_skopeo_and_umoci_accept_the_layout(main_build, work):
    assert "ok" in ocistrap("verify", main_build.oci).stdout.lower()
    assert ocistrap("verify", f"oci-archive:{work / 'main' / 'image.tar'}:bookworm").returncode == 0
    assert json.loads(run("skopeo", "inspect", main_build.oci))["Digest"] == main_build.digest
    bundle = work / "bundle"
    run("umoci", "unpack", "--rootless", "--image", f"{main_build.layout}:{main_build.tag}", str(bundle))
    version = read_members(main_build.rootfs, ["etc/debian_version"])["etc/debian_version"]
    assert (bundle / "rootfs" / "etc" / "debian_version").read_bytes() == version





def test_podman_runs_the_docker_archive(main_build, work, podman_env):
    name = "localhost/test/debian:bookworm"
    podman = ("podman", "--log-level=error")
    try:
        run(*podman, "load", "-i", str(work / "main" / "docker.tar"), env=podman_env)
        out = run(*podman, "run", "--rm", name, "sh", "-c", "cat /etc/debian_version; apt-mark showauto",
                  env=podman_env)
    finally:
        subprocess.run([*podman, "rmi", "--force", name], env=podman_env, capture_output=True)
    version, *auto = out.splitlines()
    files = read_members(main_build.rootfs, ["etc/debian_version", "var/lib/apt/extended_states"])
    assert version.encode() + b"\n" == files["etc/debian_version"]
    assert set(auto) == auto_installed(files["var/lib/apt/extended_states"]) != set()


# ---- 6. nothing left on the host ----

def test_successful_build_leaves_nothing(main_build, cache_dir):
    assert list(main_build.host.runtime.iterdir()) == []
    assert list(main_build.host.tmp.iterdir()) == []
    assert_nothing_foreign(main_build.host.tmp, main_build.host.runtime, cache_dir, main_build.layout.parent)


@pytest.mark.parametrize("signum,staging", [
    (signal.SIGKILL, "memory"),
    (signal.SIGKILL, "disk"),
    (signal.SIGINT, "memory"),
    (signal.SIGINT, "disk"),
], ids=lambda v: getattr(v, "name", v))
def test_interrupted_build_leaves_nothing(signum, staging, locked, cache_dir, work):
    base = work / f"killed-{signum.name}-{staging}"
    host = HostDirs.under(base)
    staging_dir = base / "staging"
    staging_dir.mkdir()
    options = ["--staging-dir", str(staging_dir)] if staging == "disk" else []
    argv = ["build", "--lock", str(locked("bookworm")), "--cache-dir", str(cache_dir), *options,
            "-o", f"oci:{base / 'layout'}:test"]
    with open(base / "stderr", "w+") as stderr:
        proc = start_interruptible([sys.executable, "-m", "ocistrap", *argv], env=host.env(),
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_for_dpkg(proc)
            sandboxed = descendants(proc.pid)
            if signum == signal.SIGINT:
                os.killpg(proc.pid, signum)  # as Ctrl-C in a terminal: the whole foreground group
            else:
                proc.send_signal(signum)
            status = proc.wait(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        stderr.seek(0)
        said = stderr.read()
    if signum == signal.SIGINT:
        assert status == 130, said
        assert said.strip().splitlines()[-1] == "ocistrap: interrupted", said
    assert wait_gone(sandboxed) == {}, f"processes outlived the build: {wait_gone(sandboxed, 0)}"
    assert not (base / "layout").exists()
    assert_nothing_foreign(host.tmp, host.runtime, staging_dir, cache_dir)


# ---- 7. errors a user sees ----

@pytest.mark.parametrize("quiet", [True, False])
def test_unknown_suite_is_one_line(quiet, cache_dir, tmp_path):
    result = ocistrap(*["--quiet"] * quiet, "build", "nosuchsuite", "--cache-dir", str(cache_dir),
                      "-o", f"oci:{tmp_path / 'layout'}", check=False)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ocistrap:")]
    assert len(errors) == 1 and errors[0].startswith("ocistrap: error: ") and "nosuchsuite" in errors[0]
    assert "Traceback" not in result.stderr
    if quiet:
        assert result.stderr.strip() == errors[0]
    assert result.stdout == "" and not (tmp_path / "layout").exists()
