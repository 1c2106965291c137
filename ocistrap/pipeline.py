"""The build pipeline as a short sequence of steps: lock, fetch, bootstrap, image, deliver."""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ocistrap import log, mirror, resolve
from ocistrap.cache import Cache
from ocistrap.errors import OcistrapError
from ocistrap.fetch import Fetcher, Wanted
from ocistrap.lock import LockedArch, LockedPackage, LockedRelease, Lockfile
from ocistrap.mirror import Source


class PipelineError(OcistrapError):
    """The lockfile and the signed archive disagree."""


@dataclass(frozen=True)
class Selection:
    """What to install: the variant and extra packages."""

    variant: str = "minbase"
    include: tuple[str, ...] = ()
    install_recommends: bool = False


def make_lock(source: Source, selection: Selection, architectures: tuple[str, ...],
              fetcher: Fetcher, cache: Cache) -> Lockfile:
    """Verify the suite's metadata, resolve the package set per architecture, and lock it."""
    out = log.get()
    with out.step(f"verifying {source.suite} from {source.mirror}"):
        signed = mirror.open_release(source, fetcher, cache)
    locked: dict[str, LockedArch] = {}
    for arch in architectures:
        with out.step(f"reading package indices for {arch}"):
            packages = mirror.load_packages(source, signed, arch, fetcher, cache)
        with out.step(f"resolving {selection.variant} for {arch}"):
            resolution = resolve.resolve(resolve.Universe(packages, arch), variant=selection.variant,
                                         include=selection.include,
                                         install_recommends=selection.install_recommends)
        out.info(f"{arch}: {len(resolution.essential)} essential + {len(resolution.rest)} more packages")
        locked[arch] = LockedArch(release=_locked_release(signed), packages=tuple(
            [_locked(p, "essential") for p in resolution.essential]
            + [_locked(p, "rest") for p in resolution.rest]))
    return Lockfile(mirror=source.mirror, suite=source.suite, components=source.components,
                    variant=selection.variant, include=selection.include,
                    install_recommends=selection.install_recommends, architectures=locked)


def _locked_release(signed: mirror.SignedRelease) -> LockedRelease:
    release = signed.release
    return LockedRelease(path=signed.path, sha256=signed.sha256, date=release.date.isoformat(),
                         suite=release.suite, codename=release.codename)


def _locked(package, stage: str) -> LockedPackage:  # type: ignore[no-untyped-def]
    return LockedPackage(name=package.name, version=package.version,
                         architecture=package.architecture, filename=package.filename,
                         size=package.size, sha256=package.sha256, stage=stage,
                         source=package.source)


def source_of(lock: Lockfile, keyrings: tuple[Path, ...]) -> Source:
    return Source(mirror=lock.mirror, suite=lock.suite, components=lock.components,
                  keyrings=keyrings)


def check_lock_against_archive(lock: Lockfile, keyrings: tuple[Path, ...], fetcher: Fetcher,
                               cache: Cache) -> None:
    """Prove each locked .deb is listed, with its hash, in the signed index it came from.

    A lockfile is plain JSON; this check makes an edited one useless to an
    attacker. It needs the locked Release, which the cache keeps; the Release's
    expiry is not checked again: the lock pinned that state on purpose.
    """
    source = source_of(lock, keyrings)
    for arch, entry in lock.architectures.items():
        signed = mirror.open_release(source, fetcher, cache, sha256=entry.release.sha256,
                                     check_valid_until=False)
        signed_debs = {(p.name, p.version, p.architecture): (p.filename, p.size, p.sha256)
                       for p in mirror.load_packages(source, signed, arch, fetcher, cache)}
        for p in entry.packages:
            if signed_debs.get((p.name, p.version, p.architecture)) != (p.filename, p.size, p.sha256):
                raise PipelineError(
                    f"lockfile entry {p.name} {p.version} ({p.architecture}) is not in the signed "
                    f"index of {lock.suite} with that file, size and SHA256; refusing it",
                    hint="regenerate the lockfile with `ocistrap lock`")


def wanted_debs(lock: Lockfile, arch: str) -> list[Wanted]:
    base = lock.mirror.rstrip("/")
    return [Wanted(url=f"{base}/{p.filename}", size=p.size, sha256=p.sha256,
                   what=f"{p.name}_{p.version}_{p.architecture}.deb")
            for p in lock.architectures[arch].packages]


def fetch(lock: Lockfile, keyrings: tuple[Path, ...], fetcher: Fetcher, cache: Cache) -> dict[str, list[Path]]:
    """Make every locked .deb present and verified in the cache; return their paths per arch."""
    out = log.get()
    with out.step("checking the lockfile against the signed archive"):
        check_lock_against_archive(lock, keyrings, fetcher, cache)
    paths = {}
    for arch in lock.architectures:
        wanted = wanted_debs(lock, arch)
        with out.step(f"fetching {len(wanted)} packages for {arch}"):
            paths[arch] = fetcher.download_all(wanted, cache)
    return paths


def release_epoch(lock: Lockfile) -> int:
    """SOURCE_DATE_EPOCH default: the signed Release's Date, the same on every machine."""
    dates = [datetime.fromisoformat(a.release.date) for a in lock.architectures.values()]
    return int(max(dates).timestamp())
