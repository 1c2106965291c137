"""Downloads from a Debian mirror: retries, resume, parallelism, nothing trusted.

Every byte fetched here is checked by the caller (signature) or here (size and
SHA256 from signed metadata) before it is used or enters the cache.
"""

import hashlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, BinaryIO, Protocol, TypeVar

from ocistrap import http, log
from ocistrap.debian.cache import CHUNK, Cache, file_sha256, hash_open
from ocistrap.debian.mirrorauth import MirrorLogins
from ocistrap.debian.snapshot import Snapshots, first_import
from ocistrap.errors import ArchiveError

T = TypeVar("T")


class NotFound(ArchiveError):
    """The mirror answered 404 for a file."""


class Mismatch(ArchiveError):
    """A downloaded file's size or SHA256 is not the signed one."""


RELEASE_LIMIT = 16 << 20
"""The largest InRelease, Release or Release.gpg accepted (Debian's largest are a few hundred KiB)."""
INDEX_LIMIT = 256 << 20
LISTING_LIMIT = 4 << 20
"""The largest page of the snapshot service's imports of a month read (a few KiB)."""
SNAPSHOT_CONNECTIONS = 2
"""At most this many requests at once to the snapshot service, which limits its clients hard."""


@dataclass(frozen=True)
class Wanted:
    """A file to download into the cache: where it is and what it must hash to; FALLBACK is where
    to look when the mirror has it no more (the snapshot service)."""

    url: str
    size: int
    sha256: str
    what: str
    fallback: str | None = None


class Files(Protocol):
    """The archives' files from elsewhere than a mirror (a bundle), by URL or, for .debs, by SHA256.
    Nothing they hold is trusted: it is checked as a mirror's bytes are."""

    @property
    def shown(self) -> str:
        """How messages name where the files are."""

    def open(self, url: str, sha256: str | None) -> AbstractContextManager[IO[bytes]] | None:
        """The file the mirror would serve at URL (or whose SHA256 is given), None if absent."""


