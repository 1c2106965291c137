"""Root mode's packages in the tree (ocistrap.rootfs.plainroot.provide): copies, whole."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ocistrap.rootfs import plainroot


def test_provide_copies_each_package_whole_and_once(tmp_path: Path) -> None:
    debs = tmp_path / "cache"
    debs.mkdir()
    big, empty = debs / "big.deb", debs / "empty.deb"
    big.write_bytes(os.urandom(3 << 20))
    empty.write_bytes(b"")
    root = tmp_path / "root"
    (root / "debs").mkdir(parents=True)
    plainroot.provide(root, "debs", [str(big), str(empty)])
    copy = root / "debs" / "big.deb"
    assert copy.read_bytes() == big.read_bytes() and (root / "debs" / "empty.deb").read_bytes() == b""
    assert copy.stat().st_ino != big.stat().st_ino and stat.S_IMODE(copy.stat().st_mode) == 0o644 & ~_umask()
    copy.write_bytes(b"changed in the tree")
    plainroot.provide(root, "debs", [str(big)])
    assert copy.read_bytes() == b"changed in the tree" and big.stat().st_size == 3 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
