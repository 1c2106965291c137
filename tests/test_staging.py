"""Where the tree is staged without a namespace's tmpfs: /dev/shm only where it serves, and a file
system no tree can be built in refused before anything is fetched."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from ocistrap import pipeline
from ocistrap.errors import BuildError
from ocistrap.rootfs import buildmode, plainroot
from ocistrap.rootfs.idmaps import IdMaps

GIB = 1 << 30
SHM = Path("/dev/shm")


def mountinfo(*lines: tuple[str, str, str]) -> str:
    """/proc/self/mountinfo lines for (mount point, per-mount options, file system type)."""
    return "".join(f"{30 + i} 1 0:{20 + i} / {point} {options} shared:{i} - {fstype} {fstype} rw\n"
                   for i, (point, options, fstype) in enumerate(lines))


def test_a_host_s_dev_shm_stages_when_it_has_room() -> None:
    assert plainroot.memory_staging(mountinfo(("/dev/shm", "rw,nosuid", "tmpfs")), 4 * GIB) == SHM
    assert plainroot.memory_staging(mountinfo(("/dev/shm", "rw,nosuid", "tmpfs")), GIB) is None


@pytest.mark.parametrize("options", ["rw,nosuid,nodev,noexec,relatime", "rw,noexec"])
def test_a_dev_shm_mounted_noexec_does_not_stage(options: str) -> None:
    """Docker's /dev/shm, however large --shm-size makes it, is noexec (and nodev)."""
    for device_nodes in (False, True):
        assert plainroot.memory_staging(mountinfo(("/dev/shm", options, "tmpfs")), 8 * GIB,
                                        device_nodes=device_nodes) is None


def test_a_nodev_dev_shm_stages_only_a_tree_without_device_nodes() -> None:
    """systemd mounts a host's /dev/shm nosuid,nodev: chrootless mode records its device nodes and
    stages there; root mode's mknod'ed /dev/null would not open."""
    nodev = mountinfo(("/dev/shm", "rw,nosuid,nodev", "tmpfs"))
    assert plainroot.memory_staging(nodev, 8 * GIB, device_nodes=False) == SHM
    assert plainroot.memory_staging(nodev, 8 * GIB, device_nodes=True) is None


def test_the_last_mount_on_dev_shm_is_the_one_seen() -> None:
    over = mountinfo(("/dev/shm", "rw,nosuid", "tmpfs"), ("/dev/shm", "rw,noexec", "tmpfs"))
    assert plainroot.memory_staging(over, 8 * GIB) is None
    under = mountinfo(("/dev/shm", "rw,noexec", "tmpfs"), ("/dev/shm", "rw,nosuid", "tmpfs"))
    assert plainroot.memory_staging(under, 8 * GIB) == SHM


def test_a_dev_shm_that_is_no_tmpfs_or_not_mounted_does_not_stage() -> None:
    assert plainroot.memory_staging(mountinfo(("/dev/shm", "rw", "ext4")), 8 * GIB) is None
    assert plainroot.memory_staging(mountinfo(("/", "rw", "ext4")), 8 * GIB) is None


def test_noexec_refuses_every_mode_and_nodev_only_root_s() -> None:
    tmp = Path("/tmp")
    assert "mounted noexec" in plainroot.staging_problem(tmp, os.ST_NOEXEC, device_nodes=False)
    assert "mounted noexec" in plainroot.staging_problem(tmp, os.ST_NOEXEC | os.ST_NODEV, device_nodes=True)
    assert "mounted nodev" in plainroot.staging_problem(tmp, os.ST_NODEV | os.ST_NOSUID, device_nodes=True)
    assert plainroot.staging_problem(tmp, os.ST_NODEV | os.ST_NOSUID, device_nodes=False) is None
    assert plainroot.staging_problem(tmp, 0, device_nodes=True) is None


def mode(kind: buildmode.ModeKind) -> buildmode.BuildMode:
    return buildmode.BuildMode(kind, IdMaps.single(1000, 1000), "test")


