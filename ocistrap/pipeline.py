"""The build pipeline as a short sequence of steps: lock, fetch, bootstrap, image, deliver."""

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, TypeVar

from ocistrap import log, signing, transports
from ocistrap.debian import expand, mirror
from ocistrap.debian.archive import Package
from ocistrap.debian.cache import Cache
from ocistrap.debian.fetch import Fetcher, Wanted
from ocistrap.debian.lock import Lockfile
from ocistrap.debian.locking import check_lock_against_archive
from ocistrap.debian.snapshot import Snapshots
from ocistrap.errors import BuildError
from ocistrap.oci import assemble, blobwriter, image, ocilayout, provenance, sbom
from ocistrap.oci.keys import PrivateKey
from ocistrap.rootfs import bootplan, bootstrap, buildmode, hostdpkg, plainroot, scratchdirs
from ocistrap.transports import Reference

T = TypeVar("T")
BACKGROUND_NICE = 10


def wanted_debs(lock: Lockfile, arch: str, snapshots: Snapshots = Snapshots()) -> list[Wanted]:
    """ARCH's .debs, each with where SNAPSHOTS keeps it should the mirror have dropped it."""
    releases = lock.architectures[arch].releases
    snapshot = [snapshots.fallback(a.mirror, r.date) for a, r in zip(lock.archives, releases)]
    return [Wanted(url=lock.package_url(p), size=p.size, sha256=p.sha256,
                   what=f"{p.name}_{p.version}_{p.architecture}.deb",
                   fallback=f"{snapshot[p.archive]}/{p.filename}" if snapshot[p.archive] else None)
            for p in lock.architectures[arch].packages]