class Fetcher:
    """One HTTP session with retry policy; ``offline`` refuses any network use. LOGINS are sent
    with each request, redirected ones too, only where they apply (ocistrap.debian.mirrorauth).
    FILES, when given, are the only source (a bundle): nothing is asked of the network.
    SNAPSHOTS: the snapshot service, asked through few connections and patiently."""

    def __init__(self, *, offline: bool = False, attempts: int = 4, timeout: float = 30.0,
                 deadline: float = 300.0, stall: float = 60.0, backoff: float = 0.5, jobs: int = 8,
                 logins: MirrorLogins = MirrorLogins(), files: Files | None = None,
                 snapshots: Snapshots = Snapshots()) -> None:
        self.offline = offline
        self.logins = logins
        self.attempts = attempts
        self.jobs = jobs
        self.files = files
        self.snapshots = snapshots
        self.retry = http.RetryPolicy(attempts=attempts, base_delay=backoff)
        self.snapshot_retry = http.RetryPolicy(attempts=max(attempts, 5), base_delay=backoff * 4, max_delay=120.0)
        self._snapshot_slots = threading.BoundedSemaphore(SNAPSHOT_CONNECTIONS)
        self._imports: dict[tuple[str, str], str] = {}
        self._imports_lock = threading.Lock()
        timeouts = http.Timeouts(connect=timeout, read=timeout, deadline=deadline, stall=stall)
        self.http = http.Client(error=_cannot_fetch, timeouts=timeouts, pool=jobs)

    @property
    def has_sources(self) -> bool:
        """Whether anything beyond the cache can be read: the network or FILES."""
        return not self.offline or self.files is not None

    def get(self, url: str, *, what: str, limit: int = INDEX_LIMIT) -> bytes:
        """The whole body of a file read into memory (InRelease, an index), refused past LIMIT bytes."""
        if self.files is not None:
            return self._read_file(url, what, limit)
        return self._retrying(url, what, lambda: self._get_once(url, what, limit))

    def download(self, wanted: Wanted, cache: Cache) -> Path:
        """The cache path of WANTED, downloading (resuming) and verifying it if absent."""
        if (path := self._cached(wanted, cache)) is not None:
            return path
        if not self.has_sources:
            raise ArchiveError(f"{wanted.what} is not in the cache and --offline forbids downloading it",
                             hint="run `ocistrap fetch LOCKFILE` once with network access")
        with cache.claim(wanted.sha256):
            if (path := self._cached(wanted, cache)) is not None:
                return path
            if self.files is not None:
                return self._copy_file(wanted, cache)
            try:
                return self._download_resuming(wanted, cache)
            except NotFound as missing:
                if wanted.fallback is None:
                    raise
                return self._from_fallback(wanted, cache, missing)

    def _download_resuming(self, wanted: Wanted, cache: Cache) -> Path:
        resuming = cache.partial_size(wanted.sha256) > 0
        try:
            return self._download_verified(wanted, cache)
        except Mismatch:
            if not resuming:
                raise
        # an earlier run left a wrong prefix (check_file dropped it): start afresh once
        return self._download_verified(wanted, cache)

    def kept(self, url: str) -> str:
        """URL of the snapshot service as it is asked: a timestamp ``auto`` took from a lock's
        Release date moved to the service's first import since (the date itself names the import
        before, which lacks that Release); every other URL as it is."""
        dated = self.snapshots.dated(url)
        if dated is None:
            return url
        name, stamp = dated
        with self._imports_lock:
            if dated not in self._imports:
                self._imports[dated] = self._first_import(name, stamp)
            first = self._imports[dated]
        return url.replace(f"/archive/{name}/{stamp}", f"/archive/{name}/{first}", 1)

    def _first_import(self, name: str, stamp: str) -> str:
        """The service's first import of archive NAME at or after STAMP, from its listing pages;
        STAMP itself where they cannot be read or name none (the service then picks)."""
        for page in self.snapshots.listing_urls(name, stamp):
            try:
                listing = self.get(page, what=f"the snapshot service's imports of {name}", limit=LISTING_LIMIT)
            except ArchiveError as failed:
                log.get().info(f"{failed.message}; asking the snapshot service for {stamp} as it is")
                return stamp
            found = first_import(listing.decode("utf-8", "replace"), stamp)
            if found is not None:
                log.get().info(f"the snapshot service's first import of {name} since {stamp} is {found}")
                return found
        return stamp

    def _from_fallback(self, wanted: Wanted, cache: Cache, missing: NotFound) -> Path:
        """WANTED from the snapshot service, the mirror having answered MISSING; checked the same."""
        assert wanted.fallback is not None
        url = self.kept(wanted.fallback)
        log.get().info(f"{wanted.what}: gone from the mirror; fetching it from {http.shown(url)}")
        try:
            return self._download_resuming(replace(wanted, url=url, fallback=None), cache)
        except ArchiveError as failed:
            raise ArchiveError(f"{missing.message}; and from the snapshot service: {failed.message}",
                               hint=failed.hint or "give --snapshot TIMESTAMP of a snapshot that holds it") from None

    def _read_file(self, url: str, what: str, limit: int) -> bytes:
        assert self.files is not None
        opened = self.files.open(url, None)
        if opened is None:
            raise NotFound(f"{what} is not in {self.files.shown}")
        with opened as stream:
            data = stream.read(limit + 1)
        if len(data) > limit:
            raise ArchiveError(f"{what} in {self.files.shown} is larger than {limit} bytes; refused")
        return data

    def _copy_file(self, wanted: Wanted, cache: Cache) -> Path:
        """WANTED copied from FILES into the cache, kept only if it has the locked size and SHA256."""
        assert self.files is not None
        opened = self.files.open(wanted.url, wanted.sha256)
        if opened is None:
            raise ArchiveError(f"{wanted.what} is not in {self.files.shown}",
                               hint="make the bundle again from the same lockfile (`ocistrap bundle`)")
        with opened as stream, cache.open_partial(wanted.sha256, append=False) as f:
            _copy_at_most(stream, f, wanted.size + 1)
        return cache.commit_partial(wanted.sha256, lambda p: check_file(p, wanted))

    @staticmethod
    def _cached(wanted: Wanted, cache: Cache) -> Path | None:
        """The cached copy, re-hashed on every use: a file damaged on disk is dropped, not used."""
        path = cache.lookup(wanted.sha256, wanted.size)
        if path is None or file_sha256(path) == (wanted.size, wanted.sha256):
            return path
        path.unlink(missing_ok=True)
        log.get().info(f"{wanted.what}: the cached copy was damaged on disk; it was removed")
        return None

    def _download_verified(self, wanted: Wanted, cache: Cache) -> Path:
        self._retrying(wanted.url, wanted.what, lambda: self._download_once(wanted, cache))
        return cache.commit_partial(wanted.sha256, lambda p: check_file(p, wanted))

    def download_all(self, wanted: Iterable[Wanted], cache: Cache,
                     progress: Callable[[Wanted], None] = lambda w: None) -> list[Path]:
        """Download many files in parallel; the first failure is raised after all stop."""
        items = list(wanted)

        def one(item: Wanted) -> Path:
            path = self.download(item, cache)
            progress(item)
            return path

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            return list(pool.map(one, items))

    def _retrying(self, url: str, what: str, attempt: Callable[[], T]) -> T:
        if self.offline:
            raise ArchiveError(f"cannot fetch {what}: --offline forbids network access",
                             hint="run once with network access to fill the cache")
        if self.snapshots.serves(url):
            return self._retrying_snapshot(what, attempt)
        return self.retry.run(attempt, lambda exc, attempts: ArchiveError(
            f"cannot fetch {what}: {exc} (gave up after {attempts} attempts)",
            hint="check the mirror URL and the network"))

    def _retrying_snapshot(self, what: str, attempt: Callable[[], T]) -> T:
        """ATTEMPT through one of few slots, retried patiently (Retry-After honoured): the snapshot
        service refuses clients that ask too often or too much at once."""
        def throttled() -> T:
            with self._snapshot_slots:
                return attempt()

        def note(exc: http.Transient, delay: float) -> None:
            log.get().info(f"the snapshot service answered {exc} for {what}; asking again in {delay:g} s")

        return self.snapshot_retry.run(throttled, lambda exc, attempts: ArchiveError(
            f"the snapshot service still refuses {what}: {exc} (gave up after {attempts} attempts)",
            hint="it limits how often it is asked: try again later, or use a mirror that has the file "
                 "(--snapshot off to stop asking it)"), note)

    def _request(self, url: str, what: str, headers: dict[str, str] | None = None) -> http.Response:
        """GET URL (redirects, deadlines and retry statuses as ``ocistrap.http`` decides)."""
        return self._checked(self.http.send("GET", url, what=what, headers=headers, large=True,
                                            authorization=self.logins), url, what)

    @staticmethod
    def _checked(response: http.Response, url: str, what: str) -> http.Response:
        if response.status_code == 404:
            response.close()
            raise NotFound(f"{what} does not exist on the mirror (HTTP 404: {url})")
        if response.status_code not in (200, 206):
            response.close()
            raise ArchiveError(f"cannot fetch {what}: HTTP {response.status_code} from {url}")
        return response

    def _get_once(self, url: str, what: str, limit: int) -> bytes:
        return self._request(url, what).read(limit, what)

    def _download_once(self, wanted: Wanted, cache: Cache) -> None:
        partial = cache.partial_path(wanted.sha256)
        have = cache.partial_size(wanted.sha256)
        if have >= wanted.size:
            partial.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else None
        with self._request(wanted.url, wanted.what, headers) as response:
            append = bool(have) and response.status_code == 206
            received = start = have if append else 0
            announced = http.content_length(response.headers)
            try:
                with cache.open_partial(wanted.sha256, append=append) as f:
                    for chunk in response.chunks(CHUNK):
                        received += len(chunk)
                        if received > wanted.size:
                            break
                        f.write(chunk)
            except OSError as e:
                raise ArchiveError(f"cannot write {partial}: {e.strerror}") from None
        if received > wanted.size:
            partial.unlink(missing_ok=True)
            raise ArchiveError(f"{wanted.what}: the mirror sent more than the signed size of "
                             f"{wanted.size} bytes; refused")
        if received < wanted.size and received - start == announced:
            partial.unlink(missing_ok=True)
            raise ArchiveError(f"{wanted.what}: the mirror sent {received} bytes, less than the signed size of "
                             f"{wanted.size} bytes; refused", hint="the mirror may be broken or mid-update")
        if received < wanted.size:
            raise http.Transient(f"connection closed after {received} of {wanted.size} bytes")


def check_file(f: BinaryIO, wanted: Wanted) -> None:
    """Raise Mismatch unless the open file F has WANTED's size and SHA256 (the cache then drops it)."""
    size, sha256 = hash_open(f)
    problem = None
    if size != wanted.size:
        problem = f"size {size}, expected {wanted.size}"
    elif sha256 != wanted.sha256:
        problem = f"SHA256 mismatch (expected {wanted.sha256}, got {sha256})"
    if problem:
        raise Mismatch(f"{wanted.what}: {problem}; the file was discarded",
                         hint="the mirror serves bytes that are not the signed ones")


def _copy_at_most(source: IO[bytes], dest: BinaryIO, limit: int) -> None:
    """Copy SOURCE to DEST, stopping after LIMIT bytes (a larger file then fails its check)."""
    while limit > 0 and (chunk := source.read(min(CHUNK, limit))):
        dest.write(chunk)
        limit -= len(chunk)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _cannot_fetch(message: str, *, hint: str | None = None) -> ArchiveError:
    return ArchiveError(f"cannot fetch {message}", hint=hint)
