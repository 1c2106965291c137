"""The registry transport and credentials: pure parts, a fake registry with faults, and Debian's docker-registry.

Real-registry tests use the ``registry``/``auth_registry`` fixtures of
registry_fixture.py (skipped when docker-registry is not installed); skopeo,
when present, checks what we pushed from the outside.
"""

import base64
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from image_helpers import build_image
from registry_fixture import REGISTRY_PASSWORD, REGISTRY_USER, free_port

from ocistrap import http
from ocistrap.cli import main
from ocistrap.errors import CredentialsError, ImageError, TransportError
from ocistrap.oci import image, ocilayout
from ocistrap.oci.image import Descriptor
from ocistrap.transports import Reference, parse_reference
from ocistrap.transports import write as write_to
from ocistrap.transports.registry import api, attachments, auth, upload
from ocistrap.verify import verify

SBOM_TYPE = "application/spdx+json"


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No credentials, caches or retry delays leak in from the machine running the tests."""
    home = tmp_path / "home"
    (home / "runtime").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "runtime"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setattr(api, "RETRY", api.RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05))
    return home


@pytest.fixture
def traffic(monkeypatch) -> list[tuple[str, str]]:
    """Every HTTP request made through requests, as (method, path?query)."""
    seen: list[tuple[str, str]] = []
    original = requests.Session.request

    def recording(self, method, url, *args, **kwargs):
        parts = urlsplit(url)
        params = kwargs.get("params") or {}
        query = "&".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, dict) else ""
        seen.append((method, parts.path + (f"?{query}" if query else "")))
        return original(self, method, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "request", recording)
    return seen


def uploads(traffic: list[tuple[str, str]]) -> list[str]:
    """Blob bodies sent: PUT/PATCH into upload sessions."""
    return [path for method, path in traffic if method in ("PUT", "PATCH") and "/blobs/uploads/" in path]


def docker(host: str, rest: str) -> Reference:
    return parse_reference(f"docker://{host}/{rest}")


def image_blobs(layout: Path, desc: Descriptor) -> list[Descriptor]:
    return [d for d in ocilayout.reachable(layout, desc) if d.media_type not in image.MANIFEST_MEDIA_TYPES]


def needs(tool: str):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"{tool} is not installed")


def skopeo_inspect(ref: str, *extra: str) -> dict:
    result = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", *extra, ref], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- names and policies (pure) ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("debian", ("docker.io", "library/debian")),
        ("someone/debian", ("docker.io", "someone/debian")),
        ("localhost/debian", ("localhost", "debian")),
        ("127.0.0.1:5000/a/b/c", ("127.0.0.1:5000", "a/b/c")),
        ("registry.example.org/debian", ("registry.example.org", "debian")),
        ("[::1]:5000/x", ("[::1]:5000", "x")),
    ],
)
def test_split_name(name, expected):
    assert image.split_name(name) == expected


def test_target_of_reference():
    target = api.target_of(parse_reference("docker://127.0.0.1:5000/ocistrap/debian:sid"))
    assert target == api.Target("127.0.0.1:5000", "ocistrap/debian", "sid")
    assert str(target) == "127.0.0.1:5000/ocistrap/debian:sid"
    with pytest.raises(TransportError, match="not a docker://"):
        api.target_of(parse_reference("oci:x"))


@pytest.mark.parametrize(
    "registry, loopback",
    [
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("localhost:5000", True),
        ("localhost", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("128.0.0.1:5000", False),
        ("localhost.example.org", False),
        ("registry.example.org:443", False),
        ("docker.io", False),
    ],
)
def test_loopback(registry, loopback):
    assert api.is_loopback(registry) is loopback


@pytest.mark.parametrize(
    "name, tls_verify, base",
    [
        ("127.0.0.1:5000", None, "http://127.0.0.1:5000"),
        ("127.0.0.1:5000", True, "https://127.0.0.1:5000"),
        ("registry.example.org", None, "https://registry.example.org"),
        ("registry.example.org", False, "https://registry.example.org"),
        ("docker.io", None, "https://registry-1.docker.io"),
    ],
)
def test_plain_http_only_for_loopback(name, tls_verify, base):
    session = api.Registry(name, tls_verify=tls_verify)
    assert session.base == base
    assert session.http.session.verify is (tls_verify is not False)


def test_backoff_grows_and_honours_retry_after():
    policy = api.RetryPolicy(base_delay=0.5, max_delay=5)
    assert [policy.delay(n, None) for n in range(5)] == [0.5, 1, 2, 4, 5]
    assert policy.delay(0, 3.0) == 3.0 and policy.delay(0, 60.0) == 5


def test_referrers_tag():
    assert attachments.referrers_tag("sha256:" + "ab" * 32) == "sha256-" + "ab" * 32


def test_connection_errors_are_summarised_without_urls():
    exc = requests.ConnectionError(
        "HTTPConnectionPool(host='127.0.0.1', port=1): Max retries exceeded with url: "
        "/v2/x/blobs/uploads/abc?_state=SECRETSTATE"
    )
    assert "SECRETSTATE" not in http.reason(exc)
    port = free_port()
    try:
        requests.put(f"http://127.0.0.1:{port}/v2/x/blobs/uploads/abc?_state=SECRETSTATE", timeout=5)
    except requests.ConnectionError as real:
        assert http.reason(real) == "Failed to establish a new connection: [Errno 111] Connection refused"


# --- credentials ---------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_lookup_order_auth_file_then_session_then_docker(isolated, monkeypatch, tmp_path):
    docker_config = isolated / ".docker" / "config.json"
    session = isolated / "runtime" / "containers" / "auth.json"
    explicit = tmp_path / "explicit.json"
    write_json(docker_config, {"auths": {"https://index.docker.io/v1/": {"auth": basic("hub", "h")},
                                         "r.example": {"auth": basic("docker", "d")}}})
    assert auth.lookup("docker.io").username == "hub"
    assert auth.lookup("r.example").username == "docker"
    write_json(session, {"auths": {"r.example": {"auth": basic("podman", "p")}}})
    assert auth.lookup("r.example").username == "podman"
    write_json(explicit, {"auths": {"r.example": {"auth": basic("explicit", "e:with:colons")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(explicit))
    found = auth.lookup("r.example")
    assert (found.username, found.password, found.source) == ("explicit", "e:with:colons", str(explicit))
    assert auth.lookup("other.example") is None


def test_repository_scoped_entries_win(isolated):
    write_json(isolated / "runtime" / "containers" / "auth.json", {"auths": {
        "r.example": {"auth": basic("all", "a")},
        "r.example/team": {"auth": basic("team", "t")},
    }})
    assert auth.lookup("r.example", "team/debian").username == "team"
    assert auth.lookup("r.example", "other/debian").username == "all"


def helper_script(bin_dir: Path, name: str, answer: dict | None) -> None:
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / f"docker-credential-{name}"
    body = f"cat >> {bin_dir}/{name}.asked\necho\n"
    body += f"echo '{json.dumps(answer)}'\n" if answer else "echo 'credentials not found' >&2\nexit 1\n"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


def test_credential_helpers_and_store(isolated, monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    helper_script(bin_dir, "pass", {"Username": "helped", "Secret": "s"})
    helper_script(bin_dir, "empty", None)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    write_json(isolated / ".docker" / "config.json",
               {"credHelpers": {"r.example": "pass"}, "credsStore": "empty"})
    found = auth.lookup("r.example")
    assert (found.username, found.password, found.source) == ("helped", "s", "docker-credential-pass")
    assert (bin_dir / "pass.asked").read_text() == "r.example"
    assert auth.lookup("elsewhere.example") is None
    assert (bin_dir / "empty.asked").read_text() == "elsewhere.example"


def test_missing_helper_is_named(isolated, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    write_json(isolated / ".docker" / "config.json", {"credsStore": "nonesuch"})
    with pytest.raises(CredentialsError, match="docker-credential-nonesuch .* not installed"):
        auth.lookup("r.example")


@pytest.mark.parametrize("entry", ["not base64!", base64.b64encode(b"no-colon-here").decode()])
def test_malformed_auth_entry(isolated, entry):
    write_json(isolated / ".docker" / "config.json", {"auths": {"r.example": {"auth": entry}}})
    with pytest.raises(CredentialsError, match="not base64 of USER:PASSWORD") as info:
        auth.lookup("r.example")
    assert "no-colon-here" not in str(info.value)


def test_store_and_remove_like_podman(isolated):
    path = auth.store("r.example:5000", auth.Credentials("me", "pw"))
    assert path == isolated / "runtime" / "containers" / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"auths": {"r.example:5000": {"auth": basic("me", "pw")}}}
    auth.store("other.example", auth.Credentials("you", "x"))
    assert auth.lookup("r.example:5000").password == "pw"
    assert auth.remove("r.example:5000") == path
    assert auth.remove("r.example:5000") is None
    assert list(json.loads(path.read_text())["auths"]) == ["other.example"]


def test_credentials_never_show_their_password():
    credentials = auth.Credentials("me", "hunter2", source="x")
    assert "hunter2" not in repr(credentials) and "hunter2" not in str(credentials)


# --- against a fake registry ----------------------------------------------------------------


def test_push_blobs_first_manifest_last(tmp_path, fake_registry, traffic):
    desc = build_image(tmp_path / "l", [{"a": b"a"}, {"b": b"b" * 50_000}])
    assert upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x/y:t")) == desc.digest
    puts = [path for method, path in traffic if method == "PUT"]
    assert len(puts) == 4
    assert all("/blobs/uploads/" in p for p in puts[:3]) and puts[3] == "/v2/x/y/manifests/t"
    assert traffic[-1] == ("GET", "/v2/x/y/manifests/t")
    assert set(fake_registry.state.blobs) == {b.digest for b in image_blobs(tmp_path / "l", desc)}


def test_wrong_digest_answer_is_refused(tmp_path, fake_registry):
    fake_registry.state.faults.wrong_digest = True
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="answered digest sha256:0000.* refusing"):
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert fake_registry.requests("PUT", "/manifests/") == []


def test_server_error_mid_upload_is_retried(tmp_path, fake_registry):
    fake_registry.state.faults.upload_500 = 2
    desc = build_image(tmp_path / "l")
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    blobs = image_blobs(tmp_path / "l", desc)
    assert len(fake_registry.requests("POST", "/blobs/uploads/")) == len(blobs) + 2
    assert fake_registry.state.tags["x"]["t"] == desc.digest


def test_dropped_connection_is_retried(tmp_path, fake_registry):
    fake_registry.state.faults.drop_upload = 1
    desc = build_image(tmp_path / "l", [{"big": os.urandom(300_000)}])
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert fake_registry.state.tags["x"]["t"] == desc.digest
    assert len(fake_registry.requests("POST", "/blobs/uploads/")) == len(image_blobs(tmp_path / "l", desc)) + 1


def test_persistent_failure_gives_up_without_tagging(tmp_path, fake_registry, monkeypatch):
    delays: list[float] = []
    monkeypatch.setattr(api, "RETRY", api.RetryPolicy(attempts=3, base_delay=0.5, sleep=delays.append))
    fake_registry.state.faults.upload_500 = 100
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match=r"HTTP 500 \(gave up after 3 attempts\)"):
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert delays == [0.5, 1.0]
    assert fake_registry.requests("PUT", "/manifests/") == []


def test_client_errors_are_not_retried(tmp_path, fake_registry):
    desc = build_image(tmp_path / "l")
    layer = image_blobs(tmp_path / "l", desc)[-1]
    path = ocilayout.blob_path(tmp_path / "l", layer.digest)
    path.write_bytes(b"\0" * layer.size)
    with pytest.raises(TransportError, match=f"upload blob {layer.digest}: HTTP 400: DIGEST_INVALID"):
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert len(fake_registry.requests("PUT", "/blobs/uploads/")) == len(image_blobs(tmp_path / "l", desc))


def test_manifest_read_back_must_match(tmp_path, fake_registry):
    fake_registry.state.faults.wrong_manifest_back = True
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="reads back as"):
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))


def test_digest_reference_must_match(tmp_path, fake_registry):
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="names digest"):
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, f"x@sha256:{'1' * 64}"))
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, f"x@{desc.digest}"))
    assert desc.digest in fake_registry.state.manifests and fake_registry.state.tags.get("x", {}) == {}


def test_blobs_are_streamed_in_small_reads(tmp_path, fake_registry, monkeypatch):
    desc = build_image(tmp_path / "l", [{"big": os.urandom(3_000_000)}], media_type=image.MEDIA_TYPE_LAYER)
    reads: list[int] = []

    class Recording(io.FileIO):
        def read(self, size=-1):
            reads.append(size)
            return super().read(size)

    monkeypatch.setattr(api, "_open_blob", lambda path: Recording(path, "rb"))
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert len(reads) > 10 and 0 < max(reads) <= 1 << 20


def test_referrers_api_when_the_registry_has_it(tmp_path, fake_registry):
    fake_registry.state.referrers_api = True
    layout = tmp_path / "l"
    subject = build_image(layout)
    ref = docker(fake_registry.host, "x:t")
    upload.push(layout, subject, ref)
    sbom = artifact(layout, subject, b"{}")
    attachments.push_referrer(layout, sbom, ref)
    assert [e["digest"] for e in attachments.list_referrers(ref, artifact_type=SBOM_TYPE)] == [sbom.digest]
    assert attachments.list_referrers(ref, artifact_type="other/type") == []
    assert attachments.referrers_tag(subject.digest) not in fake_registry.state.tags["x"]


def test_insecure_registry_falls_back_to_plain_http(tmp_path, fake_registry):
    desc = build_image(tmp_path / "l")
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"), tls_verify=False)
    assert fake_registry.state.tags["x"]["t"] == desc.digest


def test_tls_verify_on_a_plain_http_registry_fails_clearly(tmp_path, fake_registry):
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="TLS failed") as info:
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"), tls_verify=True)
    assert "--tls-verify=false" in info.value.hint


def auth_file(tmp_path: Path, monkeypatch, host: str, password: str) -> Path:
    path = tmp_path / "auth.json"
    write_json(path, {"auths": {host: {"auth": basic(REGISTRY_USER, password)}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    return path


def test_bearer_token_auth(tmp_path, fake_registry, monkeypatch):
    fake_registry.state.auth = "bearer"
    auth_file(tmp_path, monkeypatch, fake_registry.host, REGISTRY_PASSWORD)
    desc = build_image(tmp_path / "l")
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert fake_registry.state.tags["x"]["t"] == desc.digest
    assert len(fake_registry.requests("GET", "^/token")) == 1
    challenged = [a for a in fake_registry.state.seen_authorization if not a]
    assert len(challenged) == 1, "a token, once obtained, is sent with every later request"


def test_threads_sharing_a_session_fetch_one_token_per_new_scope(fake_registry):
    """A bundle reads on 8 threads through one registry session: the challenge they meet at once
    is answered with one token, and a thread's wider token is never replaced by a narrower one
    that another thread fetched (a token per repository, handed out slowly, as from a real
    token service under load)."""
    fake_registry.state.auth = "bearer-scoped"
    fake_registry.state.faults.token_delay = 0.3
    session = api.Registry(fake_registry.host, credentials=auth.Credentials(REGISTRY_USER, REGISTRY_PASSWORD))
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def read(name: str) -> None:
        start.wait()
        try:
            for _ in range(3):
                assert api.Repository(session, name).get_manifest("t") is None
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=read, args=("ab"[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(fake_registry.requests("GET", "^/token")) == 3  # /v2/'s, then one per repository


def test_bearer_wrong_password_is_not_shown(tmp_path, fake_registry, monkeypatch):
    fake_registry.state.auth = "bearer"
    auth_file(tmp_path, monkeypatch, fake_registry.host, "wrong-Pa55word-xyz")
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match=f"refused the credentials of user {REGISTRY_USER}") as info:
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    text = f"{info.value} {info.value!r} {info.value.hint}"
    assert "wrong-Pa55word-xyz" not in text and basic(REGISTRY_USER, "wrong-Pa55word-xyz") not in text


def test_no_credentials_asks_for_login(tmp_path, fake_registry):
    fake_registry.state.auth = "basic"
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="requires authentication") as info:
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert f"ocistrap login {fake_registry.host}" in info.value.hint


# --- redirects (the policy of SECURITY.md, as for mirrors) ------------------------------------


@dataclass
class Storage:
    """Another host a registry sends blob reads to (as registries redirect to S3 or a CDN)."""

    url: str
    blobs: dict[str, bytes]
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Authorization)
    challenge: bool = False


@pytest.fixture
def storage(fake_registry) -> Iterator[Storage]:
    """Serves the fake registry's blobs on localhost (another host name than 127.0.0.1, another port)."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            found.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
            data = found.blobs.get(self.path.rpartition("/")[2].partition("?")[0])
            status = 401 if found.challenge else 200 if data is not None else 404
            self.send_response(status)
            if found.challenge:
                self.send_header("WWW-Authenticate", f'Bearer realm="{found.url}/token"')
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            if self.command == "GET" and status == 200:
                self.wfile.write(data)

        do_HEAD = do_GET

        def do_PUT(self) -> None:
            """Take an upload (a registry's Location may point here) and answer as a registry does."""
            found.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            found.blobs[digest] = data
            self.send_response(201)
            self.send_header("Docker-Content-Digest", digest)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found = Storage(f"http://localhost:{server.server_address[1]}", fake_registry.state.blobs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()


def redirect_blob_reads(monkeypatch, fake_registry, location: Callable[[str], str]) -> None:
    """Make the fake registry answer every blob GET/HEAD with a 307 to LOCATION(digest)."""
    def blob(handler, digest: str) -> None:
        handler._reply(307, Location=location(digest))
    monkeypatch.setattr(fake_registry.server.RequestHandlerClass, "_blob", blob)


def pushed(tmp_path: Path, fake_registry, tag: str = "x:t") -> Descriptor:
    desc = build_image(tmp_path / "l", [{"a": os.urandom(5000)}])
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, tag))
    return desc