@dataclass(frozen=True)
class Fetched:
    """A lockfile's packages, verified against the signed archive and present in the cache.

    PATHS are their expansions (ocistrap.debian.expand), which is what the sandbox installs:
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
            wanted = wanted_debs(lock, arch, fetcher.snapshots)
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
    """How the sandbox runs (decided once, see buildmode.decide_mode) and where the staging
    root lives (a tmpfs of the namespace, or a directory on disk)."""

    mode: buildmode.BuildMode
    workdir: Path | None = None


def make_plan(lock: Lockfile, arch: str, fetched: Fetched, staging_dir: Path, *,
              tmpfs: bool, epoch: int, keyrings: tuple[Path, ...]) -> bootplan.Plan:
    """The inner half's instructions for ARCH: which files, in which stage, and the image's apt source."""
    entry = lock.architectures[arch]
    paths = fetched.paths[arch]
    signed = fetched.signed[arch]

    def debs(stage: str) -> list[bootplan.Deb]:
        return [bootplan.Deb(name=p.name, path=str(paths[p.name]), pre_depends=signed[p.name].pre_depends,
                              provides=signed[p.name].provides, arch=arch, auto=p.auto,
                              layer=p.layer)
                for p in entry.stage(stage)]

    custom = {f"ocistrap-{i}.gpg": k.read_bytes().hex() for i, k in enumerate(keyrings)
              if k != mirror.DEFAULT_KEYRING}
    signed_by = [f"/etc/apt/keyrings/{name}" for name in custom] or [str(mirror.DEFAULT_KEYRING)]
    debs_dirs = {str(p.parent) for p in paths.values()}
    if len(debs_dirs) != 1:
        raise BuildError("the cached packages are not in one directory")
    return bootplan.Plan(arch=arch, essential=debs("essential"), rest=debs("rest"),
                          sources=bootplan.sources_text(lock.archives, lock.components, signed_by),
                          staging=str(staging_dir), tmpfs=tmpfs, epoch=epoch,
                          debs_dir=debs_dirs.pop(), keyrings=custom, layer_count=len(lock.layers) + 1,
                          slim=lock.slim)


def staging_base(staging: Staging) -> Path:
    """Where the staging directory is made: --staging-dir; in a namespace (whose tmpfs the tree is
    in) $XDG_RUNTIME_DIR or the temporary directory; without one /dev/shm where it serves
    (plainroot.staging_base), else the first of those two and /var/tmp that a tree can be built in
    (a systemd host mounts /run/user/0 and a tmpfs /tmp nodev, where root mode's /dev would not open)."""
    if staging.workdir is not None:
        return staging.workdir
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if staging.mode.kind.namespace:
        return Path(runtime or tempfile.gettempdir())
    memory = plainroot.staging_base(device_nodes=_makes_devices(staging))
    if memory is not None:
        return memory
    candidates = [Path(p) for p in (runtime, tempfile.gettempdir(), "/var/tmp") if p]
    return next((c for c in candidates if c.is_dir() and _staging_problem(c, staging) is None), candidates[0])


def _makes_devices(staging: Staging) -> bool:
    """Whether the tree holds device nodes that are opened (root mode's /dev, made with mknod)."""
    return staging.mode.kind is buildmode.ROOT


def _staging_problem(path: Path, staging: Staging) -> str | None:
    try:
        flags = os.statvfs(path).f_flag
    except OSError:
        return None  # making the directory there names the error
    return plainroot.staging_problem(path, flags, device_nodes=_makes_devices(staging))


def check_staging(staging: Staging) -> None:
    """Refuse, before anything is fetched, a staging directory no tree can be built in (a noexec
    /tmp of a container, say); in a namespace's own tmpfs any will do."""
    if staging.mode.kind.namespace and staging.workdir is None:
        return
    problem = _staging_problem(staging_base(staging), staging)
    if problem is not None:
        raise BuildError(problem, hint="stage on another file system: --staging-dir DIR (or TMPDIR)")


def check_release(lock: Lockfile, mode: buildmode.BuildMode, os_release: str | None) -> None:
    """Chrootless mode builds the tree the other modes build only of the host's own release (the
    maintainer scripts run the host's tools; OS_RELEASE: its os-release text): auto refuses
    another before any download, and --mode chrootless builds it after saying so."""
    if mode.kind is not buildmode.CHROOTLESS:
        return
    problem = hostdpkg.release_problem(os_release, lock.suite_names(), lock.codename)
    if problem is None:
        return
    if mode.explicit:
        log.get().info(f"warning: {problem}")
        return
    raise BuildError(problem, hint=f"build on a {lock.codename} host or from a {lock.codename} runner image "
                                   "(examples/ocistrap-runner.toml), or give --mode chrootless to build it anyway")


def run_bootstrap(lock: Lockfile, arch: str, fetched: Fetched, staging: Staging, *, epoch: int,
                  keyrings: tuple[Path, ...], sink: Callable[[BinaryIO], T]) -> bootstrap.Installed[T]:
    """Install ARCH's packages in a sandbox and pass each layer's tar stream to SINK."""
    with scratchdirs.scratch_dir(staging_base(staging), "ocistrap-staging-") as tmp:
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
    signer: PrivateKey | None = None


@dataclass(frozen=True)
class Built:
    digest: str
    outputs: tuple[Reference, ...]


def build(lock: Lockfile, keyrings: tuple[Path, ...], fetcher: Fetcher, cache: Cache,
          request: BuildRequest) -> Built:
    """Fetch, install, layer, wrap and deliver: the whole of `ocistrap build` after locking.
    Everything happens in a scratch directory of this build, which holds the packages it
    installs, and is gone (with every expansion finished or stopped) before this returns."""
    check_staging(request.staging)
    check_release(lock, request.staging.mode, hostdpkg.read_os_release())
    with scratchdirs.scratch_dir(cache.root / "partial", "build-") as tmp:
        fetched = fetch(lock, keyrings, fetcher, cache, private=tmp / "debs")
        try:
            return _install_and_deliver(lock, keyrings, fetched, tmp, request)
        finally:
            fetched.close()


def _install_and_deliver(lock: Lockfile, keyrings: tuple[Path, ...], fetched: Fetched, tmp: Path,
                         request: BuildRequest) -> Built:
    epoch = request.epoch if request.epoch is not None else release_epoch(lock)
    origin = provenance_of(lock)
    layout = Path(tmp) / "layout"
    ocilayout.init_layout(layout)
    manifests = []
    staging = request.staging
    for arch in lock.architectures:
        blobs, mode = run_bootstrap(lock, arch, fetched, staging, epoch=epoch, keyrings=keyrings,
                                    sink=lambda stream: write_layer(stream, layout / "blobs" / "sha256",
                                                                    request.compression))
        staging = replace(staging, mode=mode)  # a fallback holds for the next architecture
        layers = [assemble.Layer(blob, created_by) for blob, created_by in zip(blobs, _history(lock, arch))]
        manifests.append(assemble.write_image(layout, arch, layers, epoch=epoch, options=request.options,
                                              provenance=origin))
    top = manifests[0] if len(manifests) == 1 else assemble.write_index(
        layout, manifests, origin.annotations(image.rfc3339(epoch)))
    attached = sbom.attach_all(layout, lock, list(zip(lock.architectures, manifests)),
                               created=image.rfc3339(epoch)) if request.sbom else []
    if request.signer is not None:
        run = provenance.new_run(request.epoch if request.epoch is not None else datetime.now(timezone.utc))
        attached.append(signing.attest(request.signer, layout, lock, top, signing.places(request.outputs)[0], run))
    with log.get().step("writing outputs"):
        ctx = transports.Context(tls_verify=request.tls_verify)
        for ref in request.outputs:
            transports.write(layout, top, ref, ctx)
            transports.attach(layout, attached, ref, ctx)
            if request.signer is not None:
                signing.sign_image(request.signer, ref, top, ctx)
    return Built(digest=top.digest, outputs=request.outputs)


def write_layer(stream: BinaryIO, blobs_dir: Path, compression: str) -> blobwriter.LayerBlob:
    """One layer's blob (bootstrap calls this once the stream's first bytes are there)."""
    out = log.get()
    with out.step("writing layer"):
        return blobwriter.write_blob(out.meter().reader(stream), blobs_dir, compression=compression)  # type: ignore[arg-type]


def _history(lock: Lockfile, arch: str) -> list[str]:
    """What made each layer, for the image config's history."""
    packages = lock.architectures[arch].packages
    count = [sum(p.layer == n for p in packages) for n in range(len(lock.layers) + 1)]
    return [f"ocistrap {lock.variant}{' slim' if lock.slim else ''} {lock.suite} ({count[0]} packages)"] + [
        f"ocistrap layer {layer.name}: {', '.join(layer.include)} ({count[n]} packages)"
        for n, layer in enumerate(lock.layers, start=1)]
