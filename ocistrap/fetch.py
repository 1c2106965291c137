"""Downloads from a Debian mirror: retries, resume, parallelism, nothing trusted.

Every byte fetched here is checked by the caller (signature) or here (size and
SHA256 from signed metadata) before it is used or enters the cache.
"""

import hashlib
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

from ocistrap.cache import CHUNK, Cache, file_sha256
from ocistrap import log
from ocistrap.errors import OcistrapError
from ocistrap.mirrorauth import MirrorLogins


class FetchError(OcistrapError):
    """A file could not be downloaded, or its bytes are not the signed ones."""


class NotFound(FetchError):
    """The mirror answered 404 for a file."""


class Mismatch(FetchError):
    """A downloaded file's size or SHA256 is not the signed one."""


RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_SCHEME_RANK = {"http": 0, "https": 1}


@dataclass(frozen=True)
class Wanted:
    """A file to download into the cache: where it is and what it must hash to."""

    url: str
    size: int
    sha256: str
    what: str


class Fetcher:
    """One HTTP session with retry policy; ``offline`` refuses any network use. LOGINS are sent
    with each request, redirected ones too, only where they apply (ocistrap.mirrorauth)."""

    def __init__(self, *, offline: bool = False, attempts: int = 4, timeout: float = 30.0,
                 backoff: float = 0.5, jobs: int = 8, logins: MirrorLogins = MirrorLogins()) -> None:
        self.offline = offline
        self.logins = logins
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff
        self.jobs = jobs
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=jobs)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "ocistrap"

    def get(self, url: str, *, what: str, limit: int = 256 << 20) -> bytes:
        """The whole body of a small file (InRelease, an index)."""
        return self._retrying(url, what, lambda: self._get_once(url, what, limit))

    def download(self, wanted: Wanted, cache: Cache) -> Path:
        """The cache path of WANTED, downloading (resuming) and verifying it if absent."""
        if (path := self._cached(wanted, cache)) is not None:
            return path
        if self.offline:
            raise FetchError(f"{wanted.what} is not in the cache and --offline forbids downloading it",
                             hint="run `ocistrap fetch LOCKFILE` once with network access")
        with cache.claim(wanted.sha256):
            if (path := self._cached(wanted, cache)) is not None:
                return path
            resuming = cache.partial_path(wanted.sha256).exists()
            try:
                return self._download_verified(wanted, cache)
            except Mismatch:
                if not resuming:
                    raise
            # an earlier run left a wrong prefix (check_file dropped it): start afresh once
            return self._download_verified(wanted, cache)

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

    def _retrying(self, url: str, what: str, attempt: Callable[[], object]):  # type: ignore[no-untyped-def]
        if self.offline:
            raise FetchError(f"cannot fetch {what}: --offline forbids network access",
                             hint="run once with network access to fill the cache")
        for n in range(self.attempts):
            try:
                return attempt()
            except _Transient as e:
                if n + 1 == self.attempts:
                    raise FetchError(f"cannot fetch {what}: {e} (gave up after {self.attempts} attempts)",
                                     hint="check the mirror URL and the network") from None
                time.sleep(self.backoff * 2**n)
        raise AssertionError("unreachable")

    def _request(self, url: str, what: str, headers: dict[str, str] | None = None) -> requests.Response:
        """GET URL, following at most MAX_REDIRECTS redirects that ``redirect_target`` allows."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self._get_one(url, what, headers)
            if response.status_code not in REDIRECT_STATUS:
                return self._checked(response, url, what)
            location = response.headers.get("Location", "")
            response.close()
            url = redirect_target(url, location, what)
        raise FetchError(f"cannot fetch {what}: more than {MAX_REDIRECTS} redirects (last to {url})",
                         hint="check the mirror URL; it may redirect in a loop")

    def _get_one(self, url: str, what: str, headers: dict[str, str] | None) -> requests.Response:
        try:
            return self.session.get(url, stream=True, timeout=self.timeout, headers=headers,
                                    allow_redirects=False, auth=self.logins.for_url(url))
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Transient(_reason(e)) from None
        except requests.RequestException as e:
            raise FetchError(f"cannot fetch {what}: {_reason(e)}") from None

    @staticmethod
    def _checked(response: requests.Response, url: str, what: str) -> requests.Response:
        if response.status_code in RETRY_STATUS:
            response.close()
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code == 404:
            response.close()
            raise NotFound(f"{what} does not exist on the mirror (HTTP 404: {url})")
        if response.status_code not in (200, 206):
            response.close()
            raise FetchError(f"cannot fetch {what}: HTTP {response.status_code} from {url}")
        return response

    def _get_once(self, url: str, what: str, limit: int) -> bytes:
        with self._request(url, what) as response:
            body = bytearray()
            try:
                for chunk in response.iter_content(CHUNK):
                    body += chunk
                    if len(body) > limit:
                        raise FetchError(f"{what} is larger than {limit} bytes; refusing it")
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                raise _Transient(_reason(e)) from None
        return bytes(body)

    def _download_once(self, wanted: Wanted, cache: Cache) -> None:
        partial = cache.partial_path(wanted.sha256)
        have = partial.stat().st_size if partial.exists() else 0
        if have >= wanted.size:
            partial.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else None
        with self._request(wanted.url, wanted.what, headers) as response:
            mode = "ab" if have and response.status_code == 206 else "wb"
            received = start = have if mode == "ab" else 0
            announced = _content_length(response)
            try:
                with open(partial, mode) as f:
                    for chunk in response.iter_content(CHUNK):
                        received += len(chunk)
                        if received > wanted.size:
                            break
                        f.write(chunk)
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as e:
                raise _Transient(_reason(e)) from None
            except OSError as e:
                raise FetchError(f"cannot write {partial}: {e.strerror}") from None
        if received > wanted.size:
            partial.unlink(missing_ok=True)
            raise FetchError(f"{wanted.what}: the mirror sent more than the signed size of "
                             f"{wanted.size} bytes; refused")
        if received < wanted.size and received - start == announced:
            partial.unlink(missing_ok=True)
            raise FetchError(f"{wanted.what}: the mirror sent {received} bytes, less than the signed size of "
                             f"{wanted.size} bytes; refused", hint="the mirror may be broken or mid-update")
        if received < wanted.size:
            raise _Transient(f"connection closed after {received} of {wanted.size} bytes")


def redirect_target(source: str, location: str, what: str) -> str:
    """The absolute URL a redirect from SOURCE to LOCATION leads to, if the policy allows it.

    Another host is fine (every byte is checked against signed hashes anyway),
    but, as apt does, never a step down from https to http, nor any other scheme.
    """
    if not location:
        raise FetchError(f"cannot fetch {what}: the mirror redirected without a Location ({source})")
    target = urllib.parse.urljoin(source, location)
    if not scheme_allows(source, target):
        raise FetchError(f"cannot fetch {what}: refused the redirect from {source} to {target} "
                         f"(only http->http, http->https and https->https are followed)",
                         hint="point --mirror at the https URL the mirror redirects to")
    return target


def scheme_allows(source: str, target: str) -> bool:
    """Whether a redirect from SOURCE to TARGET keeps to http/https and never steps down to http."""
    old = _SCHEME_RANK.get(urllib.parse.urlsplit(source).scheme.lower())
    new = _SCHEME_RANK.get(urllib.parse.urlsplit(target).scheme.lower())
    return old is not None and new is not None and new >= old


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isascii() and value.isdigit() else None


def check_file(path: Path, wanted: Wanted) -> None:
    """Raise FetchError (and drop the file) unless PATH has WANTED's size and SHA256."""
    size, sha256 = file_sha256(path)
    problem = None
    if size != wanted.size:
        problem = f"size {size}, expected {wanted.size}"
    elif sha256 != wanted.sha256:
        problem = f"SHA256 mismatch (expected {wanted.sha256}, got {sha256})"
    if problem:
        path.unlink(missing_ok=True)
        raise Mismatch(f"{wanted.what}: {problem}; the file was discarded",
                         hint="the mirror serves bytes that are not the signed ones")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Transient(Exception):
    """A failure worth retrying: a dropped connection, a timeout, 5xx or 429."""


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
