"""The registry API client (``docker://[HOST[:PORT]/]NAME[:TAG][@DIGEST]``): sessions, auth, blobs, manifests, login.

The OCI distribution protocol as ocistrap needs it:

* Blobs first. Each is HEADed and skipped when present; otherwise mounted from
  another repository of the same registry that a local record says we pushed
  it to; otherwise uploaded as one streamed PUT read from disk in small blocks
  (never whole in memory). The ``Docker-Content-Digest`` the registry answers
  must equal ours, or the push stops.
* Manifests last: child manifests by digest, then the root at its tag, only
  after every blob is confirmed; the tag's manifest is then read back and its
  digest checked. A tag therefore never points at a half-pushed image, and a
  push run again after an interruption uploads only what is missing.
* Retries, redirects, deadlines and body caps are those of ``ocistrap.http``,
  shared with the mirror. A blob upload is retried as a whole (a fresh
  upload session), since a session that failed half-way is in an unknown state.
* Referrers (OCI 1.1): the referrers API where the registry has it; the
  ``sha256-<hex>`` tag schema where it does not (distribution 2.8).

oras-py is used for what it does well: parsing ``WWW-Authenticate``
challenges (``oras.auth.utils``). Its ``Registry`` class is too coarse here
(it reads blobs whole into memory, has no HEAD-before-upload, no
cross-repository mount, no referrers fallback, retries every exception,
raises bare ValueErrors), and its token request has no timeout, no size cap
and reports a token service's 503 as refused credentials; so requests go
through our own choke point, ``Registry.request``, which answers at most one
auth challenge per request (Basic with stored credentials, or a Bearer token
for the challenged scopes, fetched with the same retries as any request).

Transport security: HTTPS with certificate checks by default; loopback
registries (127.0.0.0/8, ::1, localhost) are spoken to over plain HTTP, as
Docker does; ``tls_verify=False`` allows any other registry over HTTPS without
certificate checks, falling back to plain HTTP if it speaks no TLS.

Credentials go only to the registry's own origin (scheme, host, port), on
every request: an upload ``Location``, a redirect to storage, or the same
host over plain http gets none, and a 401 from elsewhere is not answered.
A token service (the challenge's realm) gets the Basic credentials only when
the challenge names it, and never over http when the registry is https.

Credentials (see ``ocistrap.transports.registry.auth``) never appear in messages or logs: only
the user name and where it came from are ever named.
"""

import io
import ipaddress
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urljoin

import oras.auth.utils

from ocistrap import http, log
from ocistrap.errors import CredentialsError, TransportError
from ocistrap.http import RetryPolicy, Transient
from ocistrap.oci.image import (
    DOCKER_HUB,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_INDEX,
    Descriptor,
    split_name,
)
from ocistrap.transports import Reference
from ocistrap.transports.registry import auth

MANIFEST_ACCEPT = ", ".join(sorted(MANIFEST_MEDIA_TYPES | INDEX_MEDIA_TYPES))
TIMEOUTS = http.Timeouts(connect=30, read=300, deadline=300, stall=60)
"""The timeouts every registry uses unless given others (tests make them short)."""
MAX_REDIRECTS = http.MAX_REDIRECTS
MANIFEST_LIMIT = 4 << 20
"""The largest manifest or index read (containerd's limit)."""
CONFIG_LIMIT = 16 << 20
"""The largest image config read into memory."""
TOKEN_LIMIT = 1 << 20
ERROR_LIMIT = 64 << 10
RETRY = RetryPolicy()
"""The policy every registry uses unless given another (tests make it fast)."""


# --- names -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where in which registry an image goes: ``registry/repository:tag@digest``."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        return text + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def target_of(ref: Reference) -> Target:
    """The registry target a ``docker://`` reference names."""
    if ref.transport != "docker" or not ref.name:
        raise TransportError(f"{ref}: not a docker:// reference")
    registry, repository = split_name(ref.name)
    return Target(registry, repository, ref.tag, ref.digest)


def is_loopback(registry: str) -> bool:
    """Whether REGISTRY (``host[:port]``) is this machine, which Docker speaks to over plain HTTP."""
    host = registry
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _api_host(registry: str) -> str:
    return "registry-1.docker.io" if registry == DOCKER_HUB else registry


# --- the choke point -----------------------------------------------------------------------


