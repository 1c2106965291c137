"""The signed view of one suite on one mirror: the trust chain, step by step.

InRelease (or Release + Release.gpg) is verified with the keyrings and only its
signed text is used; each Packages index is checked for size and SHA256
against that text before a byte of it is parsed; the verified files go to the
cache so that ``--offline`` works later.
"""

import ctypes
import dataclasses
import fcntl
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from ocistrap import log
from ocistrap.debian import archive, openpgp
from ocistrap.debian.archive import Package, Release
from ocistrap.debian.cache import Cache
from ocistrap.debian.fetch import RELEASE_LIMIT, Fetcher, NotFound, sha256_hex
from ocistrap.errors import ArchiveError

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
PIPE_SIZE = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where packages come from and what vouches for them."""

    mirror: str = DEFAULT_MIRROR
    suite: str = "bookworm"
    components: tuple[str, ...] = ("main",)
    keyrings: tuple[Path, ...] = (DEFAULT_KEYRING,)
    check_valid_until: bool = True
    snapshot: str | None = None
    """Where the snapshot service keeps this archive as the lock knew it: asked for pinned files
    the mirror no longer serves (ocistrap.debian.snapshot)."""

    def url(self, path: str) -> str:
        return f"{self.mirror.rstrip('/')}/{path}"

    @property
    def ref_name(self) -> str:
        return f"{self.mirror.rstrip('/')} {self.suite}"


STABLE_SUITES = frozenset({"stable", "oldstable", "oldoldstable"})


def security_mirror_for(mirror: str) -> str:
    """Debian's layout: .../debian has its security archive at .../debian-security."""
    base = mirror.rstrip("/")
    return base + "-security" if base.endswith("/debian") else "http://deb.debian.org/debian-security"


def companions(source: Source, release: Release, *, security_mirror: str | None = None) -> list[Source]:
    """The suites a released Debian also needs, as mmdebstrap and apt's defaults have them.

    A stable release (its signed Suite is stable/oldstable/...) gets its
    -updates suite and its -security suite; testing and unstable get none.
    """
    if release.suite not in STABLE_SUITES:
        return []
    name = release.codename or source.suite
    return [
        dataclasses.replace(source, suite=f"{name}-updates"),
        dataclasses.replace(source, mirror=security_mirror or security_mirror_for(source.mirror),
                            suite=f"{name}-security"),
    ]


@dataclass(frozen=True)
class SignedRelease:
    release: Release
    path: str
    sha256: str
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pin:
    """The Release a lockfile names: its path and the SHA256 of the signed bytes."""

    path: str
    sha256: str


PIN_HINT = ("the mirror no longer serves the pinned Release (the lockfile is older than its current one) "
            "or serves an old one: lock again with `ocistrap lock`, or use a mirror or snapshot that still "
            "serves the pinned Release")


def open_release(source: Source, fetcher: Fetcher, cache: Cache, *,
                 pin: Pin | None = None, now: datetime | None = None) -> SignedRelease:
    """Fetch (or take from the cache) and verify the suite's Release.

    With a PIN (from a lockfile) only exactly that file is used, from the cache
    or the mirror: other bytes are refused before anything is read from them,
    and its Valid-Until is not checked again, since the lock trusted that very
    file. Offline without a pin, the last verified InRelease of the suite is used.
    """
    raw, path, elsewhere = _pinned_release_bytes(source, fetcher, cache, pin)
    digest = sha256_hex(raw)
    if pin is not None and digest != pin.sha256:
        raise ArchiveError(f"{source.url(path)}: the lockfile pins the Release of {source.suite} at sha256 "
                           f"{pin.sha256}, but the mirror serves sha256 {digest}; refusing it{elsewhere}",
                           hint=PIN_HINT)
    signed, keys = _verify(source, fetcher, raw, path)
    what = source.url(path)
    release = archive.parse_release(signed.decode("utf-8", "replace"), what=what)
    if source.suite not in (release.suite, release.codename):
        raise ArchiveError(
            f"{what} is signed for suite {release.suite!r} (codename {release.codename!r}), "
            f"not {source.suite!r}; refusing it", hint="the mirror may be serving another suite")
    now = now or datetime.now(timezone.utc)
    archive.check_valid_until(release, now, allow_expired=pin is not None or not source.check_valid_until,
                              what=what)
    if pin is not None and release.valid_until is not None and now > release.valid_until:
        log.get().info(f"{what}: past its Valid-Until, accepted because the lockfile pins these very bytes")
    if cache.lookup(digest, len(raw)) is None:
        cache.put_bytes(raw, lambda data: None)
    cache.set_ref(source.ref_name, digest)
    return SignedRelease(release=release, path=path, sha256=digest, keys=tuple(keys))


