"""Building where no user namespace can be made, as in a `docker run` job or a restricted pod:
the unprivileged account runs ocistrap under tests/docker_seccomp.py (Docker's default seccomp
profile refuses unshare, clone with CLONE_NEW*, setns and mount), `auto` picks chrootless
mode and says why, and the tree equals the one unshare mode builds from the same lock (and
so mmdebstrap's, tests/test_e2e_build.py): types, modes, owners, set-id bits, devices, link
targets, hard links, file contents.
"""

import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_helpers import (  # noqa: F401  (fixtures)
    MERGED_USR,
    HostDirs,
    cache_dir,
    content_differences,
    descendants,
    host_specific,
    locked,
    ocistrap,
    printed_digests,
    read_tree,
    start_interruptible,
    tree_differences,
    wait_for_dpkg,
    wait_gone,
    work,
)

from ocistrap.rootfs import hostdpkg

pytestmark = [pytest.mark.e2e, pytest.mark.network]

NO_USERNS = (sys.executable, str(Path(__file__).parent / "docker_seccomp.py"))


def _build(lock: Path, cache: Path, out: Path, *options: str, via: tuple[str, ...] = ()) -> tuple[Path, str]:
    staging = out / "staging"
    staging.mkdir(parents=True)
    rootfs = out / "rootfs.tar"
    result = ocistrap("build", "--lock", str(lock), "--cache-dir", str(cache), "--staging-dir", str(staging),
                      *options, "-o", f"tar:{rootfs}", via=via)
    assert list(printed_digests(result.stdout)) == [f"tar:{rootfs}"]
    assert list(staging.iterdir()) == [], "the staging tree was left behind"
    return rootfs, result.stderr


@pytest.fixture(scope="module")
def unshare_tree(locked: Callable[[str], Path], cache_dir: Path, work: Path) -> Path:
    return _build(locked("bookworm"), cache_dir, work / "unshare", "--mode", "unshare")[0]


@pytest.fixture(scope="module")
def chrootless(locked: Callable[[str], Path], cache_dir: Path, work: Path) -> tuple[Path, str]:
    return _build(locked("bookworm"), cache_dir, work / "chrootless", via=NO_USERNS)


def test_auto_picks_chrootless_and_says_why(chrootless: tuple[Path, str]) -> None:
    log = chrootless[1]
    line = next(line for line in log.splitlines() if "sandbox: " in line)
    assert line.strip().startswith("sandbox: chrootless mode (") and "user namespace" in line, line
    assert "maintainer scripts run on this host as you (no chroot)" in line


def test_doctor_says_what_the_build_does() -> None:
    out = ocistrap("doctor", via=NO_USERNS, check=False).stdout  # fails: user namespaces are refused
    line = next(line for line in out.splitlines() if " build mode " in line)
    assert line.split(None, 3)[3].startswith("chrootless, because ") and "user namespace" in line, line
    assert any(line.startswith("ok") and " chrootless mode " in line for line in out.splitlines())


def test_auto_refuses_another_release_than_the_host_s_before_any_download(
        locked: Callable[[str], Path], cache_dir: Path, work: Path) -> None:
    """The maintainer scripts would run this host's tools on another release's tree: auto says so
    in one line, naming the fix, and fetches nothing."""
    other = "sid" if "sid" not in hostdpkg.host_release_names(hostdpkg.read_os_release() or "") else "bookworm"
    out = work / "other-release"
    out.mkdir()
    result = ocistrap("build", "--lock", str(locked(other)), "--cache-dir", str(cache_dir), "-o",
                      f"tar:{out / 'rootfs.tar'}", via=NO_USERNS, check=False)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and f"a {other} tree would not be the one the other modes make" in errors[0], result.stderr
    assert "--mode chrootless" in errors[0] and "Traceback" not in result.stderr
    assert "fetching" not in result.stderr and list(out.iterdir()) == []


def test_tree_equals_the_unshare_build(chrootless: tuple[Path, str], unshare_tree: Path) -> None:
    ours, theirs = read_tree(chrootless[0]), read_tree(unshare_tree)
    assert len(ours.entries) > 8000
    assert tree_differences(ours, theirs, lambda _: False) == []
    assert content_differences(chrootless[0], unshare_tree, lambda _: False) == []