class Registry:
    """One registry host. Every request goes through ``request``, which authenticates and retries."""

    def __init__(
        self,
        name: str,
        *,
        tls_verify: bool | None = None,
        credentials: auth.Credentials | None = None,
        retry: RetryPolicy | None = None,
        timeouts: http.Timeouts | None = None,
    ) -> None:
        self.name = name
        self.credentials = credentials
        self.retry = retry or RETRY
        self._insecure = tls_verify is False
        self.http = http.Client(
            error=self._error, timeouts=timeouts or TIMEOUTS, verify=not self._insecure,
            tls_hint="for a registry without a valid certificate pass --tls-verify=false",
        )
        plain = is_loopback(name) and tls_verify is None
        self.base = f"{'http' if plain else 'https'}://{_api_host(name)}"
        self._authorization: str | None = None
        self._scopes: set[str] = set()
        self._pinged = False
        self._ping_lock = threading.Lock()
        self._auth_lock = threading.Lock()

    @classmethod
    def for_target(cls, target: Target, *, tls_verify: bool | None = None) -> "Registry":
        """A registry session using the stored credentials for TARGET, if any."""
        return cls(target.registry, tls_verify=tls_verify, credentials=auth.lookup(target.registry, target.repository))

    def _error(self, message: str, *, hint: str | None = None) -> TransportError:
        return TransportError(f"{self.name}: {message}", hint=hint)

    def ping(self) -> None:
        """Check the registry speaks the v2 API (answering its challenge), choosing http for insecure
        ones; once per session, the other threads of a session waiting for it."""
        with self._ping_lock:
            if self._pinged:
                return
            self._pinged = True
            if self._insecure and self.base.startswith("https://"):
                try:
                    self.http.send("GET", self.base + "/v2/", what="GET /v2/").close()
                except (Transient, TransportError):
                    self.base = "http://" + self.base.removeprefix("https://")
            self.request("GET", "/v2/", expect=(200,)).close()

    def request(
        self,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...] = (200,),
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        body: bytes | Callable[[], Any] | None = None,
        stream: bool = False,
        limit: int | None = None,
        retry: bool = True,
        what: str | None = None,
    ) -> http.Response:
        """Send one request (PATH may be a full URL), answer one auth challenge, retry transient failures.

        Statuses in EXPECT (and 404) are returned; anything else raises TransportError.
        BODY may be a callable returning a fresh body for each attempt (a file to stream).
        With LIMIT, the body of an expected answer is read (capped) into ``.body``
        within the attempt, so a connection broken while reading it is retried.
        """
        if path != "/v2/":
            self.ping()
        url = path if "://" in path else self.base + path
        action = what or f"{method} {http.shown(url)}"

        def attempt() -> http.Response:
            sent = self._authorization
            response = self._send(method, url, headers, params, body, stream, action, sent)
            if response.status_code == 401 and response.headers.get("WWW-Authenticate"):
                self._refuse_foreign_challenge(response)
                self._answer(response.headers["WWW-Authenticate"], response, sent)
                response = self._send(method, url, headers, params, body, stream, action, self._authorization)
            if limit is not None and response.status_code in expect:
                response.body = response.read(limit, action)
            return response

        response = self.retrying(attempt, action) if retry else attempt()
        if response.status_code in expect or response.status_code == 404:
            return response
        raise self._failure(response, action)

    def retrying(self, operation: Callable[[], Any], what: str) -> Any:
        """Run OPERATION, retrying it with backoff while it fails transiently."""
        return self.retry.run(
            operation,
            lambda exc, attempts: TransportError(
                f"{self.name}: {what}: {exc} (gave up after {attempts} attempts)",
                hint="check that the registry is up, then run the same command again (a push keeps what it uploaded)",
            ),
            lambda exc, delay: log.get().detail(f"{self.name}: {what}: {exc}; retrying in {delay:.1f}s"),
        )

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        params: dict[str, str] | None,
        body: bytes | Callable[[], Any] | None,
        stream: bool,
        what: str,
        value: str | None,
    ) -> http.Response:
        data = body() if callable(body) else body
        authorization = http.Authorization.for_url(self.base, value) if value else None
        try:
            return self.http.send(method, url, what=what, headers=headers, params=params, body=data,
                                  authorization=authorization, large=stream or hasattr(data, "read"))
        finally:
            if hasattr(data, "close"):
                data.close()

    def _refuse_foreign_challenge(self, response: http.Response) -> None:
        """Credentials are for the registry: another host (a redirect, an upload location) asking gets none."""
        if http.origin(response.url) != http.origin(self.base):
            response.close()
            raise TransportError(f"{self.name}: {http.shown(response.url)}, where the registry sent us, asks for "
                                "credentials; ocistrap sends them only to the registry itself")

    def _answer(self, challenge: str, response: http.Response, sent: str | None) -> None:
        """Answer a WWW-Authenticate challenge to a request sent with SENT: Basic with our
        credentials, Bearer with a fresh token. One thread at a time: a thread that finds the
        challenge answered meanwhile by another takes that answer, and each token covers every
        scope asked for before it, so a later token never narrows an earlier one."""
        response.close()
        scheme = challenge.split(None, 1)[0].lower()
        with self._auth_lock:
            if self._authorization != sent and self._answered(scheme, challenge):
                return
            self._authorization = self._authorization_for(scheme, challenge)

    def _answered(self, scheme: str, challenge: str) -> bool:
        """Whether the session's authorization already answers CHALLENGE (its scheme, its scopes)."""
        current = (self._authorization or "").split(None, 1)[0].lower()
        if scheme != "bearer":
            return current == scheme
        scope = oras.auth.utils.parse_auth_header(challenge).scope
        return current == "bearer" and set((scope or "").split()) <= self._scopes

    def _authorization_for(self, scheme: str, challenge: str) -> str:
        if scheme == "basic":
            if self.credentials is None:
                raise self._login_needed()
            return f"Basic {self.credentials.basic()}"
        if scheme == "bearer":
            return f"Bearer {self._token(challenge)}"
        raise TransportError(f"{self.name}: unsupported authentication scheme {scheme!r}")

    def _token(self, challenge: str) -> str:
        """A bearer token for every scope this session was challenged for, from the challenge's realm.

        The realm gets our Basic credentials (it is where the challenge says
        they go), but never over plain http when the registry is https; its
        5xx, 429 and dropped connections are retried like any request.
        """
        header = oras.auth.utils.parse_auth_header(challenge)
        realm = header.realm or ""
        if not realm.lower().startswith(("https://", "http://")):
            raise TransportError(f"{self.name}: bearer challenge without an http(s) realm")
        if header.scope:
            self._scopes.update(header.scope.split())
        params: dict[str, Any] = {"scope": sorted(self._scopes)} if self._scopes else {}
        if header.service:
            params["service"] = header.service
        response = self.http.send("GET", realm, what=f"token service {http.shown(realm)}", params=params,
                                  headers={"Accept": "application/json"}, authorization=self._realm_credentials(realm))
        if response.status_code in (401, 403):
            response.close()
            raise self._login_failed() if self.credentials else self._login_needed()
        if response.status_code != 200:
            response.close()
            raise TransportError(f"{self.name}: token service {http.shown(realm)}: HTTP {response.status_code}")
        try:
            answer = json.loads(response.read(TOKEN_LIMIT, f"token service {http.shown(realm)}"))
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise TransportError(f"{self.name}: token service {http.shown(realm)} answered without a token")
        return token

    def _realm_credentials(self, realm: str) -> http.Authorization | None:
        if self.credentials is None:
            return None
        if not http.scheme_allows(self.base, realm):
            raise TransportError(f"{self.name}: its token service {http.shown(realm)} is plain http; "
                                "ocistrap does not send the credentials of an https registry there")
        return http.Authorization.for_url(realm, f"Basic {self.credentials.basic()}")

    def _failure(self, response: http.Response, action: str) -> TransportError:
        if response.status_code == 401:
            response.close()
            return self._login_failed() if self.credentials else self._login_needed()
        detail = _error_detail(response)
        if response.status_code == 403:
            who = f" for user {self.credentials.username}" if self.credentials else ""
            return TransportError(f"{self.name}: {action}: access denied{who}{detail}")
        return TransportError(f"{self.name}: {action}: HTTP {response.status_code}{detail}")

    def _login_needed(self) -> TransportError:
        return TransportError(
            f"{self.name}: the registry requires authentication and no credentials are stored for it",
            hint=f"run `ocistrap login {self.name}`",
        )

    def _login_failed(self) -> TransportError:
        assert self.credentials is not None
        source = f" (from {self.credentials.source})" if self.credentials.source else ""
        return CredentialsError(
            f"{self.name}: the registry refused the credentials of user {self.credentials.username}{source}",
            hint=f"check the user name and password, then `ocistrap login {self.name}` again",
        )


