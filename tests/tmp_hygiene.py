"""Earlier sessions' temporary directories, removed before a session starts.

A build test leaves gigabytes in its directories, and some of them hold read-only directories
(an image root of mode 0555 in a vfs containers storage, a test's unwritable output). pytest's
own clean-up gives up on those (it makes a directory writable but not its parent) and renames
what it could not remove to garbage-*, where it stays: a few runs fill the disk. Here every
directory this account owns is made writable first, so removing always finishes.
"""

import getpass
import os
import shutil
import stat
import tempfile
from pathlib import Path


def temproot() -> Path:
    """Where pytest makes this account's numbered session directories (its own rule)."""
    base = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    return Path(base) / f"pytest-of-{getpass.getuser()}"


def remove_tree(path: Path) -> None:
    """Remove path whatever the modes of its directories; what another id owns stays."""
    me = os.geteuid()
    _writable(path, me)
    for top, dirs, _ in os.walk(path):
        for name in dirs:
            _writable(Path(top) / name, me)
    shutil.rmtree(path, ignore_errors=True)


def _writable(directory: Path, me: int) -> None:
    try:
        info = directory.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode) and info.st_uid == me and info.st_mode & 0o700 != 0o700:
        directory.chmod(stat.S_IMODE(info.st_mode) | 0o700)


def stale_runs(root: Path, keep: int) -> list[Path]:
    """garbage-* and all but the newest keep numbered runs (pytest-N): the last failure stays
    to be read, older ones go, but never one a session still running uses (another `make unit`
    of this account, say)."""
    if not root.is_dir():
        return []
    numbered = sorted((entry for entry in root.iterdir() if _run_number(entry.name) is not None),
                      key=lambda entry: _run_number(entry.name))
    garbage = [entry for entry in root.iterdir() if entry.name.startswith("garbage-")]
    old = numbered[:-keep] if keep else numbered
    return sorted(garbage) + [entry for entry in old if not entry.is_symlink() and not _in_use(entry)]


def _in_use(run: Path) -> bool:
    """pytest's lock of a numbered run holds its session's pid until that session exits."""
    try:
        pid = int((run / ".lock").read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another account's
    return True


def _run_number(name: str) -> int | None:
    prefix, _, number = name.partition("-")
    return int(number) if prefix == "pytest" and number.isdigit() else None
