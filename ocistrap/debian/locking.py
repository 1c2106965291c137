"""Making a lockfile from the signed archives (resolving per architecture and layer) and checking one against them."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ocistrap import log
from ocistrap.debian import mirror, resolve
from ocistrap.debian.archive import Package, cyclic_gc_paused
from ocistrap.debian.cache import Cache
from ocistrap.debian.fetch import Fetcher
from ocistrap.debian.lock import LockedArch, LockedArchive, LockedLayer, LockedPackage, LockedRelease, Lockfile
from ocistrap.debian.mirror import Source
from ocistrap.debian.snapshot import Snapshots
from ocistrap.errors import ArchiveError


@dataclass(frozen=True)
class Selection:
    """What to install: the variant and extra packages."""

    variant: str = "minbase"
    include: tuple[str, ...] = ()
    install_recommends: bool = False
    layers: tuple[LockedLayer, ...] = ()
    slim: bool = False


def open_archives(source: Source, fetcher: Fetcher, cache: Cache, *, updates: bool = True,
                  security_mirror: str | None = None) -> list[tuple[Source, mirror.SignedRelease]]:
    """Verify the suite's Release and, for a stable release, those of its -updates and -security."""
    out = log.get()
    with out.step(f"verifying {source.suite} from {source.mirror}"):
        main = mirror.open_release(source, fetcher, cache)
    opened = [(source, main)]
    if updates:
        for extra in mirror.companions(source, main.release, security_mirror=security_mirror):
            with out.step(f"verifying {extra.suite} from {extra.mirror}"):
                opened.append((extra, mirror.open_release(extra, fetcher, cache)))
    return opened


def load_universe(opened: list[tuple[Source, mirror.SignedRelease]], arch: str, fetcher: Fetcher,
                  cache: Cache) -> list[tuple[int, Package]]:
    """Every package of every archive for ARCH, in archive order then index order (apt's order).

    A companion archive that does not carry ARCH at all (Debian's security
    archive has no s390x, for one) is skipped, as apt does.
    """
    return [(n, p) for n, (src, signed) in enumerate(opened)
            if n == 0 or arch in signed.release.architectures
            for p in mirror.load_packages(src, signed, arch, fetcher, cache)]


@dataclass(frozen=True)
class _Vouched:
    """The lockfile this process made last, the keyrings that verified its indices, and the
    signed stanzas of its packages: what checking that very object again would find."""

    lock: Lockfile
    keyrings: tuple[Path, ...]
    signed: dict[str, dict[str, Package]]


_vouched: _Vouched | None = None


def make_lock(source: Source, selection: Selection, architectures: tuple[str, ...],
              fetcher: Fetcher, cache: Cache, *, updates: bool = True,
              security_mirror: str | None = None) -> Lockfile:
    """Verify the archives' metadata, resolve the package set per architecture, and lock it."""
    global _vouched
    out = log.get()
    opened = open_archives(source, fetcher, cache, updates=updates, security_mirror=security_mirror)
    locked: dict[str, LockedArch] = {}
    signed: dict[str, dict[str, Package]] = {}
    for arch in architectures:
        with cyclic_gc_paused():
            with out.step(f"reading package indices for {arch}"):
                numbered = load_universe(opened, arch, fetcher, cache)
            with out.step(f"resolving {selection.variant} for {arch}"):
                packages, signed[arch] = _resolve_layers(resolve.Universe((p for _, p in numbered), arch),
                                                         selection, archive_of={id(p): n for n, p in numbered if n})
            del numbered
        mirror.give_back_freed_memory()  # the universe is gone: later phases peaked ~15 MiB higher
        essential = sum(p.stage == "essential" for p in packages)
        out.info(f"{arch}: {essential} essential + {len(packages) - essential} more packages")
        locked[arch] = LockedArch(releases=tuple(_locked_release(signed) for _, signed in opened),
                                  packages=tuple(packages))
    lock = Lockfile(mirror=source.mirror, suite=source.suite, components=source.components,
                    variant=selection.variant, include=selection.include,
                    install_recommends=selection.install_recommends,
                    archives=tuple(LockedArchive(mirror=s.mirror, suite=s.suite) for s, _ in opened),
                    architectures=locked, layers=selection.layers, slim=selection.slim)
    _vouched = _Vouched(lock, source.keyrings, signed)
    return lock


