"""Slim images: dpkg path filters that leave out documentation, manual pages and translations.

The rules are those of Debian's own slim images (debuerreotype): they go into
``/etc/dpkg/dpkg.cfg.d/`` before the first package is installed and stay in
the image, so dpkg honours them for every package, including those a derived
image installs later with apt-get. The essential packages are unpacked by tar
before dpkg runs; ``prune`` removes from that tree exactly what dpkg would
have skipped, with dpkg's own matching rules (``src/main/filters.c``).
"""

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from ocistrap.rootfs import inroot

CONFIG_PATH = "etc/dpkg/dpkg.cfg.d/ocistrap-slim"
_WILDCARDS = "*?[\\"
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Rule:
    """One ``path-exclude`` or ``path-include`` line; the last rule matching a path decides."""

    include: bool
    pattern: str

    def line(self) -> str:
        return f"path-{'include' if self.include else 'exclude'} {self.pattern}"

    def fixed(self) -> str:
        """The pattern up to its first wildcard."""
        end = min((i for i in (self.pattern.find(c) for c in _WILDCARDS) if i >= 0), default=len(self.pattern))
        return self.pattern[:end]


RULES: tuple[Rule, ...] = (
    Rule(False, "/usr/share/doc/*"),
    Rule(True, "/usr/share/doc/*/copyright"),
    Rule(False, "/usr/share/man/*"),
    Rule(False, "/usr/share/info/*"),
    Rule(False, "/usr/share/locale/*"),
    Rule(True, "/usr/share/locale/locale.alias"),
    Rule(False, "/usr/share/lintian/*"),
    Rule(False, "/usr/share/linda/*"),
)


def config_text(rules: Sequence[Rule] = RULES) -> str:
    """The dpkg configuration file that keeps an image slim."""
    return ("# ocistrap --slim: documentation, manual pages and translations are left out of\n"
            "# this image and of every package installed in it later (remove this file to get them).\n"
            + "".join(rule.line() + "\n" for rule in rules))


def skips(path: str, *, directory: bool, rules: Sequence[Rule] = RULES) -> bool:
    """Whether dpkg leaves out PATH (absolute, as in the package).

    A path matched by no rule is kept; otherwise the last matching rule wins.
    A directory or symlink that would be left out is still kept when an
    include rule could match something below it, as dpkg does.
    """
    skip = False
    for rule in rules:
        if fnmatchcase(path, rule.pattern):
            skip = not rule.include
    if skip and directory:
        return not any(rule.include and path.startswith(rule.fixed().rstrip("/")) for rule in rules)
    return skip


def prune(root: Path, rules: Sequence[Rule] = RULES) -> int:
    """Remove from the tree ROOT what dpkg would skip under RULES; return how many entries went.

    Directories go only once empty, so nothing an include rule keeps is lost. The tree's
    symlinks are the packages': every path is resolved inside ROOT (ocistrap.rootfs.inroot) and the
    walk never follows one.
    """
    removed = 0
    with inroot.Tree(root) as tree:
        for top in _tops(tree, rules):
            fd = tree.opendir(top)
            try:
                removed += _prune_below(fd, "/" + top, rules)
            finally:
                os.close(fd)
    return removed


def _prune_below(fd: int, here: str, rules: Sequence[Rule]) -> int:
    """Prune directory HERE (open as FD) depth first; symlinks are entries, never followed."""
    removed = 0
    with os.scandir(fd) as listing:
        entries = list(listing)
    for entry in entries:
        path = posixpath.join(here, entry.name)
        if entry.is_dir(follow_symlinks=False):
            child = os.open(entry.name, _DIR, dir_fd=fd)
            try:
                removed += _prune_below(child, path, rules)
                empty = not os.listdir(child)
            finally:
                os.close(child)
            if empty and skips(path, directory=True, rules=rules):
                os.rmdir(entry.name, dir_fd=fd)
                removed += 1
        elif skips(path, directory=entry.is_symlink(), rules=rules):
            os.unlink(entry.name, dir_fd=fd)
            removed += 1
    return removed


def _tops(tree: inroot.Tree, rules: Sequence[Rule]) -> list[str]:
    """The directories to walk: each exclude rule's deepest directory without a wildcard,
    unless the tree has a symlink there."""
    tops = {rule.fixed().strip("/").rpartition("/")[0] for rule in rules if not rule.include}
    return sorted(t for t in tops if tree.is_dir(t)
                  and not any(o != t and t.startswith(o + "/") for o in tops))