def _error_detail(response: http.Response) -> str:
    """``: CODE: message`` from a distribution error body, if it has a small one."""
    try:
        body = response.read_at_most(ERROR_LIMIT)
    except Transient:
        return ""
    try:
        first = (json.loads(body or b"").get("errors") or [])[0]
        return f": {first.get('code', '')}: {first.get('message', '')}"[:300]
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


# --- one repository --------------------------------------------------------------------------


def _open_blob(path: Path) -> IO[bytes]:
    """Open a local blob for streaming; a separate function so tests can interpose on uploads."""
    return open(path, "rb")


class Repository:
    """The blobs and manifests of one repository of a registry."""

    def __init__(self, registry: Registry, name: str) -> None:
        self.registry = registry
        self.name = name

    def _path(self, kind: str, reference: str = "") -> str:
        return f"/v2/{self.name}/{kind}/{reference}"

    def blob_size(self, digest: str) -> int | None:
        """The size of blob DIGEST in this repository, or None if it is not there."""
        response = self.registry.request("HEAD", self._path("blobs", digest), what=f"look up blob {digest}")
        response.close()
        if response.status_code == 404:
            return None
        return int(response.headers.get("Content-Length", -1))

    def upload_blob(self, path: Path, desc: Descriptor, mount_from: str | None = None) -> bool:
        """Put blob DESC (the file PATH) here, mounting it from MOUNT_FROM if possible; True if mounted."""
        return self.upload_stream(lambda: _open_blob(path), desc, mount_from)

    def upload_stream(self, opener: Callable[[], IO[bytes]], desc: Descriptor, mount_from: str | None = None) -> bool:
        """Put blob DESC here, read from a fresh OPENER() on each attempt unless mounted; True if mounted."""
        what = f"upload blob {desc.digest}"
        return self.registry.retrying(lambda: self._upload_once(opener, desc, mount_from), what)

    def _upload_once(self, opener: Callable[[], IO[bytes]], desc: Descriptor, mount_from: str | None) -> bool:
        params = {"mount": desc.digest, "from": mount_from} if mount_from else None
        start = self.registry.request(
            "POST", self._path("blobs", "uploads/"), params=params, expect=(201, 202), retry=False,
            what=f"start upload of blob {desc.digest}",
        )
        start.close()
        if start.status_code == 201 and mount_from:
            self._check_answer(start, desc)
            return True
        if start.status_code != 202 or not start.headers.get("Location"):
            raise TransportError(f"{self.registry.name}: starting an upload of {desc.digest} gave no upload location")
        location = urljoin(start.url, start.headers["Location"])
        done = self.registry.request(
            "PUT", location, params={"digest": desc.digest}, expect=(201,), retry=False,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)},
            body=opener, what=f"upload blob {desc.digest}",
        )
        done.close()
        if done.status_code == 404:
            raise Transient("upload session vanished")
        self._check_answer(done, desc)
        return False

    def _check_answer(self, response: http.Response, desc: Descriptor) -> None:
        """Refuse a registry that says it stored something other than DESC."""
        answered = response.headers.get("Docker-Content-Digest")
        if answered is None:
            size = self.blob_size(desc.digest)
            if size != desc.size:
                raise TransportError(f"{self.registry.name}: blob {desc.digest} is not there after its upload")
        elif answered != desc.digest:
            raise TransportError(
                f"{self.registry.name}/{self.name}: the registry answered digest {answered} "
                f"for blob {desc.digest}; refusing to tag an image it may have stored wrongly"
            )

    @contextmanager
    def open_blob(self, digest: str) -> Iterator[IO[bytes]]:
        """Stream blob DIGEST from the registry (raw bytes, as stored)."""
        response = self.registry.request("GET", self._path("blobs", digest), stream=True, what=f"fetch blob {digest}")
        if response.status_code == 404:
            response.close()
            raise TransportError(f"{self.registry.name}/{self.name}: blob {digest} is missing")
        stream = response.stream(f"{self.registry.name}/{self.name}: fetch blob {digest}")
        try:
            yield stream
        finally:
            stream.close()

    def read_blob(self, desc: Descriptor, limit: int = CONFIG_LIMIT) -> bytes:
        """Small blob DESC (a config) read into memory; refused when it is, or says it is, larger than LIMIT."""
        where = f"{self.registry.name}/{self.name}: blob {desc.digest}"
        if desc.size > limit:
            raise TransportError(f"{where} is {desc.size} bytes, more than the {limit} read into memory")
        response = self.registry.request("GET", self._path("blobs", desc.digest), limit=desc.size,
                                         what=f"fetch blob {desc.digest}")
        if response.status_code == 404:
            response.close()
            raise TransportError(f"{where} is missing")
        assert response.body is not None
        return response.body

    def stream_blob(self, desc: Descriptor) -> IO[bytes]:
        """Blob DESC as a stream of known length, to upload straight into another registry."""
        response = self.registry.request("GET", self._path("blobs", desc.digest), stream=True,
                                         what=f"fetch blob {desc.digest}")
        if response.status_code == 404:
            response.close()
            raise TransportError(f"{self.registry.name}/{self.name}: blob {desc.digest} is missing")
        return _SizedStream(response.stream(f"{self.registry.name}/{self.name}: fetch blob {desc.digest}"),
                            http.shown(response.url), desc.size)

    def get_manifest(self, reference: str, *, accept: str = MANIFEST_ACCEPT) -> tuple[bytes, str] | None:
        """The bytes and media type of the manifest or index at REFERENCE (tag or digest), or None."""
        response = self.registry.request(
            "GET", self._path("manifests", reference), headers={"Accept": accept}, limit=MANIFEST_LIMIT,
            what=f"fetch manifest {reference}",
        )
        if response.status_code == 404:
            response.close()
            return None
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        assert response.body is not None
        return response.body, media_type

    def put_manifest(self, reference: str, data: bytes, media_type: str) -> http.Response:
        """Store manifest DATA at REFERENCE; return the registry's answer (for its digest and OCI-Subject)."""
        response = self.registry.request(
            "PUT", self._path("manifests", reference), expect=(201,), headers={"Content-Type": media_type},
            body=data, what=f"store manifest {reference}",
        )
        response.close()
        if response.status_code == 404:
            raise TransportError(
                f"{self.registry.name}/{self.name}: storing manifest {reference} failed: the registry "
                "does not know a blob it refers to"
            )
        return response

    def referrers_api(self, digest: str, artifact_type: str | None) -> list[dict[str, Any]] | None:
        """Referrers of DIGEST through the OCI 1.1 API, or None if the registry has no such API."""
        params = {"artifactType": artifact_type} if artifact_type else None
        response = self.registry.request(
            "GET", self._path("referrers", digest), params=params, headers={"Accept": MEDIA_TYPE_INDEX},
            limit=MANIFEST_LIMIT, what=f"list referrers of {digest}",
        )
        if response.status_code == 404 or not response.headers.get("Content-Type", "").startswith(MEDIA_TYPE_INDEX):
            response.close()
            return None
        assert response.body is not None
        return _index_entries(response.body, f"{self.registry.name}: referrers of {digest}")