def test_blob_reads_follow_a_redirect_to_storage_without_the_credentials(tmp_path, fake_registry, storage,
                                                                           monkeypatch):
    fake_registry.state.auth = "basic"
    auth_file(tmp_path, monkeypatch, fake_registry.host, REGISTRY_PASSWORD)
    desc = pushed(tmp_path, fake_registry)
    redirect_blob_reads(monkeypatch, fake_registry, lambda digest: f"{storage.url}/store/{digest}?X-Sig=s3cr3t")
    assert verify(f"docker://{fake_registry.host}/x:t").blobs == len(image_blobs(tmp_path / "l", desc)) + 1
    assert {path.partition("?")[0] for _, path, _ in storage.seen} == {
        f"/store/{b.digest}" for b in image_blobs(tmp_path / "l", desc)}
    assert [a for _, _, a in storage.seen if a] == [], "credentials were forwarded to the storage host"
    assert any(a.startswith("Basic ") for a in fake_registry.state.seen_authorization)


def test_storage_asking_for_credentials_gets_none(tmp_path, fake_registry, storage, monkeypatch):
    fake_registry.state.auth = "basic"
    auth_file(tmp_path, monkeypatch, fake_registry.host, REGISTRY_PASSWORD)
    pushed(tmp_path, fake_registry)
    storage.challenge = True
    redirect_blob_reads(monkeypatch, fake_registry, lambda digest: f"{storage.url}/store/{digest}")
    with pytest.raises(ImageError, match="where the registry sent us, asks for credentials"):
        verify(f"docker://{fake_registry.host}/x:t")
    assert storage.seen and [a for _, _, a in storage.seen if a] == []
    assert fake_registry.requests("GET", "^/token") == [] and not any(p == "/token" for _, p, _ in storage.seen)


