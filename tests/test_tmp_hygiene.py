"""The test session's own clean-up: nothing a build test leaves may pile up on the disk."""

import os
import subprocess
from pathlib import Path

from tmp_hygiene import remove_tree, stale_runs


def test_a_tree_with_read_only_and_unsearchable_directories_is_removed(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    image_root = tree / "storage" / "vfs" / "dir" / "layer"
    (image_root / "etc").mkdir(parents=True)
    (image_root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tree / "locked").mkdir()
    (tree / "locked" / "inside").write_text("x")
    (tree / "link").symlink_to(image_root)
    image_root.chmod(0o555)
    (tree / "locked").chmod(0o000)
    tree.chmod(0o500)
    remove_tree(tree)
    assert not tree.exists() and tmp_path.exists()


def test_a_symlink_to_a_directory_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o555)
    tree = tmp_path / "run"
    tree.mkdir()
    (tree / "link").symlink_to(outside)
    remove_tree(tree)
    assert not tree.exists() and outside.stat().st_mode & 0o777 == 0o555


def test_stale_runs_are_the_garbage_and_all_but_the_newest_numbered_runs(tmp_path: Path) -> None:
    for name in ("pytest-9", "pytest-10", "pytest-11", "garbage-1234", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "pytest-current").symlink_to(tmp_path / "pytest-11")
    stale = [path.name for path in stale_runs(tmp_path, keep=1)]
    assert stale == ["garbage-1234", "pytest-9", "pytest-10"]
    assert [path.name for path in stale_runs(tmp_path, keep=0)][-1] == "pytest-11"
    assert stale_runs(tmp_path / "absent", keep=1) == []


def test_a_run_whose_session_is_alive_stays(tmp_path: Path) -> None:
    for name, pid in (("pytest-1", os.getpid()), ("pytest-2", _a_dead_pid()), ("pytest-3", None),
                      ("pytest-4", None)):
        (tmp_path / name).mkdir()
        if pid is not None:
            (tmp_path / name / ".lock").write_text(str(pid))
    assert [path.name for path in stale_runs(tmp_path, keep=1)] == ["pytest-2", "pytest-3"]


def _a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid
