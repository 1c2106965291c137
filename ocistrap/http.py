"""One HTTP layer for the Debian mirror and the registries: how often, where to, how long, how much.

Every request ocistrap makes goes through ``Client.send``:

* Retries: only dropped connections, timeouts, 408, 429 and 5xx are worth
  another attempt (``Transient``); ``RetryPolicy`` backs off exponentially and
  honours ``Retry-After`` up to its longest delay. Anything else fails at once.
* Redirects: only for GET and HEAD, at most ``MAX_REDIRECTS`` hops, within
  http/https and never from https down to http (as apt does).
* Credentials: an ``Authorization`` is sent only to the origin (scheme, host,
  port) it was issued for, checked on every request and every hop, so an
  upload ``Location`` on another host, storage a registry redirects to, or
  the same host over plain http gets none.
* Deadlines: besides the connect and per-read timeouts, a watchdog shuts the
  socket of a request that is not answered in full within ``Timeouts.deadline``,
  so a server dripping a byte per read timeout is cut off. A large body (a
  .deb, a blob, an upload) has no fixed total but must keep moving: at least
  ``min_progress`` bytes in every ``stall`` seconds.
* Caps: a body read into memory is refused past its cap, before reading when
  ``Content-Length`` announces it, otherwise as soon as it is exceeded.
"""

import email.utils
import io
import re
import socket
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

import requests
import requests.adapters
import requests.auth
import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ocistrap.errors import OcistrapError

MAX_REDIRECTS = 5
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
BLOCK = 1 << 16
_SCHEME_RANK = {"http": 0, "https": 1}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_RECHECK = 0.2

T = TypeVar("T")
ErrorFactory = Callable[..., OcistrapError]
"""Builds the caller's domain error from a message (and ``hint=``): ArchiveError, TransportError."""