def test_redirect_loop_gives_up_after_the_limit_without_retrying(fake_registry, monkeypatch):
    redirect_blob_reads(monkeypatch, fake_registry, lambda digest: f"/v2/x/blobs/{digest}")
    with pytest.raises(TransportError, match=f"more than {api.MAX_REDIRECTS} redirects"):
        api.open_repository(docker(fake_registry.host, "x:t"))[0].blob_size("sha256:" + "1" * 64)
    assert len(fake_registry.requests("HEAD", "/blobs/")) == api.MAX_REDIRECTS + 1


@pytest.mark.parametrize("location", ["ftp://localhost/blob", "file:///etc/passwd"])
def test_redirect_to_another_scheme_is_refused(tmp_path, fake_registry, monkeypatch, location):
    desc = pushed(tmp_path, fake_registry)
    redirect_blob_reads(monkeypatch, fake_registry, lambda digest: location)
    with pytest.raises(ImageError, match=f"refused the redirect of GET .*/blobs/sha256:.* to {location} "
                                          r"\(only http->http"):
        verify(f"docker://{fake_registry.host}/x:t@{desc.digest}")


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_an_upload_location_on_another_host_gets_no_credentials(tmp_path, fake_registry, storage, monkeypatch, scheme):
    fake_registry.state.auth = scheme
    auth_file(tmp_path, monkeypatch, fake_registry.host, REGISTRY_PASSWORD)
    fake_registry.state.faults.upload_to = storage.url
    desc = build_image(tmp_path / "l")
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    puts = [(path, authorization) for method, path, authorization in storage.seen if method == "PUT"]
    assert len(puts) == len(image_blobs(tmp_path / "l", desc))
    assert [a for _, a in puts if a] == [], "credentials were sent to the upload location's host"
    assert fake_registry.state.tags["x"]["t"] == desc.digest
    assert any(a for a in fake_registry.state.seen_authorization), "the registry itself gets them"