def test_owners_set_id_bits_devices_and_times_equal_the_unshare_build(chrootless: tuple[Path, str],
                                                                     unshare_tree: Path) -> None:
    """Every member's header too, the times of /dev and /tmp included (touched as a chroot's round
    leaves them, though nothing in chrootless mode needs them): the two are the same bytes."""
    def members(tarball: Path) -> dict[str, tuple[object, ...]]:
        with tarfile.open(tarball) as tar:
            return {m.name: (m.type, m.mode, m.uid, m.gid, m.uname, m.gname, m.size, m.linkname, m.devmajor,
                             m.devminor, m.mtime, dict(m.pax_headers)) for m in tar}
    ours, theirs = members(chrootless[0]), members(unshare_tree)
    assert list(ours) == list(theirs)
    assert {name: (ours[name], theirs[name]) for name in ours if ours[name] != theirs[name]} == {}
    assert chrootless[0].read_bytes() == unshare_tree.read_bytes()
    assert {(v[2], v[3]) for v in ours.values()} - {(0, 0)}, "only root owners: nothing was recorded"
    assert any(v[1] & 0o6000 for v in ours.values()), "no set-id bits"


def test_unshare_mode_fails_at_once_naming_the_cause(tmp_path: Path, locked: Callable[[str], Path]) -> None:
    result = ocistrap("build", "--lock", str(locked("bookworm")), "--cache-dir", str(tmp_path / "cache"),
                      "--mode", "unshare", "-o", f"tar:{tmp_path / 'out.tar'}", check=False, via=NO_USERNS)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ocistrap: error: ") and "user namespace" in lines[0], lines
    assert "Operation not permitted" in lines[0] or "seccomp" in lines[0], lines
    assert not (tmp_path / "out.tar").exists()
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*")), "it downloaded before refusing"


# What merging /usr before unpacking changes, against a tree that is not merged (mmdebstrap's
# chrootless mode leaves bookworm unmerged: usrmerge's conversion does not run without a chroot).
MERGE_TRACES = {"usr/lib64", "etc/ld.so.cache", "etc/shells", "var/lib/shells.state"}


def test_tree_equals_mmdebstraps_chrootless_tree_but_for_the_usr_merge(chrootless: tuple[Path, str],
                                                                      work: Path) -> None:
    """`mmdebstrap --mode=chrootless` under fakeroot, the reference for this mode: every entry of
    its /bin, /sbin and /lib is ours under /usr; the rest is equal but for what the merge changes."""
    if shutil.which("mmdebstrap") is None or shutil.which("fakeroot") is None:
        pytest.skip("needs mmdebstrap and fakeroot")
    theirs_tar = work / "mmdebstrap-chrootless.tar"
    subprocess.run(["fakeroot", "mmdebstrap", "--mode=chrootless", "--variant=minbase", "--quiet", "bookworm",
                    str(theirs_tar)], check=True)
    ours, theirs = read_tree(chrootless[0]), read_tree(theirs_tar)
    tops = {d.strip("/").removeprefix("usr/") for d in MERGED_USR}
    unmerged = {p for p in theirs.entries if p.split("/")[0] in tops}
    assert unmerged, "mmdebstrap merged /usr: this test's premise is gone"
    assert [p for p in unmerged if "/" in p and theirs.entries[p].kind != "dir"
            and ours.entries.get(f"usr/{p}") != theirs.entries[p]] == []
    moved = {f"usr/{p}" for p in unmerged}

    def ignore(path: str) -> bool:
        return host_specific(path) or path in unmerged or path in moved or path in MERGE_TRACES
    assert tree_differences(ours, theirs, ignore) == []
    assert content_differences(chrootless[0], theirs_tar, ignore) == []


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=lambda s: s.name)
def test_interrupted_build_leaves_no_process(signum: signal.Signals, locked: Callable[[str], Path],
                                            cache_dir: Path, work: Path) -> None:
    """No PID namespace ends dpkg and the maintainer scripts here: killing ocistrap (SIGKILL:
    the bootstrap's leader dies with it and kills its group) or Ctrl-C must still end them."""
    base = work / f"chrootless-{signum.name}"
    host = HostDirs.under(base)
    argv = [*NO_USERNS, sys.executable, "-m", "ocistrap", "build", "--lock", str(locked("bookworm")),
            "--cache-dir", str(cache_dir), "-o", f"oci:{base / 'layout'}:test"]
    proc = start_interruptible(argv, env=host.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_dpkg(proc, timeout=120)
        running = descendants(proc.pid)
        if signum == signal.SIGINT:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        _, err = proc.communicate()
    if signum == signal.SIGINT:
        assert proc.returncode == 130 and err.decode().strip().splitlines()[-1] == "ocistrap: interrupted", err
    assert wait_gone(running) == {}, f"processes outlived the build: {wait_gone(running, 0)}"
    assert not (base / "layout").exists()
