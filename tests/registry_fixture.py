"""Registries for tests: Debian's real ``docker-registry`` on 127.0.0.1, and a small fake one.

``registry`` starts distribution 2.8 with its storage in a temp dir on a free
port; ``auth_registry`` does the same behind htpasswd basic auth. Both can be
killed mid-push and restarted on the same storage and port. ``FakeRegistry``
is an in-process OCI distribution server with switchable faults (wrong digest
answers, 500s, dropped connections, bearer-token auth) for unit tests.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

REGISTRY_USER = "ocistrap"
REGISTRY_PASSWORD = "s3cret-Pa55word"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RealRegistry:
    """One ``docker-registry serve`` process; ``kill()`` and ``start()`` keep storage and port."""

    root: Path
    port: int
    htpasswd: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self) -> Path:
        lines = [
            "version: 0.1",
            "log:",
            "  level: warn",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.root / 'storage'}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
        ]
        if self.htpasswd is not None:
            lines += ["auth:", "  htpasswd:", "    realm: ocistrap-test", f"    path: {self.htpasswd}"]
        path = self.root / "config.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self) -> None:
        log = open(self.root / "registry.log", "ab")
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(self.config())], stdout=log, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited: {(self.root / 'registry.log').read_text()}")
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not answer /v2/ within 20 s")

    def kill(self) -> None:
        """Stop the registry at once (SIGKILL), as a crash or a pulled cable would."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()


def _needs_registry() -> None:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")