def test_an_https_registry_never_sends_credentials_to_a_plain_http_token_service():
    session = api.Registry("registry.example", credentials=auth.Credentials(REGISTRY_USER, REGISTRY_PASSWORD))
    with pytest.raises(TransportError, match="token service http://auth.example/token is plain http"):
        session._realm_credentials("http://auth.example/token?scope=x")
    grant = session._realm_credentials("https://auth.example/token")
    assert grant.allows("https://auth.example/token") and not grant.allows("https://registry.example/v2/")


def test_a_token_service_503_is_retried(tmp_path, fake_registry, monkeypatch):
    fake_registry.state.auth = "bearer"
    fake_registry.state.faults.token_503 = 2
    auth_file(tmp_path, monkeypatch, fake_registry.host, REGISTRY_PASSWORD)
    desc = build_image(tmp_path / "l")
    upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert fake_registry.state.tags["x"]["t"] == desc.digest
    assert len(fake_registry.requests("GET", "^/token")) == 3


def test_a_registry_dripping_a_manifest_is_cut_off_at_the_deadline(tmp_path, fake_registry, monkeypatch):
    """A byte every 0.2 s never trips the 2 s read timeout; the 1 s deadline of each attempt does."""
    pushed(tmp_path, fake_registry)
    monkeypatch.setattr(api, "TIMEOUTS", http.Timeouts(read=2.0, deadline=1.0))
    fake_registry.state.faults.drip = 0.2
    repo, _ = api.open_repository(docker(fake_registry.host, "x:t"))
    started = time.monotonic()
    with pytest.raises(TransportError, match=r"fetch manifest t: timed out: no complete answer within 1 s "
                                                r"\(gave up after 4 attempts\)"):
        repo.get_manifest("t")
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(("huge", "refusal"), [
    ("manifest", f"fetch manifest t: the answer is larger than {api.MANIFEST_LIMIT} bytes; refused"),
    ("error", "store manifest t: HTTP 400$"),
    ("token", f"token service http://127.0.0.1:[0-9]+/token: the answer is larger than {api.TOKEN_LIMIT} bytes"),
])
def test_a_100_mib_answer_is_refused_at_the_cap_without_reading_it_all(tmp_path, fake_registry, monkeypatch,
                                                                         huge, refusal):
    if huge == "token":
        fake_registry.state.auth = "bearer"
        auth_file(tmp_path, monkeypatch, fake_registry.host, REGISTRY_PASSWORD)
    desc = build_image(tmp_path / "l")
    fake_registry.state.faults.huge = huge
    with pytest.raises(TransportError, match=refusal):
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    time.sleep(0.2)
    assert 0 < fake_registry.state.sent < 40 << 20


