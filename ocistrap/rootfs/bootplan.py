"""What the bootstrap is asked to do: the plan passed from the host to the inside, and its pure parts."""

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ocistrap.debian import resolve
from ocistrap.errors import BuildError

if TYPE_CHECKING:  # the inner half starts faster without the lockfile's schema validator
    from ocistrap.debian.lock import LockedArchive

DEBS_MOUNT = "var/cache/ocistrap-debs"
MERGED_USR_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libo32", "libx32")
"""The directories usrmerge's convert-usrmerge moves into /usr."""


@dataclass(frozen=True)
class Deb:
    """A verified .deb in the cache and what ordering needs to know of it."""

    name: str
    path: str
    pre_depends: str = ""
    provides: str = ""
    arch: str = ""
    auto: bool = False
    layer: int = 0


@dataclass(frozen=True)
class Plan:
    """Everything the inner half needs; crosses the namespace boundary as JSON."""

    arch: str
    essential: list[Deb]
    rest: list[Deb]
    sources: str
    staging: str
    tmpfs: bool
    epoch: int
    debs_dir: str
    keyrings: dict[str, str] = field(default_factory=dict)
    layer_count: int = 1
    layer_fds: list[int] = field(default_factory=list)
    slim: bool = False
    record_owners: bool = False
    mounts: bool = True  # False without a namespace (root mode: rootfs.plainroot; chrootless): nothing is mounted
    ready_fd: int = -1
    phases_fd: int = -1
    chrootless: bool = False

    @property
    def plain_chroot(self) -> bool:
        """Root mode: a chroot with nothing mounted (ocistrap.rootfs.plainroot); chrootless mode
        mounts nothing either, but has no chroot at all."""
        return not self.mounts and not self.chrootless

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def loads(cls, data: bytes) -> "Plan":
        raw = json.loads(data)
        raw["essential"] = [Deb(**d) for d in raw["essential"]]
        raw["rest"] = [Deb(**d) for d in raw["rest"]]
        return cls(**raw)


def extended_states(debs: Iterable[Deb]) -> str:
    """apt's record of automatically installed packages, so `apt autoremove` works in the image."""
    return "".join(f"Package: {d.name}\nArchitecture: {d.arch}\nAuto-Installed: 1\n\n"
                   for d in sorted(debs, key=lambda d: d.name) if d.auto)


def sources_text(archives: Sequence["LockedArchive"], components: Sequence[str], signed_by: Sequence[str]) -> str:
    """The deb822 apt sources of the image: where its packages came from, one stanza per mirror."""
    suites: dict[str, list[str]] = {}
    for archive in archives:
        suites.setdefault(archive.mirror, []).append(archive.suite)
    return "\n".join(f"Types: deb\nURIs: {uri}\nSuites: {' '.join(names)}\n"
                     f"Components: {' '.join(components)}\nSigned-By: {' '.join(signed_by)}\n"
                     for uri, names in suites.items())


def merged_usr_aliases(plan: Plan) -> tuple[str, ...]:
    """The top-level directories to unpack the essential set through as merged /usr has them
    (``bin -> usr/bin``): usrmerge's, when the plan installs usrmerge, none otherwise.

    usrmerge's postinst converts an unmerged tree to that same end, moving every
    file of /bin, /sbin and /lib with cp and rm, emulated for a foreign
    architecture; on a merged tree it finds nothing to do, as after debootstrap.
    """
    names = {d.name for d in (*plan.essential, *plan.rest)}
    return MERGED_USR_DIRS if "usrmerge" in names else ()


def _groups(deb: Deb, field: str) -> tuple[tuple[str, ...], ...]:
    groups = resolve.parse_relations(getattr(deb, field), arch=deb.arch or "all",
                                     what=f"{field.replace('_', '-')} of {deb.name}")
    return tuple(tuple(alt.name for alt in group) for group in groups)


def install_batches(rest: Sequence[Deb], installed: Iterable[Deb]) -> list[list[Deb]]:
    """Split Rest into dpkg --install calls so that every Pre-Depends is configured first.

    A package goes into the first batch after all of its Pre-Depends are
    provided by earlier batches (or the essential set); dpkg orders
    configuration inside a batch by Depends itself.
    """
    available = set()
    for deb in installed:
        available |= _provided(deb)
    remaining = list(rest)
    batches: list[list[Deb]] = []
    while remaining:
        ready = [d for d in remaining if all(available.intersection(group)
                                             for group in _groups(d, "pre_depends"))]
        if not ready:
            names = ", ".join(d.name for d in remaining)
            raise BuildError(f"cannot order the installation of {names}: their Pre-Depends "
                                 f"are not in the locked package set")
        batches.append(ready)
        for deb in ready:
            available |= _provided(deb)
        remaining = [d for d in remaining if d not in ready]
    return batches


def _provided(deb: Deb) -> set[str]:
    return {deb.name}.union(*_groups(deb, "provides"))
