"""Bundles: a lockfile and every file of the archive it needs, as one OCI artifact.

A bundle holds the lockfile, each signed Release it pins (InRelease, or Release
and Release.gpg), each Packages index its packages come from and each .deb as
a blob whose digest is the SHA256 the lock records. It goes where images go
(``oci:``, ``oci-archive:``, a registry) through the transports, so a registry
that has last week's .debs is sent only this week's new ones.

Read back (``build --from``, ``fetch --from``), a bundle is a mirror and nothing
more: its files are served to the same checks as a mirror's (gpgv against the
user's keyrings, the lock's pins, the signed sizes and hashes). It is trusted
for nothing; a bundle that was tampered with fails those checks.
"""

import json
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ocistrap import log, pipeline, transports
from ocistrap.debian import lock as lockfile
from ocistrap.debian import mirror
from ocistrap.debian.cache import Cache
from ocistrap.debian.fetch import Fetcher
from ocistrap.debian.lock import Lockfile
from ocistrap.debian.locking import check_lock_against_archive, open_pinned
from ocistrap.errors import ArchiveError
from ocistrap.oci import image, ocilayout
from ocistrap.oci.image import Descriptor
from ocistrap.rootfs import scratchdirs
from ocistrap.transports import Reference

ARTIFACT_TYPE = "application/vnd.ocistrap.bundle.v1"
MEDIA_TYPE_LOCKFILE = "application/vnd.ocistrap.lockfile.v1+json"
MEDIA_TYPE_RELEASE = "application/vnd.debian.release"
MEDIA_TYPE_INDEX = "application/vnd.debian.packages-index"
MEDIA_TYPE_DEB = "application/vnd.debian.binary-package"
ANNOTATION_TITLE = "org.opencontainers.image.title"
ANNOTATION_URL = "dev.ocistrap.url"
ANNOTATION_KEYS = "dev.ocistrap.keys"
ANNOTATION_LOCKFILE = "dev.ocistrap.lockfile.digest"
MANIFEST_LIMIT = 4 << 20


@dataclass(frozen=True)
class Member:
    """One file of a bundle: where the mirror serves it, its kind, and its bytes or cached file."""

    url: str
    media_type: str
    data: bytes | None = None
    path: Path | None = None
    sha256: str = ""
    size: int = 0


def members(lock: Lockfile, keyrings: tuple[Path, ...], fetcher: Fetcher, cache: Cache) -> list[Member]:
    """Every file a build of LOCK reads from the mirror, verified as a build verifies them
    (fetched into CACHE where missing): the pinned Releases, the indices, the .debs."""
    check_lock_against_archive(lock, keyrings, fetcher, cache)
    found: dict[str, Member] = {}
    for arch in lock.architectures:
        opened = open_pinned(lock, arch, keyrings, fetcher, cache)
        for number, (source, signed) in enumerate(opened):
            raw = cache.read(signed.sha256)
            assert raw is not None, "open_release keeps the Release it verified in the cache"
            for path, data in mirror.release_files(raw, source):
                found.setdefault(source.url(path), Member(source.url(path), MEDIA_TYPE_RELEASE, data=data))
            if number and arch not in signed.release.architectures:
                continue  # as load_universe: a companion archive without ARCH is not read
            for component in source.components:
                path, data = mirror.index_bytes(source, signed, component, arch, fetcher, cache)
                found.setdefault(source.url(path), Member(source.url(path), MEDIA_TYPE_INDEX, data=data))
        wanted = pipeline.wanted_debs(lock, arch, fetcher.snapshots)
        with log.get().step(f"fetching {len(wanted)} packages for {arch}"):
            paths = fetcher.download_all(wanted, cache)
        for want, path in zip(wanted, paths):
            found.setdefault(want.url, Member(want.url, MEDIA_TYPE_DEB, path=path, sha256=want.sha256,
                                              size=want.size))
    return list(found.values())


def write_layout(layout: Path, lock: Lockfile, files: list[Member], *, created: str) -> Descriptor:
    """The bundle of LOCK and FILES as an artifact manifest in LAYOUT; its descriptor."""
    ocilayout.init_layout(layout)
    data = lock.dumps()
    layers = [_put_bytes(layout, data, MEDIA_TYPE_LOCKFILE, {ANNOTATION_TITLE: "ocistrap.lock"})]
    for member in sorted(files, key=lambda m: (m.media_type != MEDIA_TYPE_RELEASE, m.media_type, m.url)):
        notes = {ANNOTATION_TITLE: member.url.rsplit("/", 1)[-1], ANNOTATION_URL: member.url}
        if member.data is not None:
            layers.append(_put_bytes(layout, member.data, member.media_type, notes))
        else:
            layers.append(_put_file(layout, member, notes))
    keys = sorted({k for entry in lock.architectures.values() for r in entry.releases for k in r.keys})
    return ocilayout.put_artifact(layout, ARTIFACT_TYPE, layers, {
        image.ANNOTATION_CREATED: created, ANNOTATION_LOCKFILE: lock.digest(),
        **({ANNOTATION_KEYS: ",".join(keys)} if keys else {})})


