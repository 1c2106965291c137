"""Scratch directories a sandbox may fill with files of subordinate ids, and sweeping up after dead builds."""

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ocistrap import log
from ocistrap.errors import BuildError
from ocistrap.rootfs.spawn import spawn
from ocistrap.rootfs.syscalls import open_dir, try_flock


def remove_tree(path: Path) -> None:
    """Delete a tree built in a sandbox: its files belong to subordinate ids the caller
    cannot remove on the host."""
    if not path.exists() and not path.is_symlink():
        return
    proc = spawn(["rm", "-rf", "--one-file-system", "--", str(path)])
    if proc.wait() != 0:
        raise BuildError(f"cannot remove {path} (rm exited with status {proc.returncode})")


@contextmanager
def scratch_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A new directory PREFIX* below PARENT for a sandbox to build in (pass it to
    ``spawn`` as remove_on_exit); removed on the way out if it is still there.

    First it removes the PREFIX* siblings nobody holds: leftovers of builds whose
    sandbox died before it could clean up. This process and the sandbox hold a
    shared flock on the directory until it is gone; sweeping and creating happen
    under an exclusive flock on PARENT, so a sweep never takes a directory in use.
    Where flock(2) does not work (some network filesystems) nothing is swept.
    """
    guard = open_dir(parent, follow=True)
    try:
        if try_flock(guard, fcntl.LOCK_EX):
            _sweep(parent, prefix)
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        try:
            held = open_dir(path)
        except BaseException:
            path.rmdir()
            raise
        try_flock(held, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(guard)
    try:
        yield path
    finally:
        try:
            _discard(path)
        finally:
            os.close(held)


def _sweep(parent: Path, prefix: str) -> None:
    for path in sorted(parent.iterdir()):
        if not path.name.startswith(prefix) or path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = open_dir(path)
        except BuildError:
            continue
        try:
            if try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                log.get().info(f"removing {path}, left behind by an interrupted build")
                _discard(path)
        except (OSError, BuildError) as e:
            log.get().info(f"warning: cannot remove {path}: {e}")
        finally:
            os.close(fd)


def _discard(path: Path) -> None:
    """Remove PATH as the caller if it can, else from a sandbox (subordinate owners)."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except PermissionError:
        remove_tree(path)
