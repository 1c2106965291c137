"""The build pipeline as a short sequence of steps: lock, fetch, bootstrap, image, deliver."""

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from ocistrap import assemble, bootstrap, doctor, expand, image, layer, log, mirror, resolve, sandbox, sbom, transports
from ocistrap.archive import Package
from ocistrap.cache import Cache
from ocistrap.errors import ArchiveError, BuildError
from ocistrap.fetch import Fetcher, Wanted
from ocistrap.lock import LockedArch, LockedArchive, LockedLayer, LockedPackage, LockedRelease, Lockfile
from ocistrap.mirror import Source
from ocistrap.transports import Reference, oci

T = TypeVar("T")


BACKGROUND_NICE = 10


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
        with out.step(f"reading package indices for {arch}"):
            numbered = load_universe(opened, arch, fetcher, cache)
        with out.step(f"resolving {selection.variant} for {arch}"):
            packages, signed[arch] = _resolve_layers(resolve.Universe((p for _, p in numbered), arch),
                                                     selection, archive_of={id(p): n for n, p in numbered})
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
    earlier layer is an error, since layers can only add.
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
                locked[package.name] = _locked(package, stage, archive_of[id(package)],
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


def sources_of(lock: Lockfile, keyrings: tuple[Path, ...]) -> list[Source]:
    return [Source(mirror=a.mirror, suite=a.suite, components=lock.components, keyrings=keyrings)
            for a in lock.archives]


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
    sources = sources_of(lock, keyrings)
    signed_packages: dict[str, dict[str, Package]] = {}
    for arch, entry in lock.architectures.items():
        opened = [(src, mirror.open_release(src, fetcher, cache, pin=mirror.Pin(release.path, release.sha256)))
                  for src, release in zip(sources, entry.releases)]
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


def wanted_debs(lock: Lockfile, arch: str) -> list[Wanted]:
    return [Wanted(url=lock.package_url(p), size=p.size, sha256=p.sha256,
                   what=f"{p.name}_{p.version}_{p.architecture}.deb")
            for p in lock.architectures[arch].packages]


@dataclass(frozen=True)
class Fetched:
    """A lockfile's packages, verified against the signed archive and present in the cache.

    PATHS are their expansions (ocistrap.expand), which is what the sandbox installs:
    for a build, names in its own scratch directory for the very files that were verified;
    PENDING makes them in the background, so a build can start before the last one is made.
    """

    signed: dict[str, dict[str, Package]]
    paths: dict[str, dict[str, Path]]
    pending: dict[str, expand.Pending]

    def complete(self) -> None:
        """Wait until every expansion is made (what `ocistrap fetch` leaves for offline builds)."""
        for arch, pending in self.pending.items():
            with log.get().step(f"expanding {len(pending.paths)} packages for {arch}"):
                pending.wait()

    def close(self) -> None:
        for pending in self.pending.values():
            pending.close()


def expansion_nice(arch_number: int, stage: str) -> int:
    """How nice the expanding of a package is: the first architecture's essential set is what the
    first sandbox waits for; the rest is expanded while dpkg configures it, and the other
    architectures' packages while the first one builds, so that dpkg keeps its core."""
    return 0 if arch_number == 0 and stage == "essential" else BACKGROUND_NICE


def fetch(lock: Lockfile, keyrings: tuple[Path, ...], fetcher: Fetcher, cache: Cache,
          private: Path | None = None) -> Fetched:
    """Make every locked .deb present and verified in the cache, and start expanding them; the
    caller closes the result. PRIVATE: a directory only this build writes, where each
    architecture's verified expansions are linked for the sandbox to read (none for `ocistrap fetch`)."""
    out = log.get()
    with out.step("checking the lockfile against the signed archive"):
        signed = check_lock_against_archive(lock, keyrings, fetcher, cache)
    fetched = Fetched(signed=signed, paths={}, pending={})
    try:
        for number, (arch, entry) in enumerate(lock.architectures.items()):
            wanted = wanted_debs(lock, arch)
            with out.step(f"fetching {len(wanted)} packages for {arch}"):
                meter = out.meter(total=len(wanted))
                found = fetcher.download_all(wanted, cache, progress=lambda w: meter.add(1, w.size))
            sources = {p.name: expand.Source(w.sha256, path, w.what, nice=expansion_nice(number, p.stage))
                       for p, w, path in zip(entry.packages, wanted, found)}
            order = entry.install_order()  # the plan's order, in which the sandbox waits for them
            into = _private_dir(private / arch) if private else None
            pending = fetched.pending[arch] = expand.Pending([sources[p.name] for p in order], cache, into=into)
            fetched.paths[arch] = {p.name: path for p, path in zip(order, pending.paths)}
    except BaseException:
        fetched.close()
        raise
    return fetched


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, mode=0o700)
    return path