def _put_bytes(layout: Path, data: bytes, media_type: str, notes: dict[str, str]) -> Descriptor:
    ocilayout.put_bytes(layout, data)
    return Descriptor.of(data, media_type, annotations=notes)


def _put_file(layout: Path, member: Member, notes: dict[str, str]) -> Descriptor:
    """A cached .deb copied (never linked: the bundle is not the cache) and checked on the way."""
    assert member.path is not None
    desc = Descriptor(member.media_type, f"sha256:{member.sha256}", member.size, notes)
    target = ocilayout.blob_path(layout, desc.digest)
    if not target.exists():
        with ocilayout.replacing(target) as temp:
            shutil.copyfile(member.path, temp)
            ocilayout.check_blob(temp, desc, shown=member.path)
    return desc


def make(lock: Lockfile, keyrings: tuple[Path, ...], fetcher: Fetcher, cache: Cache, dest: Reference,
         ctx: transports.Context) -> Descriptor:
    """Write the bundle of LOCK to DEST: gathered and verified in a scratch layout, then written
    through DEST's transport (a registry is sent only the blobs it lacks)."""
    with log.get().step("gathering the lockfile's files"):
        files = members(lock, keyrings, fetcher, cache)
    created = image.rfc3339(pipeline.release_epoch(lock))
    with scratchdirs.scratch_dir(cache.root / "partial", "bundle-") as tmp:
        layout = tmp / "layout"
        desc = write_layout(layout, lock, files, created=created)
        with log.get().step(f"writing {dest}"):
            transports.write(layout, desc, dest, ctx)
    return desc


class Bundle:
    """A bundle opened for reading: its files by the URL the mirror serves them at, or by digest.
    Implements ``ocistrap.debian.fetch.Files``; nothing it returns is checked here."""

    def __init__(self, store: transports.ImageStore, ref: Reference) -> None:
        self.store = store
        self.shown = f"the bundle {ref}"
        root = self._root()
        self.layers = self._layers(root)
        self.by_url = {d.annotations[ANNOTATION_URL]: d for d in self.layers if ANNOTATION_URL in d.annotations}
        self.by_digest = {d.digest: d for d in self.layers}

    def _root(self) -> Descriptor:
        roots = self.store.roots()
        if len(roots) != 1:
            raise ArchiveError(f"{self.shown} holds {len(roots)} images, not one bundle",
                               hint="name one with its tag (oci:DIR:TAG) or digest")
        return roots[0]

    def _layers(self, root: Descriptor) -> list[Descriptor]:
        if root.size > MANIFEST_LIMIT:
            raise ArchiveError(f"{self.shown}: its manifest is larger than {MANIFEST_LIMIT} bytes")
        data = self.store.read(root, "bundle manifest")
        if image.sha256_digest(data) != root.digest:
            raise ArchiveError(f"{self.shown}: its manifest does not hash to {root.digest}")
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise ArchiveError(f"{self.shown}: its manifest is not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("artifactType") != ARTIFACT_TYPE:
            raise ArchiveError(f"{self.shown} is no ocistrap bundle (artifactType {ARTIFACT_TYPE} expected)",
                               hint="make one with `ocistrap bundle LOCKFILE -o REF`")
        try:
            return [Descriptor.from_json(d) for d in doc.get("layers") or []]
        except Exception as exc:
            raise ArchiveError(f"{self.shown}: a malformed layer descriptor: {exc}") from None

    def lockfile(self) -> Lockfile:
        """The lockfile the bundle carries (plain JSON, checked against the archive like any other)."""
        found = [d for d in self.layers if d.media_type == MEDIA_TYPE_LOCKFILE]
        if len(found) != 1:
            raise ArchiveError(f"{self.shown} carries {len(found)} lockfiles, not one")
        data = self.store.read(found[0], "lockfile")
        if image.sha256_digest(data) != found[0].digest:
            raise ArchiveError(f"{self.shown}: its lockfile does not hash to {found[0].digest}")
        return lockfile.loads(data, what=f"the lockfile in {self.shown}")

    def open(self, url: str, sha256: str | None) -> AbstractContextManager[IO[bytes]] | None:
        desc = self.by_url.get(url) or (self.by_digest.get(f"sha256:{sha256}") if sha256 else None)
        if desc is None:
            return None
        return _opened(self.store, desc, url)


@contextmanager
def _opened(store: transports.ImageStore, desc: Descriptor, url: str) -> Iterator[IO[bytes]]:
    with store.open_blob(desc, url) as stream:
        yield stream


@contextmanager
def opened(ref: Reference, ctx: transports.Context) -> Iterator[Bundle]:
    """The bundle at REF, readable while the block runs."""
    with transports.open_image(ref, ctx) as store:
        yield Bundle(store, ref)