def _pinned_release_bytes(source: Source, fetcher: Fetcher, cache: Cache,
                          pin: Pin | None) -> tuple[bytes, str, str]:
    """The Release as _release_bytes finds it; for a PIN the mirror no longer serves (gone, or moved
    on to a newer one), the snapshot service's copy of the archive, where one is set. The third
    value says, for a message, why the snapshot service could not help."""
    if pin is None or source.snapshot is None:
        return (*_release_bytes(source, fetcher, cache, pin), "")
    try:
        raw, path = _release_bytes(source, fetcher, cache, pin)
    except NotFound as missing:
        log.get().info(f"{missing.message}; asking the snapshot service ({source.snapshot})")
        return (*_from_snapshot(source, fetcher, cache, pin, missing.message), "")
    if sha256_hex(raw) == pin.sha256:
        return raw, path, ""
    log.get().info(f"{source.url(path)}: the mirror has moved on from the pinned Release; "
                   f"asking the snapshot service ({source.snapshot})")
    try:
        kept, kept_path = _release_bytes(on_snapshot(source, fetcher), fetcher, cache, pin)
    except ArchiveError as failed:
        return raw, path, f", and the snapshot service has it not: {failed.message}"
    if sha256_hex(kept) == pin.sha256:
        return kept, kept_path, ""
    return raw, path, f", nor does the snapshot service ({source.snapshot} serves sha256 {sha256_hex(kept)})"


def _from_snapshot(source: Source, fetcher: Fetcher, cache: Cache, pin: Pin, missing: str) -> tuple[bytes, str]:
    try:
        return _release_bytes(on_snapshot(source, fetcher), fetcher, cache, pin)
    except ArchiveError as failed:
        raise ArchiveError(f"{missing}; and from the snapshot service: {failed.message}",
                           hint=failed.hint) from None


def on_snapshot(source: Source, fetcher: Fetcher) -> Source:
    """SOURCE's archive as the snapshot service keeps it: the same checks, another mirror."""
    assert source.snapshot is not None
    return dataclasses.replace(source, mirror=fetcher.kept(source.snapshot), snapshot=None)


def _release_bytes(source: Source, fetcher: Fetcher, cache: Cache, pin: Pin | None) -> tuple[bytes, str]:
    wanted = pin.sha256 if pin is not None else (cache.get_ref(source.ref_name) if fetcher.offline else None)
    if wanted is not None:
        data = cache.read(wanted)
        if data is not None:
            return data, _stored_path(data, source)
        if not fetcher.has_sources:
            raise ArchiveError(f"the Release of {source.suite} is not in the cache",
                               hint="run once with network access, or use the cache that made the lockfile")
    if not fetcher.has_sources:
        raise ArchiveError(f"no verified Release of {source.suite} from {source.mirror} in the cache",
                           hint="run `ocistrap lock` once with network access")
    order = [_inline_release, _detached_release]
    if pin is not None and pin.path == _release_path(source):
        order.reverse()
    for attempt in order:
        if (found := attempt(source, fetcher)) is not None:
            return found
    raise NotFound(f"suite {source.suite!r} not found on {source.mirror} "
                   f"(neither InRelease nor Release exists)",
                   hint="check the suite name (e.g. bookworm, trixie, sid) and --mirror")


def _release_path(source: Source) -> str:
    return f"dists/{source.suite}/Release"


def _inline_release(source: Source, fetcher: Fetcher) -> tuple[bytes, str] | None:
    """The suite's InRelease, or None where the mirror has none."""
    path = f"dists/{source.suite}/InRelease"
    try:
        return fetcher.get(source.url(path), what=source.url(path), limit=RELEASE_LIMIT), path
    except NotFound:
        return None


def _detached_release(source: Source, fetcher: Fetcher) -> tuple[bytes, str] | None:
    """The suite's Release and Release.gpg as one bundle, or None where the mirror has no Release."""
    path = _release_path(source)
    try:
        data = fetcher.get(source.url(path), what=source.url(path), limit=RELEASE_LIMIT)
    except NotFound:
        return None
    signature = fetcher.get(source.url(path + ".gpg"), what=source.url(path + ".gpg"), limit=RELEASE_LIMIT)
    return _detached_bundle(data, signature), path