def test_login_to_an_unreachable_registry_says_unreachable_not_bad_credentials(isolated, monkeypatch, capsys):
    monkeypatch.setattr(api, "RETRY", api.RetryPolicy(attempts=2, base_delay=0.01))
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    host = f"127.0.0.1:{free_port()}"
    rc = main(["-q", "login", "--username", REGISTRY_USER, "--password-stdin", host])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and "unreachable" in err and "credentials" not in err, err
    assert not (isolated / "runtime" / "containers" / "auth.json").exists()


def test_a_manifest_put_is_never_redirected(tmp_path, fake_registry, monkeypatch):
    original = fake_registry.server.RequestHandlerClass._manifest

    def manifest(handler, name: str, ref: str) -> None:
        if handler.command != "PUT":
            return original(handler, name, ref)
        handler._body()
        handler._reply(307, Location=f"http://localhost:1/v2/{name}/manifests/{ref}")
    monkeypatch.setattr(fake_registry.server.RequestHandlerClass, "_manifest", manifest)
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="refused the redirect of PUT .*manifests/t .*a PUT is never redirected"):
        upload.push(tmp_path / "l", desc, docker(fake_registry.host, "x:t"))
    assert fake_registry.state.tags.get("x", {}) == {}


# --- against Debian's docker-registry ---------------------------------------------------------