class _SizedStream(io.RawIOBase):
    """A response body that requests uploads with its known Content-Length (not chunked)."""

    def __init__(self, body: IO[bytes], url: str, size: int) -> None:
        self._body = body
        self._url = url
        self._size = size
        self._read = 0

    def __len__(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(min(len(buffer), self._size - self._read))
        if not data and self._read < self._size:
            raise TransportError(f"{self._url}: the blob ended after {self._read} of {self._size} bytes")
        buffer[:len(data)] = data
        self._read += len(data)
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def _index_entries(data: bytes, what: str) -> list[dict[str, Any]]:
    try:
        doc = json.loads(data)
        entries = doc["manifests"]
    except (ValueError, KeyError, TypeError):
        raise TransportError(f"{what}: not an image index") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise TransportError(f"{what}: its manifests are not a list of descriptors")
    return entries


def open_repository(ref: Reference, *, tls_verify: bool | None = None) -> tuple[Repository, Target]:
    """A session on the repository a ``docker://`` reference names, with stored credentials."""
    target = target_of(ref)
    return Repository(Registry.for_target(target, tls_verify=tls_verify), target.repository), target


# --- login ---------------------------------------------------------------------------------------


def login(registry: str, username: str, password: str, *, tls_verify: bool | None = None) -> Path:
    """Check USERNAME/PASSWORD against REGISTRY (``host[:port]``), then store them; return the auth file.

    Nothing is stored when the registry refuses them (CredentialsError, whose message
    names the user but never the password) or cannot be asked (TransportError:
    unreachable, failing, not a registry), which is not a verdict on them.
    """
    credentials = auth.Credentials(username, password)
    session = Registry(auth.normalize_registry(registry), tls_verify=tls_verify, credentials=credentials)
    session.ping()
    return auth.store(registry, credentials)


def logout(registry: str) -> Path:
    """Forget the stored login for REGISTRY; return the auth file it was removed from."""
    removed = auth.remove(registry)
    if removed is None:
        raise CredentialsError(
            f"not logged in to {registry} (nothing stored in {auth.login_file()})",
            hint="credentials in ~/.docker/config.json are docker's: remove them with `docker logout`",
        )
    return removed