@dataclass(frozen=True)
class Staging:
    """How the sandbox runs (decided once, see sandbox.decide_mode) and where the staging
    root lives (a tmpfs of the namespace, or a directory on disk)."""

    mode: sandbox.BuildMode
    workdir: Path | None = None


def make_plan(lock: Lockfile, arch: str, fetched: Fetched, staging_dir: Path, *,
              tmpfs: bool, epoch: int, keyrings: tuple[Path, ...]) -> bootstrap.Plan:
    """The inner half's instructions for ARCH: which files, in which stage, and the image's apt source."""
    entry = lock.architectures[arch]
    paths = fetched.paths[arch]
    signed = fetched.signed[arch]

    def debs(stage: str) -> list[bootstrap.Deb]:
        return [bootstrap.Deb(name=p.name, path=str(paths[p.name]), pre_depends=signed[p.name].pre_depends,
                              provides=signed[p.name].provides, arch=arch, auto=p.auto,
                              layer=p.layer)
                for p in entry.stage(stage)]

    custom = {f"ocistrap-{i}.gpg": k.read_bytes().hex() for i, k in enumerate(keyrings)
              if k != mirror.DEFAULT_KEYRING}
    signed_by = [f"/etc/apt/keyrings/{name}" for name in custom] or [str(mirror.DEFAULT_KEYRING)]
    debs_dirs = {str(p.parent) for p in paths.values()}
    if len(debs_dirs) != 1:
        raise BuildError("the cached packages are not in one directory")
    return bootstrap.Plan(arch=arch, essential=debs("essential"), rest=debs("rest"),
                          sources=bootstrap.sources_text(lock.archives, lock.components, signed_by),
                          staging=str(staging_dir), tmpfs=tmpfs, epoch=epoch,
                          debs_dir=debs_dirs.pop(), keyrings=custom, layer_count=len(lock.layers) + 1,
                          slim=lock.slim)


def run_bootstrap(lock: Lockfile, arch: str, fetched: Fetched, staging: Staging, *, epoch: int,
                  keyrings: tuple[Path, ...], sink: Callable[[BinaryIO], T]) -> bootstrap.Installed[T]:
    """Install ARCH's packages in a sandbox and pass each layer's tar stream to SINK."""
    base = staging.workdir or Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    with sandbox.scratch_dir(base, "ocistrap-staging-") as tmp:
        root = tmp / "root"
        root.mkdir()
        plan = make_plan(lock, arch, fetched, root, tmpfs=staging.workdir is None, epoch=epoch,
                         keyrings=keyrings)
        pending = fetched.pending[arch]
        with log.get().step(f"installing {len(lock.architectures[arch].packages)} packages for {arch}"):
            installed = bootstrap.bootstrap(plan, sink, mode=staging.mode, remove_on_exit=tmp, ready=pending.ready)
        log.get().record(f"expanding {len(pending.paths)} packages for {arch} (alongside)", pending.seconds())
        return installed


def provenance_of(lock: Lockfile) -> assemble.Provenance:
    """What the image's annotations say it was built from: the lock and the Release it pins."""
    return assemble.Provenance(suite=lock.suite, mirror=lock.mirror, lock_digest=lock.digest(),
                               release_sha256=next(iter(lock.architectures.values())).releases[0].sha256)


def release_epoch(lock: Lockfile) -> int:
    """SOURCE_DATE_EPOCH default: the signed Release's Date, the same on every machine."""
    dates = [datetime.fromisoformat(r.date) for a in lock.architectures.values() for r in a.releases]
    return int(max(dates).timestamp())