def test_push_then_skopeo_inspects_it(tmp_path, registry):
    desc = build_image(tmp_path / "l", [{"etc/a": b"a"}, {"etc/b": b"b"}], media_type=image.MEDIA_TYPE_LAYER_ZSTD)
    write_to(tmp_path / "l", desc, docker(registry.host, "ocistrap/debian:bookworm"))
    config, *layers = ocilayout.children(tmp_path / "l", desc)
    if shutil.which("skopeo"):
        info = skopeo_inspect(f"docker://{registry.host}/ocistrap/debian:bookworm")
        assert info["Digest"] == desc.digest
        assert info["Layers"] == [layer.digest for layer in layers]
        raw = skopeo_inspect(f"docker://{registry.host}/ocistrap/debian:bookworm", "--config", "--raw")
        assert raw == ocilayout.read_json(tmp_path / "l", config)
    report = verify(f"docker://{registry.host}/ocistrap/debian:bookworm")
    assert (report.manifests, report.layers, report.blobs) == (1, 2, 4)
    assert report.tags == ["bookworm"]
    assert verify(f"docker://{registry.host}/ocistrap/debian@{desc.digest}").manifests == 1


def test_second_push_uploads_nothing_and_other_repos_mount(tmp_path, registry, traffic):
    desc = build_image(tmp_path / "l", [{"a": b"a"}, {"b": os.urandom(100_000)}])
    upload.push(tmp_path / "l", desc, docker(registry.host, "first:v1"))
    blobs = image_blobs(tmp_path / "l", desc)
    assert len(uploads(traffic)) == len(blobs)
    traffic.clear()
    upload.push(tmp_path / "l", desc, docker(registry.host, "first:v2"))
    assert uploads(traffic) == []
    assert [m for m, p in traffic if m == "HEAD"] == ["HEAD"] * len(blobs)
    traffic.clear()
    upload.push(tmp_path / "l", desc, docker(registry.host, "second:v1"))
    assert uploads(traffic) == []
    mounts = [p for m, p in traffic if m == "POST"]
    assert sorted(mounts) == sorted(f"/v2/second/blobs/uploads/?mount={b.digest}&from=first" for b in blobs)
    assert verify(f"docker://{registry.host}/second:v1").blobs == len(blobs) + 1