# A Release with a detached signature is kept in the cache as one blob:
# the signature, a separator line, then the Release bytes.
_SEPARATOR = b"\n--ocistrap-detached-release--\n"


def _detached_bundle(release: bytes, signature: bytes) -> bytes:
    return signature + _SEPARATOR + release


def _stored_path(data: bytes, source: Source) -> str:
    name = "Release" if _SEPARATOR in data else "InRelease"
    return f"dists/{source.suite}/{name}"


def release_files(raw: bytes, source: Source) -> list[tuple[str, bytes]]:
    """The files a mirror serves for the Release RAW (as the cache keeps it): InRelease, or
    Release and Release.gpg; each with its path below the mirror."""
    path = _stored_path(raw, source)
    if _SEPARATOR not in raw:
        return [(path, raw)]
    signature, release = raw.split(_SEPARATOR, 1)
    return [(path, release), (path + ".gpg", signature)]


def _verify(source: Source, fetcher: Fetcher, raw: bytes, path: str) -> tuple[bytes, list[str]]:
    """The signed Release text and the fingerprints of the keys that signed it."""
    what = source.url(path)
    if _SEPARATOR in raw:
        signature, release = raw.split(_SEPARATOR, 1)
        return release, openpgp.verify_detached(release, signature, source.keyrings, what=what)
    return openpgp.verify_clearsigned_by(raw, source.keyrings, what=what)


def load_packages(source: Source, signed: SignedRelease, arch: str,
                  fetcher: Fetcher, cache: Cache) -> list[Package]:
    """Every package of the suite's components for ARCH, from verified indices only."""
    packages: list[Package] = []
    for component in source.components:
        packages.extend(_component_packages(source, signed, component, arch, fetcher, cache))
    return packages


def _component_packages(source: Source, signed: SignedRelease, component: str, arch: str,
                        fetcher: Fetcher, cache: Cache) -> list[Package]:
    path, entry = archive.index_path(signed.release, component, arch)
    cached = _from_parsed(cache.load_parsed(entry.sha256))
    if cached is not None:
        return cached
    what = source.url(f"dists/{source.suite}/{path}")
    data = cache.read(entry.sha256)
    fetched = data is None
    if data is None:
        data = _fetch_index(source, signed, path, entry, fetcher)
    else:
        archive.verify_bytes(data, entry, what=what)
    with _decompressed(data, path) as pieces:
        if fetched:  # while a child decompresses the first piece
            cache.put_bytes(data, lambda d: archive.verify_bytes(d, entry, what=what))
        del data  # 9 MB of Debian's index: an .xz one now lives in the decompressing child alone
        columns = archive.parse_package_columns(pieces, what=what)
    cache.store_parsed(entry.sha256, {"fields": list(archive.PACKAGE_COLUMNS), "columns": columns})
    packages = archive.packages_from_columns(columns)
    del columns
    give_back_freed_memory()
    return packages


def give_back_freed_memory() -> None:
    """Return the free pages of the C heap to the system, where the C library can (glibc).

    Parsing an index frees tens of MB in pieces of up to a few MB, and once
    glibc has freed a block that large it keeps up to twice as much free heap
    instead of trimming it: a build's later phases then peaked 5 MB higher.
    """
    with suppress(OSError):
        trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        if trim is not None:
            trim(0)


def _from_parsed(parsed: object) -> list[Package] | None:
    """Cached packages, if this version's ``Package`` wrote them; another layout is parsed afresh.

    They are kept by column, not by row: loading then makes no list per
    package, and the strings parse_package_columns shared stay shared.
    """
    if not isinstance(parsed, dict) or parsed.get("fields") != list(archive.PACKAGE_COLUMNS):
        return None
    columns = parsed.get("columns")
    if not isinstance(columns, list) or len(columns) != len(archive.PACKAGE_COLUMNS) \
            or len(set(map(len, columns))) != 1:
        return None
    return archive.packages_from_columns(columns)


# What a second interpreter runs: the xz streams on its stdin, one after another, decompressed to
# its stdout, refused as ``archive.decompressed_chunks`` refuses them. The standard library
# alone, so that it starts in about 10 ms.
_UNXZ = """\
import lzma, sys
read, write = sys.stdin.buffer.read, sys.stdout.buffer.write
data = read(1 << 16)
try:
    while True:
        unxz = lzma.LZMADecompressor()
        while not unxz.eof:
            if not data:
                raise EOFError("Compressed data ended before the end-of-stream marker was reached")
            write(unxz.decompress(data))
            data = unxz.unused_data if unxz.eof else read(1 << 16)
        if not (data := data or read(1 << 16)):
            break
except (lzma.LZMAError, EOFError) as error:
    sys.exit(str(error))
"""