@pytest.fixture
def registry(tmp_path_factory) -> Iterator[RealRegistry]:
    """A fresh distribution 2.8 registry on 127.0.0.1 without auth."""
    _needs_registry()
    server = RealRegistry(tmp_path_factory.mktemp("registry"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def auth_registry(tmp_path_factory) -> Iterator[RealRegistry]:
    """A fresh registry behind htpasswd basic auth for REGISTRY_USER / REGISTRY_PASSWORD."""
    _needs_registry()
    if shutil.which("htpasswd") is None:
        pytest.skip("htpasswd is not installed (apt-get install apache2-utils)")
    root = tmp_path_factory.mktemp("registry")
    line = subprocess.run(
        ["htpasswd", "-Bbn", REGISTRY_USER, REGISTRY_PASSWORD], capture_output=True, text=True, check=True
    ).stdout
    (root / "htpasswd").write_text(line.strip() + "\n")
    server = RealRegistry(root, free_port(), htpasswd=root / "htpasswd")
    server.start()
    try:
        yield server
    finally:
        server.kill()


# --- a fake registry with faults ----------------------------------------------------------


@dataclass
class Faults:
    """What the fake registry does wrong; counters count down on each use."""

    wrong_digest: bool = False
    upload_500: int = 0
    drop_upload: int = 0
    manifest_500: int = 0
    wrong_manifest_back: bool = False
    token_503: int = 0
    huge: str | None = None  # "manifest", "error" (to a manifest PUT) or "token": a 100 MiB answer
    drip: float = 0.0  # manifest GETs: the body one byte at a time, this many seconds apart
    upload_to: str | None = None  # uploads go to this other origin (as Location)
    token_delay: float = 0.0  # the token service answers this many seconds late


@dataclass
class FakeState:
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)
    uploads: dict[str, bytearray] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    faults: Faults = field(default_factory=Faults)
    auth: str | None = None  # "basic", "bearer" (one token for all), "bearer-scoped" (a token per repository)
    seen_authorization: list[str] = field(default_factory=list)
    referrers_api: bool = False
    referrers: dict[str, list[dict]] = field(default_factory=dict)
    sent: int = 0  # bytes of a huge answer that got out


_BLOB = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})")
_UPLOADS = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<id>[0-9a-f]*)")
_MANIFEST = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)")
_REFERRERS = re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>sha256:[0-9a-f]{64})")
_TOKEN = "fake-token-123"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: FakeState

    def log_message(self, *args) -> None:
        pass

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.state.log.append((self.command, url.path + (f"?{url.query}" if url.query else "")))
        self.state.seen_authorization.append(self.headers.get("Authorization", ""))
        if url.path == "/token":
            return self._token()
        if not self._authorized():
            return
        if url.path == "/v2/":
            return self._reply(200, b"{}", "application/json")
        if match := _UPLOADS.fullmatch(url.path):
            return self._upload(match["name"], match["id"], query)
        if match := _BLOB.fullmatch(url.path):
            return self._blob(match["digest"])
        if match := _MANIFEST.fullmatch(url.path):
            return self._manifest(match["name"], match["ref"])
        if (match := _REFERRERS.fullmatch(url.path)) and self.state.referrers_api:
            index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                     "manifests": self.state.referrers.get(match["digest"], [])}
            return self._reply(200, json.dumps(index).encode(), "application/vnd.oci.image.index.v1+json")
        self._reply(404, b'{"errors":[{"code":"NOT_FOUND","message":"no route"}]}', "application/json")

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, body: bytes = b"", content_type: str | None = None, **headers: str) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _huge(self, status: int, content_type: str, announced: bool) -> None:
        """Answer with 100 MiB of zeros, counting what gets out before the client stops reading."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length" if announced else "Connection", str(100 << 20) if announced else "close")
        self.end_headers()
        self.close_connection = True
        block = b"\0" * (1 << 16)
        try:
            while self.state.sent < 100 << 20:
                self.wfile.write(block)
                self.state.sent += len(block)
        except OSError:
            pass

    def _drip(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for offset in range(len(body)):
                time.sleep(self.state.faults.drip)
                self.wfile.write(body[offset:offset + 1])
                self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _authorized(self) -> bool:
        if self.state.auth is None:
            return True
        given = self.headers.get("Authorization", "")
        if self.state.auth == "bearer-scoped":
            return self._scoped(given)
        if self.state.auth == "bearer":
            if given == f"Bearer {_TOKEN}":
                return True
            challenge = f'Bearer realm="http://{self.headers["Host"]}/token",service="fake",scope="repository:x:pull"'
        else:
            expected = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
            if given == f"Basic {expected}":
                return True
            challenge = 'Basic realm="fake"'
        self._body()
        self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                    "application/json", WWW_Authenticate=challenge)
        return False

    def _scoped(self, given: str) -> bool:
        """As distribution's token auth: /v2/ takes any token, a repository's path one whose
        scopes name that repository (the challenge says which)."""
        name = next((m["name"] for pattern in (_UPLOADS, _BLOB, _MANIFEST, _REFERRERS)
                     if (m := pattern.fullmatch(urlsplit(self.path).path))), None)
        scope = f"repository:{name}:pull" if name else None
        prefix = f"Bearer {_TOKEN}."
        if given.startswith(prefix) and (scope is None or scope in given.removeprefix(prefix).split("+")):
            return True
        challenge = f'Bearer realm="http://{self.headers["Host"]}/token",service="fake"'
        self._body()
        self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                    "application/json", WWW_Authenticate=challenge + (f',scope="{scope}"' if scope else ""))
        return False

    def _token(self) -> None:
        time.sleep(self.state.faults.token_delay)
        if self.state.faults.token_503:
            self.state.faults.token_503 -= 1
            return self._reply(503, b"try later", "text/plain")
        if self.state.faults.huge == "token":
            return self._huge(200, "application/json", announced=False)
        expected = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
        if self.headers.get("Authorization") != f"Basic {expected}":
            return self._reply(401, b'{"details":"bad credentials"}', "application/json")
        scopes = parse_qs(urlsplit(self.path).query).get("scope", [])
        token = f"{_TOKEN}.{'+'.join(sorted(scopes))}" if self.state.auth == "bearer-scoped" else _TOKEN
        self._reply(200, json.dumps({"token": token}).encode(), "application/json")

    def _blob(self, digest: str) -> None:
        data = self.state.blobs.get(digest)
        if data is None:
            return self._reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}', "application/json")
        self._reply(200, data, "application/octet-stream", Docker_Content_Digest=digest)

    def _upload(self, name: str, upload_id: str, query: dict[str, list[str]]) -> None:
        faults = self.state.faults
        if self.command == "POST":
            self._body()
            mount = query.get("mount", [None])[0]
            if mount and mount in self.state.blobs:
                return self._reply(201, Location=f"/v2/{name}/blobs/{mount}", Docker_Content_Digest=mount)
            new_id = os.urandom(8).hex()
            self.state.uploads[new_id] = bytearray()
            where = self.state.faults.upload_to or ""
            return self._reply(202, Location=f"{where}/v2/{name}/blobs/uploads/{new_id}?_state=x", Range="0-0")
        if upload_id not in self.state.uploads:
            self._body()
            return self._reply(404, b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN","message":"unknown"}]}', "application/json")
        if self.command == "PUT" and faults.drop_upload:
            faults.drop_upload -= 1
            self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 100))
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        data = self.state.uploads[upload_id]
        data += self._body()
        if self.command == "PATCH":
            return self._reply(202, Location=f"/v2/{name}/blobs/uploads/{upload_id}", Range=f"0-{len(data) - 1}")
        if faults.upload_500:
            faults.upload_500 -= 1
            return self._reply(500, b'{"errors":[{"code":"UNKNOWN","message":"disk on fire"}]}', "application/json")
        digest = query["digest"][0]
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            return self._reply(400, b'{"errors":[{"code":"DIGEST_INVALID","message":"digest invalid"}]}', "application/json")
        del self.state.uploads[upload_id]
        self.state.blobs[digest] = bytes(data)
        answered = "sha256:" + "0" * 64 if faults.wrong_digest else digest
        self._reply(201, Location=f"/v2/{name}/blobs/{digest}", Docker_Content_Digest=answered)

    def _index_referrer(self, body: bytes, digest: str) -> dict[str, str]:
        doc = json.loads(body)
        subject = doc.get("subject")
        if not subject:
            return {}
        entry = {"mediaType": doc["mediaType"], "digest": digest, "size": len(body),
                 "artifactType": doc.get("artifactType") or doc["config"]["mediaType"]}
        self.state.referrers.setdefault(subject["digest"], []).append(entry)
        return {"OCI_Subject": subject["digest"]}

    def _manifest(self, name: str, ref: str) -> None:
        tags = self.state.tags.setdefault(name, {})
        if self.command == "PUT":
            body = self._body()
            if self.state.faults.huge == "error":
                return self._huge(400, "application/json", announced=False)
            if self.state.faults.manifest_500:
                self.state.faults.manifest_500 -= 1
                return self._reply(500, b"{}", "application/json")
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            self.state.manifests[digest] = (body, self.headers["Content-Type"])
            if not ref.startswith("sha256:"):
                tags[ref] = digest
            extra = self._index_referrer(body, digest) if self.state.referrers_api else {}
            return self._reply(201, Location=f"/v2/{name}/manifests/{digest}", Docker_Content_Digest=digest, **extra)
        digest = tags.get(ref, ref)
        found = self.state.manifests.get(digest)
        if found is None:
            return self._reply(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}', "application/json")
        body, media_type = found
        if self.state.faults.wrong_manifest_back:
            body = body + b" "
        if self.state.faults.huge == "manifest" and self.command == "GET":
            return self._huge(200, media_type, announced=True)
        if self.state.faults.drip and self.command == "GET":
            return self._drip(body, media_type)
        self._reply(200, body, media_type, Docker_Content_Digest=digest)


@dataclass
class FakeRegistry:
    """An in-process registry on 127.0.0.1; ``state`` holds its content, faults and request log."""

    server: ThreadingHTTPServer
    state: FakeState

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def requests(self, method: str, pattern: str = "") -> list[str]:
        return [path for m, path in self.state.log if m == method and re.search(pattern, path)]


@pytest.fixture
def fake_registry() -> Iterator[FakeRegistry]:
    state = FakeState()
    handler: Callable = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeRegistry(server, state)
    finally:
        server.shutdown()
        server.server_close()
