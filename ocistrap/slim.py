"""Slim images: dpkg path filters that leave out documentation, manual pages and translations.

The rules are those of Debian's own slim images (debuerreotype): they go into
``/etc/dpkg/dpkg.cfg.d/`` before the first package is installed and stay in
the image, so dpkg honours them for every package, including those a derived
image installs later with apt-get. The essential packages are unpacked by tar
before dpkg runs; ``prune`` removes from that tree exactly what dpkg would
have skipped, with dpkg's own matching rules (``src/main/filters.c``).
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

CONFIG_PATH = "etc/dpkg/dpkg.cfg.d/ocistrap-slim"
_WILDCARDS = "*?[\\"


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

    Directories go only once empty, so nothing an include rule keeps is lost.
    """
    removed = 0
    for top in _tops(root, rules):
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            here = Path(dirpath)
            for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
                path = here / name
                if skips(_absolute(root, path), directory=path.is_symlink(), rules=rules):
                    path.unlink()
                    removed += 1
            if here != top and skips(_absolute(root, here), directory=True, rules=rules) and not any(here.iterdir()):
                here.rmdir()
                removed += 1
    return removed


def _tops(root: Path, rules: Sequence[Rule]) -> list[Path]:
    """The directories to walk: each exclude rule's deepest directory without a wildcard."""
    tops = {root / rule.fixed().lstrip("/").rpartition("/")[0] for rule in rules if not rule.include}
    return sorted(t for t in tops if t.is_dir() and not t.is_symlink()
                  and not any(o != t and o in t.parents for o in tops))


def _absolute(root: Path, path: Path) -> str:
    return "/" + path.relative_to(root).as_posix()