@contextmanager
def _decompressed(data: bytes, path: str) -> Iterator[Iterable[bytes]]:
    """The verified index DATA, decompressed by the suffix of its PATH, in pieces.

    An .xz index is decompressed by a second interpreter, on the other core,
    while this one parses what it has sent so far. (A thread here took turns
    with the parser instead: lzma takes the GIL back after every block it
    writes, and waits up to the 5 ms switch interval for it each time.)
    """
    child = _start_unxz(data) if path.endswith(".xz") else None
    if child is None:
        yield archive.decompressed_chunks(data, path)
        return
    del data
    try:
        yield _child_output(child, path)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]


def _start_unxz(data: bytes) -> subprocess.Popen[bytes] | None:
    """A child decompressing DATA, handed over in a memory file; None where none can start."""
    if not sys.executable or not hasattr(os, "memfd_create"):
        return None
    try:
        fd = os.memfd_create("ocistrap-index", os.MFD_CLOEXEC)
    except OSError:
        return None
    try:
        with open(fd, "wb", closefd=False) as memory:
            memory.write(data)
        os.lseek(fd, 0, os.SEEK_SET)
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _UNXZ], stdin=fd,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError:
        return None
    finally:
        os.close(fd)
    with suppress(OSError):
        fcntl.fcntl(child.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[union-attr]
    return child


def _child_output(child: subprocess.Popen[bytes], path: str) -> Iterator[bytes]:
    """What CHILD writes, in pieces, then an ArchiveError if it failed."""
    yield from iter(partial(child.stdout.read, PIPE_SIZE), b"")  # type: ignore[union-attr]
    problem = child.stderr.read().decode("utf-8", "replace").strip()  # type: ignore[union-attr]
    if child.wait() != 0:
        raise ArchiveError(f"{path}: cannot decompress: {problem or f'exit status {child.returncode}'}",
                           hint=archive.MIRROR_HINT)


def index_bytes(source: Source, signed: SignedRelease, component: str, arch: str,
                fetcher: Fetcher, cache: Cache) -> tuple[str, bytes]:
    """The Packages index of COMPONENT/ARCH the suite's Release lists (its path below the mirror, and
    its bytes), verified against it: from the cache, else fetched (and cached) as a build would."""
    path, entry = archive.index_path(signed.release, component, arch)
    full = f"dists/{source.suite}/{path}"
    data = cache.read(entry.sha256)
    if data is None:
        data = _fetch_index(source, signed, path, entry, fetcher)
        cache.put_bytes(data, lambda d: archive.verify_bytes(d, entry, what=source.url(full)))
    archive.verify_bytes(data, entry, what=source.url(full))
    return full, data


def _fetch_index(source: Source, signed: SignedRelease, path: str, entry: archive.FileEntry,
                 fetcher: Fetcher) -> bytes:
    """The index PATH from the mirror (by hash where offered), else, for a pinned Release whose
    index the mirror no longer serves (gone, or replaced by a newer one), from the snapshot service."""
    try:
        return _fetch_index_from(source, signed, path, entry, fetcher)
    except ArchiveError as failed:
        if source.snapshot is None:
            raise
        log.get().info(f"{failed.message}; asking the snapshot service ({source.snapshot})")
        try:
            return _fetch_index_from(on_snapshot(source, fetcher), signed, path, entry, fetcher)
        except ArchiveError as again:
            raise ArchiveError(f"{failed.message}; and from the snapshot service: {again.message}",
                               hint=again.hint) from None


def _fetch_index_from(source: Source, signed: SignedRelease, path: str, entry: archive.FileEntry,
                      fetcher: Fetcher) -> bytes:
    base = f"dists/{source.suite}/"
    what = source.url(base + path)
    if signed.release.acquire_by_hash:
        by_hash = base + archive.by_hash_path(path, entry)
        try:
            data = fetcher.get(source.url(by_hash), what=source.url(by_hash), limit=entry.size)
            archive.verify_bytes(data, entry, what=source.url(by_hash))
            return data
        except NotFound:
            pass
    data = fetcher.get(source.url(base + path), what=what, limit=entry.size)
    archive.verify_bytes(data, entry, what=what)
    return data