@dataclass(frozen=True)
class BuildRequest:
    """What to make of a lockfile: layers' compression, image settings, where it goes."""

    outputs: tuple[Reference, ...]
    staging: Staging
    compression: str = "gzip"
    options: assemble.ImageOptions = assemble.ImageOptions()
    epoch: int | None = None
    tls_verify: bool | None = None
    sbom: str | None = None


@dataclass(frozen=True)
class Built:
    digest: str
    outputs: tuple[Reference, ...]


def build(lock: Lockfile, keyrings: tuple[Path, ...], fetcher: Fetcher, cache: Cache,
          request: BuildRequest) -> Built:
    """Fetch, install, layer, wrap and deliver: the whole of `ocistrap build` after locking.
    Everything happens in a scratch directory of this build, which holds the packages it
    installs, and is gone (with every expansion finished or stopped) before this returns."""
    with sandbox.scratch_dir(cache.root / "partial", "build-") as tmp:
        fetched = fetch(lock, keyrings, fetcher, cache, private=tmp / "debs")
        try:
            return _install_and_deliver(lock, keyrings, fetched, tmp, request)
        finally:
            fetched.close()


def _install_and_deliver(lock: Lockfile, keyrings: tuple[Path, ...], fetched: Fetched, tmp: Path,
                         request: BuildRequest) -> Built:
    epoch = request.epoch if request.epoch is not None else release_epoch(lock)
    provenance = provenance_of(lock)
    layout = Path(tmp) / "layout"
    oci.init_layout(layout)
    manifests = []
    staging = request.staging
    for arch in lock.architectures:
        blobs, mode = run_bootstrap(lock, arch, fetched, staging, epoch=epoch, keyrings=keyrings,
                                    sink=lambda stream: write_layer(stream, layout / "blobs" / "sha256",
                                                                    request.compression))
        staging = replace(staging, mode=mode)  # a fallback holds for the next architecture
        layers = [assemble.Layer(blob, created_by) for blob, created_by in zip(blobs, _history(lock, arch))]
        manifests.append(assemble.write_image(layout, arch, layers, epoch=epoch, options=request.options,
                                              provenance=provenance))
    top = manifests[0] if len(manifests) == 1 else assemble.write_index(
        layout, manifests, provenance.annotations(image.rfc3339(epoch)))
    attached = sbom.attach_all(layout, lock, list(zip(lock.architectures, manifests)),
                               created=image.rfc3339(epoch)) if request.sbom else []
    with log.get().step("writing outputs"):
        ctx = transports.Context(tls_verify=request.tls_verify)
        for ref in request.outputs:
            transports.write(layout, top, ref, ctx)
            transports.attach(layout, attached, ref, ctx)
    return Built(digest=top.digest, outputs=request.outputs)


def write_layer(stream: BinaryIO, blobs_dir: Path, compression: str) -> layer.LayerBlob:
    """One layer's blob (bootstrap calls this once the stream's first bytes are there)."""
    out = log.get()
    with out.step("writing layer"):
        return layer.write_blob(out.meter().reader(stream), blobs_dir, compression=compression)  # type: ignore[arg-type]


def require_runnable(architectures: Iterable[str]) -> None:
    """Fail before any download when maintainer scripts of an architecture could not run here."""
    host = doctor.SystemHost()
    native = doctor.native_arch()
    for arch in architectures:
        check = doctor.check_binfmt(host, arch, native)
        if not check.ok:
            raise BuildError(f"cannot build for {arch} on this {native} host: {check.detail}")


def _history(lock: Lockfile, arch: str) -> list[str]:
    """What made each layer, for the image config's history."""
    packages = lock.architectures[arch].packages
    count = [sum(p.layer == n for p in packages) for n in range(len(lock.layers) + 1)]
    return [f"ocistrap {lock.variant}{' slim' if lock.slim else ''} {lock.suite} ({count[0]} packages)"] + [
        f"ocistrap layer {layer.name}: {', '.join(layer.include)} ({count[n]} packages)"
        for n, layer in enumerate(lock.layers, start=1)]