def flags_of(monkeypatch: pytest.MonkeyPatch, flags: int, **by_path: int) -> list[str]:
    """statvfs answers BY_PATH's flags for those paths, FLAGS for any other; the paths asked are recorded."""
    asked: list[str] = []

    def statvfs(path: os.PathLike) -> os.statvfs_result:
        asked.append(str(path))
        return os.statvfs_result((4096, 4096, 1, 1, 1, 1, 1, 1, by_path.get(str(path), flags), 255))
    monkeypatch.setattr(os, "statvfs", statvfs)
    return asked


@pytest.mark.parametrize("kind", [buildmode.CHROOTLESS, buildmode.ROOT])
def test_a_noexec_staging_directory_is_refused_before_anything_is_fetched(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: buildmode.ModeKind) -> None:
    asked = flags_of(monkeypatch, os.ST_NOEXEC)
    staging = pipeline.Staging(mode(kind), tmp_path)
    with pytest.raises(BuildError, match=f"{tmp_path} is on a file system mounted noexec") as raised:
        pipeline.check_staging(staging)
    assert raised.value.hint == "stage on another file system: --staging-dir DIR (or TMPDIR)"
    assert asked == [str(tmp_path)]


def test_a_namespace_s_own_tmpfs_needs_no_check_but_its_staging_dir_does(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    asked = flags_of(monkeypatch, os.ST_NOEXEC)
    pipeline.check_staging(pipeline.Staging(mode(buildmode.UNSHARE)))
    assert asked == []
    with pytest.raises(BuildError, match="mounted noexec"):
        pipeline.check_staging(pipeline.Staging(mode(buildmode.UNSHARE), tmp_path))


def test_nodev_is_refused_for_root_mode_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    flags_of(monkeypatch, os.ST_NODEV)
    pipeline.check_staging(pipeline.Staging(mode(buildmode.CHROOTLESS), tmp_path))
    with pytest.raises(BuildError, match="mounted nodev"):
        pipeline.check_staging(pipeline.Staging(mode(buildmode.ROOT), tmp_path))


def test_a_build_checks_its_staging_directory_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    flags_of(monkeypatch, os.ST_NOEXEC)
    monkeypatch.setattr(pipeline, "fetch", lambda *args, **kwargs: pytest.fail("fetched before the check"))
    request = SimpleNamespace(staging=pipeline.Staging(mode(buildmode.ROOT), tmp_path))
    with pytest.raises(BuildError, match="mounted noexec"):
        pipeline.build(None, (), None, SimpleNamespace(root=tmp_path / "cache"), request)  # type: ignore[arg-type]
    assert not (tmp_path / "cache").exists()


def places(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """A runtime directory and a temporary directory, both there; no /dev/shm that serves."""
    runtime, tmp = tmp_path / "run", tmp_path / "tmp"
    runtime.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setattr(pipeline.tempfile, "gettempdir", lambda: str(tmp))
    monkeypatch.setattr(plainroot, "staging_base", lambda device_nodes: None)
    return runtime, tmp


def test_root_mode_passes_over_a_nodev_runtime_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """systemd mounts /run/user/0 nosuid,nodev: root mode stages in the temporary directory, chrootless
    mode (no device nodes to open) in the runtime directory still."""
    runtime, tmp = places(monkeypatch, tmp_path)
    flags_of(monkeypatch, 0, **{str(runtime): os.ST_NODEV | os.ST_NOSUID})
    assert pipeline.staging_base(pipeline.Staging(mode(buildmode.ROOT))) == tmp
    assert pipeline.staging_base(pipeline.Staging(mode(buildmode.CHROOTLESS))) == runtime
    pipeline.check_staging(pipeline.Staging(mode(buildmode.ROOT)))


def test_where_no_place_serves_the_first_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runtime, _ = places(monkeypatch, tmp_path)
    flags_of(monkeypatch, os.ST_NOEXEC)
    with pytest.raises(BuildError, match=f"^{runtime} is on a file system mounted noexec"):
        pipeline.check_staging(pipeline.Staging(mode(buildmode.CHROOTLESS)))


def test_a_namespace_stages_under_the_runtime_directory_whatever_its_flags(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runtime, _ = places(monkeypatch, tmp_path)
    asked = flags_of(monkeypatch, os.ST_NOEXEC)
    assert pipeline.staging_base(pipeline.Staging(mode(buildmode.UNSHARE))) == runtime
    assert asked == []