class _KillingReader(io.FileIO):
    """A blob file whose first read kills the registry, as a crash mid-upload would."""

    victim = None

    def read(self, size=-1):
        data = super().read(size)
        if _KillingReader.victim is not None:
            _KillingReader.victim.kill()
            _KillingReader.victim = None
        return data


def test_registry_killed_mid_push_then_rerun_uploads_only_the_rest(tmp_path, registry, traffic, monkeypatch):
    desc = build_image(tmp_path / "l", [{"a": b"a"}, {"b": b"b"}, {"big": os.urandom(4_000_000)}])
    blobs = image_blobs(tmp_path / "l", desc)
    big = blobs[-1]
    original = api._open_blob

    def open_blob(path):
        if path.name == big.hex:
            _KillingReader.victim = registry
            return _KillingReader(path, "rb")
        return original(path)

    monkeypatch.setattr(api, "_open_blob", open_blob)
    ref = docker(registry.host, "crash:latest")
    with pytest.raises(TransportError, match="gave up after") as info:
        upload.push(tmp_path / "l", desc, ref)
    assert "run the same command again" in info.value.hint
    monkeypatch.setattr(api, "_open_blob", original)
    registry.start()
    repo, _ = api.open_repository(ref)
    assert repo.get_manifest("latest") is None, "the tag must not exist while blobs are missing"
    traffic.clear()
    upload.push(tmp_path / "l", desc, ref)
    assert len(uploads(traffic)) == 1 and big.digest in uploads(traffic)[0]
    assert verify(str(ref)).blobs == len(blobs) + 1


def test_verify_detects_a_corrupted_registry_blob(tmp_path, registry):
    desc = build_image(tmp_path / "l", [{"a": b"a" * 1000}])
    upload.push(tmp_path / "l", desc, docker(registry.host, "x:t"))
    layer = image_blobs(tmp_path / "l", desc)[-1]
    stored = registry.root / "storage/docker/registry/v2/blobs/sha256" / layer.hex[:2] / layer.hex / "data"
    stored.write_bytes(bytes(b ^ 1 for b in stored.read_bytes()))
    with pytest.raises(ImageError, match=f"x:t@{layer.digest}.*digest mismatch"):
        verify(f"docker://{registry.host}/x:t")


def test_multi_platform_index(tmp_path, registry):
    layout = tmp_path / "l"
    amd64 = build_image(layout, arch="amd64")
    arm64 = build_image(layout, [{"etc/arch": b"arm64"}], arch="arm64")
    index = ocilayout.put_json(layout, image.make_index([amd64, arm64]), image.MEDIA_TYPE_INDEX)
    upload.push(layout, index, docker(registry.host, "multi:1"))
    repo, _ = api.open_repository(docker(registry.host, "multi:1"))
    data, media_type = repo.get_manifest("1")
    assert media_type == image.MEDIA_TYPE_INDEX and image.sha256_digest(data) == index.digest
    assert repo.get_manifest(arm64.digest)[1] == image.MEDIA_TYPE_MANIFEST
    assert verify(f"docker://{registry.host}/multi:1").manifests == 2