def _resolve_layers(universe: resolve.Universe, selection: Selection,
                    archive_of: dict[int, int]) -> tuple[list[LockedPackage], dict[str, Package]]:
    """Resolve the base, then each layer's group on top of everything before it.

    Each group adds what apt would install for the base's and all earlier
    groups' requests plus its own; a group that would change a package of an
    earlier layer is an error, since layers can only add. ARCHIVE_OF numbers the packages of the
    companion archives by id; the rest come from the main archive, 0 (a dict of all 77,000 took
    a fortieth of a warm lock).
    """
    include = list(selection.include)
    locked: dict[str, LockedPackage] = {}
    chosen: dict[str, Package] = {}
    for number in range(len(selection.layers) + 1):
        if number:
            include += selection.layers[number - 1].include
        resolution = resolve.resolve(universe, variant=selection.variant, include=tuple(include),
                                     install_recommends=selection.install_recommends)
        staged = [(p, "essential") for p in resolution.essential] + [(p, "rest") for p in resolution.rest]
        for package, stage in staged:
            earlier = locked.get(package.name)
            if earlier is None:
                locked[package.name] = _locked(package, stage, archive_of.get(id(package), 0),
                                               auto=stage == "rest" and resolution.auto_installed(package),
                                               layer=number)
                chosen[package.name] = package
            elif earlier.version != package.version:
                raise ArchiveError(
                    f"layer {selection.layers[number - 1].name!r} needs {package.name} {package.version}, "
                    f"but an earlier layer has {earlier.version}", hint="move those packages into one layer")
    return list(locked.values()), chosen


def _locked_release(signed: mirror.SignedRelease) -> LockedRelease:
    release = signed.release
    return LockedRelease(path=signed.path, sha256=signed.sha256, date=release.date.isoformat(),
                         suite=release.suite, codename=release.codename, keys=signed.keys)


def _locked(package: Package, stage: str, archive: int, *, auto: bool, layer: int) -> LockedPackage:
    return LockedPackage(name=package.name, version=package.version,
                         architecture=package.architecture, filename=package.filename,
                         size=package.size, sha256=package.sha256, stage=stage,
                         source=package.source, auto=auto, archive=archive, layer=layer)


def sources_of(lock: Lockfile, keyrings: tuple[Path, ...], releases: Sequence[LockedRelease] = (),
               snapshots: Snapshots = Snapshots()) -> list[Source]:
    """The archives of LOCK; with their RELEASES, where SNAPSHOTS keeps them as the lock knew them."""
    snapshot = {n: snapshots.fallback(a.mirror, r.date) for n, (a, r) in enumerate(zip(lock.archives, releases))}
    return [Source(mirror=a.mirror, suite=a.suite, components=lock.components, keyrings=keyrings,
                   snapshot=snapshot.get(n)) for n, a in enumerate(lock.archives)]


def open_pinned(lock: Lockfile, arch: str, keyrings: tuple[Path, ...], fetcher: Fetcher,
                cache: Cache) -> list[tuple[Source, mirror.SignedRelease]]:
    """Exactly the Releases LOCK pins for ARCH, verified with KEYRINGS (their expiry not checked again)."""
    releases = lock.architectures[arch].releases
    return [(src, mirror.open_release(src, fetcher, cache, pin=mirror.Pin(release.path, release.sha256)))
            for src, release in zip(sources_of(lock, keyrings, releases, fetcher.snapshots), releases)]


def check_lock_against_archive(lock: Lockfile, keyrings: tuple[Path, ...], fetcher: Fetcher,
                               cache: Cache) -> dict[str, dict[str, Package]]:
    """Prove each locked .deb is listed, with its hash, in the signed index it came from.

    A lockfile is plain JSON; this check makes an edited one useless to an
    attacker. It needs exactly the locked Releases, from the cache or the
    mirror; their expiry is not checked again: the lock pinned that state on purpose. The
    lockfile object ``make_lock`` just made from the verified indices, with the
    same keyrings, needs no second reading of them.
    """
    if _vouched is not None and _vouched.lock is lock and _vouched.keyrings == keyrings:
        return _vouched.signed
    signed_packages: dict[str, dict[str, Package]] = {}
    for arch, entry in lock.architectures.items():
        opened = open_pinned(lock, arch, keyrings, fetcher, cache)
        with cyclic_gc_paused():
            index = {(n, p.name, p.version, p.architecture): p
                     for n, p in load_universe(opened, arch, fetcher, cache)}
        signed_packages[arch] = {}
        for p in entry.packages:
            match = index.get((p.archive, p.name, p.version, p.architecture))
            if match is None or (match.filename, match.size, match.sha256) != (p.filename, p.size, p.sha256):
                raise ArchiveError(
                    f"lockfile entry {p.name} {p.version} ({p.architecture}) is not in the signed "
                    f"index of {lock.archives[p.archive].suite} with that file, size and SHA256; refusing it",
                    hint="regenerate the lockfile with `ocistrap lock`")
            signed_packages[arch][p.name] = match
    return signed_packages


def needed_by(locks: Sequence[Lockfile], keyrings: tuple[Path, ...], cache: Cache) -> set[str]:
    """The SHA256 of everything in CACHE that a warm build of LOCKS reads offline: the Release
    files and indices that the same check as a build's finds, the .debs and their expansions."""
    used: set[str] = set()
    cache.used = used
    try:
        for lock in locks:
            check_lock_against_archive(lock, keyrings, Fetcher(offline=True), cache)
            used.update(p.sha256 for entry in lock.architectures.values() for p in entry.packages)
    finally:
        cache.used = None
    return used