class Transient(Exception):
    """A failure worth another attempt: a dropped connection, a timeout, 408, 429 or 5xx."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def is_transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient failures are retried."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        return min(self.base_delay * 2**attempt, self.max_delay)

    def run(self, operation: Callable[[], T], give_up: Callable[[Transient, int], Exception],
            note: Callable[[Transient, float], None] = lambda exc, delay: None) -> T:
        """OPERATION's result, running it again after a delay while it fails transiently.

        After the last attempt, GIVE_UP(last failure, attempts) is raised.
        """
        for attempt in range(self.attempts):
            try:
                return operation()
            except Transient as exc:
                if attempt + 1 >= self.attempts:
                    raise give_up(exc, attempt + 1) from None
                delay = self.delay(attempt, exc.retry_after)
                note(exc, delay)
                self.sleep(delay)
        raise AssertionError("a retry policy needs at least one attempt")


@dataclass(frozen=True)
class Timeouts:
    """How long a request may take (SECURITY.md, "Downloads and registries")."""

    connect: float = 30.0
    read: float = 60.0
    deadline: float = 300.0
    stall: float = 60.0
    min_progress: int = 64 << 10


# --- origins and redirects (pure) ----------------------------------------------------------


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of URL, the unit credentials are issued for."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


@dataclass(frozen=True)
class Authorization:
    """An ``Authorization`` header value and the one origin it may be sent to."""

    issued_for: tuple[str, str, int | None]
    value: str = field(repr=False)

    @classmethod
    def for_url(cls, url: str, value: str) -> "Authorization":
        return cls(origin(url), value)

    def allows(self, url: str) -> bool:
        """Whether a request to URL may carry it: same scheme, host and port, nothing else."""
        return origin(url) == self.issued_for

    def header_for(self, url: str) -> str | None:
        return self.value if self.allows(url) else None


class Credentials(Protocol):
    """What decides, for each request (each redirect hop too), which ``Authorization`` it carries."""

    def header_for(self, url: str) -> str | None: ...


def scheme_allows(source: str, target: str) -> bool:
    """Whether a step from SOURCE to TARGET keeps to http/https and never steps down to http."""
    old = _SCHEME_RANK.get(urllib.parse.urlsplit(source).scheme.lower())
    new = _SCHEME_RANK.get(urllib.parse.urlsplit(target).scheme.lower())
    return old is not None and new is not None and new >= old


def redirect_problem(method: str, source: str, target: str) -> str | None:
    """Why a redirect of METHOD from SOURCE to TARGET is refused, or None if it is followed.

    Another host is fine (its bytes are checked against signed hashes or
    digests, and it gets no credentials), but only reads are redirected.
    """
    if method not in ("GET", "HEAD"):
        return f"a {method} is never redirected"
    if not scheme_allows(source, target):
        return "only http->http, http->https and https->https are followed"
    return None


def shown(url: str) -> str:
    """URL fit for messages: query strings (upload state, signed storage URLs) dropped."""
    return url.partition("?")[0]


def reason(exc: BaseException) -> str:
    """The innermost cause of a requests exception, without object reprs or query strings."""
    inner = exc.args[0] if exc.args else exc
    text = str(getattr(inner, "reason", inner)) or type(exc).__name__
    text = re.sub(r"^(?:<[^>]*>|\w+\([^)]*\)):\s*", "", text.splitlines()[0] if text else text)
    return re.sub(r"\?[^\s'\")]*", "", text)[:300]


def retry_after(headers: Any) -> float | None:
    """Seconds a ``Retry-After`` header (seconds or an HTTP date) asks to wait, if any."""
    value = str(headers.get("Retry-After", "")).strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def content_length(headers: Any) -> int | None:
    value = str(headers.get("Content-Length", ""))
    return int(value) if value.isascii() and value.isdigit() else None


# --- deadlines, enforced from outside the reading thread --------------------------------------


class _Watch:
    """The deadline of one request; when it passes, the socket the request uses is shut down."""

    def __init__(self, timeouts: Timeouts, large: bool) -> None:
        self.timeouts = timeouts
        self.large = large
        self.deadline = time.monotonic() + timeouts.deadline
        self.expired = False
        self._credit = 0
        self._lock = threading.Lock()
        self._conn: HTTPConnection | None = None

    def attach(self, conn: HTTPConnection | None) -> None:
        with self._lock:
            self._conn = conn

    def detach(self, conn: HTTPConnection) -> None:
        with self._lock:
            if self._conn is conn:
                self._conn = None

    def progress(self, count: int) -> None:
        """COUNT more bytes moved: a large body that keeps moving gets more time."""
        self._credit += count
        if self.large and self._credit >= self.timeouts.min_progress:
            self._credit = 0
            self.grant(self.timeouts.stall)

    def grant(self, seconds: float) -> None:
        self.deadline = max(self.deadline, time.monotonic() + seconds)

    def fire(self) -> None:
        """Called once the deadline passed: cut the connection (again later, if it is still connecting)."""
        with self._lock:
            self.expired = True
            self.deadline = time.monotonic() + _RECHECK
            sock = getattr(self._conn, "sock", None)
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except (OSError, TypeError):
                pass

    def why(self) -> str:
        if self.large:
            return (f"timed out: less than {self.timeouts.min_progress} bytes moved in "
                    f"{self.timeouts.stall:g} s")
        return f"timed out: no complete answer within {self.timeouts.deadline:g} s"


class _Monitor:
    """One daemon thread that fires every watch whose deadline has passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._watches: set[_Watch] = set()
        self._thread: threading.Thread | None = None

    def add(self, watch: _Watch) -> None:
        with self._cond:
            self._watches.add(watch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ocistrap-http-deadlines", daemon=True)
                self._thread.start()
            self._cond.notify()

    def remove(self, watch: _Watch) -> None:
        with self._cond:
            self._watches.discard(watch)

    def _due(self) -> list[_Watch]:
        with self._cond:
            while True:
                now = time.monotonic()
                due = [w for w in self._watches if w.deadline <= now]
                if due:
                    return due
                later = [w.deadline - now for w in self._watches]
                self._cond.wait(min(later) if later else None)

    def _run(self) -> None:
        while True:
            for watch in self._due():
                watch.fire()


_MONITOR = _Monitor()
_current = threading.local()


class _WatchedConnection:
    """Mixed into urllib3's connections: each request binds the thread's current watch to its socket."""

    _watch: _Watch | None = None

    def _bind(self, watch: _Watch | None) -> None:
        if self._watch is not None and self._watch is not watch:
            self._watch.detach(self)  # type: ignore[arg-type]
        self._watch = watch
        if watch is not None:
            watch.attach(self)  # type: ignore[arg-type]

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._bind(getattr(_current, "watch", None))
        super().request(*args, **kwargs)  # type: ignore[misc]

    def close(self) -> None:
        self._bind(None)
        super().close()  # type: ignore[misc]


class _HTTPConnection(_WatchedConnection, HTTPConnection):
    pass


class _HTTPSConnection(_WatchedConnection, HTTPSConnection):
    pass


class _Released:
    """Mixed into urllib3's pools: a connection back in the pool is no longer any request's."""

    def _put_conn(self, conn: Any) -> None:
        if isinstance(conn, _WatchedConnection):
            conn._bind(None)
        super()._put_conn(conn)  # type: ignore[misc]


class _HTTPPool(_Released, HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(_Released, HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


# --- requests and answers ----------------------------------------------------------------------


class _OursOnly(requests.auth.AuthBase):
    """Session-wide auth that adds nothing, so requests never looks up ~/.netrc (which would replace
    a registry's bearer token and send a password no one asked us to send)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


class Client:
    """One connection pool with the policy above; ERROR builds the caller's domain error."""

    def __init__(self, *, error: ErrorFactory, timeouts: Timeouts = Timeouts(), verify: bool = True,
                 pool: int = 10, tls_hint: str | None = None) -> None:
        self.error = error
        self.timeouts = timeouts
        self.tls_hint = tls_hint
        self.session = requests.Session()
        adapter = _Adapter(pool_connections=4, pool_maxsize=pool)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = "ocistrap"
        self.session.headers["Accept-Encoding"] = "identity"
        self.session.verify = verify
        self.session.auth = _OursOnly()

    def send(self, method: str, url: str, *, what: str, headers: dict[str, str] | None = None,
             params: dict[str, Any] | None = None, body: Any = None,
             authorization: Credentials | None = None, large: bool = False) -> "Response":
        """Send one request, following allowed redirects, under one deadline; return the answer unread.

        Raises Transient for what is worth retrying (a transient status
        included) and the domain error for the rest. LARGE: the body (sent
        or received) is large, so it must keep moving rather than end in time.
        """
        watch = _Watch(self.timeouts, large)
        _MONITOR.add(watch)
        try:
            if body is not None and hasattr(body, "read"):
                body = _Counted(body, watch)
            for _ in range(MAX_REDIRECTS + 1):
                answer = self._hop(method, url, what, headers, params, body, authorization, watch)
                if answer.status_code not in REDIRECT_STATUS:
                    return self._final(answer, watch)
                url = self._redirect(method, answer, what)
            raise self.error(f"{what}: more than {MAX_REDIRECTS} redirects (last to {shown(url)})",
                             hint="the server or its storage redirects in a loop")
        except BaseException:
            _MONITOR.remove(watch)
            raise

    def _hop(self, method: str, url: str, what: str, headers: dict[str, str] | None,
             params: dict[str, Any] | None, body: Any, authorization: Credentials | None,
             watch: _Watch) -> requests.Response:
        all_headers = dict(headers or {})
        value = authorization.header_for(url) if authorization is not None else None
        if value is not None:
            all_headers["Authorization"] = value
        _current.watch = watch
        try:
            with warnings.catch_warnings():
                if not self.session.verify:
                    warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
                return self.session.request(method, url, headers=all_headers, params=params, data=body,
                                            stream=True, allow_redirects=False,
                                            timeout=(self.timeouts.connect, self.timeouts.read))
        except requests.exceptions.SSLError as exc:
            if watch.expired:
                raise Transient(watch.why()) from None
            raise self.error(f"{what}: TLS failed: {reason(exc)}", hint=self.tls_hint) from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise Transient(watch.why() if watch.expired else _connection_problem(exc)) from None
        except requests.RequestException as exc:
            raise self.error(f"{what}: {reason(exc)}") from None
        finally:
            _current.watch = None

    def _final(self, answer: requests.Response, watch: _Watch) -> "Response":
        if is_transient_status(answer.status_code):
            answer.close()
            raise Transient(f"HTTP {answer.status_code}", retry_after(answer.headers))
        return Response(answer, watch, self.error)

    def _redirect(self, method: str, answer: requests.Response, what: str) -> str:
        answer.close()
        location = answer.headers.get("Location", "")
        if not location:
            raise self.error(f"{what}: HTTP {answer.status_code} without a Location ({shown(answer.url)})")
        target = urllib.parse.urljoin(answer.url, location)
        problem = redirect_problem(method, answer.url, target)
        if problem:
            raise self.error(f"{what}: refused the redirect of {method} {shown(answer.url)} to {shown(target)} "
                             f"({problem})")
        return target


def _connection_problem(exc: Exception) -> str:
    inner = exc.args[0] if exc.args else None
    cause = getattr(inner, "reason", None)
    if isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(cause, urllib3.exceptions.NewConnectionError):
        return f"unreachable (connection failed: {reason(exc)})"
    if isinstance(exc, requests.Timeout):
        return f"timed out: {reason(exc)}"
    return f"connection failed: {reason(exc)}"


class Response:
    """An answer whose body has not been read: read it capped (``read``) or as a stream."""

    def __init__(self, answer: requests.Response, watch: _Watch, error: ErrorFactory) -> None:
        self._answer = answer
        self._watch = watch
        self._error = error
        self.body: bytes | None = None

    @property
    def status_code(self) -> int:
        return self._answer.status_code

    @property
    def headers(self) -> Any:
        return self._answer.headers

    @property
    def url(self) -> str:
        return self._answer.url

    def read(self, limit: int, what: str) -> bytes:
        """The whole body; refused (the domain error) past LIMIT bytes, Transient if the connection breaks."""
        body = self.read_at_most(limit)
        if body is None:
            raise self._error(f"{what}: the answer is larger than {limit} bytes; refused")
        return body

    def read_at_most(self, limit: int) -> bytes | None:
        """The whole body, or None (having read at most LIMIT + 1 bytes of it) if it is longer than LIMIT."""
        try:
            announced = content_length(self.headers)
            if announced is not None and announced > limit:
                return None
            body = bytearray()
            while chunk := self.read1(BLOCK):
                body += chunk
                if len(body) > limit:
                    return None
            return bytes(body)
        finally:
            self.close()

    def chunks(self, size: int = BLOCK) -> Iterator[bytes]:
        """The body in pieces as they arrive; Transient if the connection breaks or stalls."""
        while chunk := self.read1(size):
            yield chunk

    def read1(self, size: int) -> bytes:
        """At most SIZE bytes with at most one read from the socket (b"" at the end)."""
        try:
            data = self._answer.raw.read1(size, decode_content=False)
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError, ValueError) as exc:
            if self._watch.expired:
                raise Transient(self._watch.why()) from None
            raise Transient(f"connection broken: {reason(exc)}") from None
        self._watch.progress(len(data))
        return data

    def stream(self, what: str) -> IO[bytes]:
        """The body as a buffered file; a broken or stalled connection is the domain error."""
        return io.BufferedReader(_BodyReader(self, what), BLOCK)

    def close(self) -> None:
        self._answer.close()
        _MONITOR.remove(self._watch)

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BodyReader(io.RawIOBase):
    """A raw file over a Response (for io.BufferedReader) that raises the domain error."""

    def __init__(self, response: Response, what: str) -> None:
        super().__init__()
        self._response = response
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._response.read1(len(buffer))
        except Transient as exc:
            raise self._response._error(f"{self._what}: {exc}") from None
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._response.close()
        super().close()


class _Counted:
    """A request body that reports what has been sent to the watch (an upload must keep moving)."""

    def __init__(self, inner: IO[bytes], watch: _Watch) -> None:
        self._inner = inner
        self._watch = watch
        self._length = requests.utils.super_len(inner)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(BLOCK):
            yield chunk

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self._watch.progress(len(data))
        if not data:
            self._watch.grant(self._watch.timeouts.deadline)
        return data

    def close(self) -> None:
        self._inner.close()