def test_login_push_logout_with_htpasswd(tmp_path, auth_registry, isolated):
    host = auth_registry.host
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="requires authentication"):
        upload.push(tmp_path / "l", desc, docker(host, "x:t"))
    with pytest.raises(CredentialsError, match=f"refused the credentials of user {REGISTRY_USER}") as info:
        api.login(host, REGISTRY_USER, "Wr0ng-password-42")
    text = f"{info.value} {info.value!r}"
    assert "Wr0ng-password-42" not in text and basic(REGISTRY_USER, "Wr0ng-password-42") not in text
    auth_json = isolated / "runtime" / "containers" / "auth.json"
    assert not auth_json.exists()
    assert api.login(host, REGISTRY_USER, REGISTRY_PASSWORD) == auth_json
    upload.push(tmp_path / "l", desc, docker(host, "x:t"))
    if shutil.which("skopeo"):
        info = skopeo_inspect(f"docker://{host}/x:t", "--authfile", str(auth_json))
        assert info["Digest"] == desc.digest
    assert verify(f"docker://{host}/x:t").manifests == 1
    assert api.logout(host) == auth_json
    with pytest.raises(CredentialsError, match=f"not logged in to {host}"):
        api.logout(host)


def artifact(layout: Path, subject: Descriptor, content: bytes, artifact_type: str = SBOM_TYPE) -> Descriptor:
    """An OCI 1.1 artifact manifest about SUBJECT holding CONTENT."""
    empty = ocilayout.put_json(layout, {}, "application/vnd.oci.empty.v1+json")
    ocilayout.put_bytes(layout, content)
    manifest = {
        "schemaVersion": 2,
        "mediaType": image.MEDIA_TYPE_MANIFEST,
        "artifactType": artifact_type,
        "config": empty.to_json(),
        "layers": [Descriptor.of(content, artifact_type).to_json()],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
        "annotations": {"org.opencontainers.image.created": "1970-01-01T00:00:00Z"},
    }
    return ocilayout.put_json(layout, manifest, image.MEDIA_TYPE_MANIFEST)


def test_referrers_fall_back_to_the_digest_tag(tmp_path, registry):
    layout = tmp_path / "l"
    subject = build_image(layout)
    ref = docker(registry.host, "ocistrap/debian:bookworm")
    upload.push(layout, subject, ref)
    assert attachments.list_referrers(ref) == []
    sbom = artifact(layout, subject, b'{"spdxVersion": "SPDX-2.3"}')
    assert attachments.push_referrer(layout, sbom, ref) == sbom.digest
    attachments.push_referrer(layout, sbom, ref)
    sig = artifact(layout, subject, b"signature", "application/vnd.example.sig")
    attachments.push_referrer(layout, sig, ref)

    found = attachments.list_referrers(ref)
    assert [(e["digest"], e["artifactType"]) for e in found] == [
        (sbom.digest, SBOM_TYPE), (sig.digest, "application/vnd.example.sig")
    ]
    assert found[0]["annotations"] == {"org.opencontainers.image.created": "1970-01-01T00:00:00Z"}
    assert [e["digest"] for e in attachments.list_referrers(ref, artifact_type=SBOM_TYPE)] == [sbom.digest]
    by_digest = docker(registry.host, f"ocistrap/debian@{subject.digest}")
    assert len(attachments.list_referrers(by_digest)) == 2
    repo, _ = api.open_repository(ref)
    data, media_type = repo.get_manifest(attachments.referrers_tag(subject.digest))
    assert media_type == image.MEDIA_TYPE_INDEX
    assert repo.get_manifest("bookworm")[0] == ocilayout.blob_path(layout, subject.digest).read_bytes()


def test_referrer_needs_a_subject(tmp_path, registry):
    desc = build_image(tmp_path / "l")
    with pytest.raises(TransportError, match="has no subject"):
        attachments.push_referrer(tmp_path / "l", desc, docker(registry.host, "x:t"))


def test_transport_error_for_missing_local_blob(tmp_path, registry):
    desc = build_image(tmp_path / "l")
    ocilayout.blob_path(tmp_path / "l", image_blobs(tmp_path / "l", desc)[-1].digest).unlink()
    with pytest.raises(TransportError, match="is missing"):
        upload.push(tmp_path / "l", desc, docker(registry.host, "x:t"))
