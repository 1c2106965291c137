"""The one HTTP layer's policies (pure), and its deadline and caps against a local server."""

import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ocistrap import http
from ocistrap.errors import OcistrapError


@pytest.mark.parametrize(("source", "location", "target"), [
    ("http://a/x/f", "http://b/y/f", "http://b/y/f"),
    ("http://a/x/f", "https://b/y/f", "https://b/y/f"),
    ("https://a/x/f", "https://b/y/f", "https://b/y/f"),
    ("HTTP://a/x/f", "HTTPS://b/f", "HTTPS://b/f"),
])
def test_redirects_within_the_scheme_or_up_to_https_are_followed(source: str, location: str, target: str) -> None:
    assert http.redirect_problem("GET", source, target) is None
    assert http.redirect_problem("HEAD", source, target) is None


@pytest.mark.parametrize(("source", "target"), [
    ("https://a/x/f", "http://b/f"),
    ("https://a/x/f", "HTTP://a/f"),
    ("http://a/x/f", "ftp://b/f"),
    ("http://a/x/f", "file:///etc/passwd"),
])
def test_redirects_down_to_http_or_elsewhere_are_refused(source: str, target: str) -> None:
    assert http.redirect_problem("GET", source, target) == "only http->http, http->https and https->https are followed"


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
def test_only_reads_are_redirected(method: str) -> None:
    assert http.redirect_problem(method, "https://a/x", "https://a/y") == f"a {method} is never redirected"


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://registry.example/v2/x/blobs/uploads/1?_state=s", True),
    ("https://REGISTRY.example:443/v2/", True),
    ("http://registry.example/v2/", False),
    ("https://registry.example:5000/v2/", False),
    ("https://storage.example/v2/", False),
    ("https://registry.example.evil/v2/", False),
])
def test_credentials_only_to_the_origin_they_were_issued_for(url: str, allowed: bool) -> None:
    grant = http.Authorization.for_url("https://registry.example/v2/", "Bearer t0ken")
    assert grant.allows(url) is allowed
    assert "t0ken" not in repr(grant)


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert http.retry_after({"Retry-After": "7"}) == 7.0
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 < http.retry_after({"Retry-After": format_datetime(later, usegmt=True)}) <= 30
    assert http.retry_after({"Retry-After": "soon"}) is None
    assert http.retry_after({}) is None


def test_retry_policy_gives_up_with_the_last_failure() -> None:
    delays: list[float] = []
    policy = http.RetryPolicy(attempts=3, base_delay=0.5, max_delay=5, sleep=delays.append)
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise http.Transient("HTTP 503", retry_after=60 if len(calls) == 2 else None)

    with pytest.raises(OcistrapError, match=r"HTTP 503 after 3"):
        policy.run(failing, lambda exc, n: OcistrapError(f"{exc} after {n}"))
    assert delays == [0.5, 5]


# --- against a local server ---------------------------------------------------------------


class Server:
    """A local server whose answer a test chooses; ``sent`` counts the body bytes it got out."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.sent = 0
        self.authorizations: list[str | None] = []
        self.stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                owner.answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        body = b"x" * 200
        self.authorizations.append(handler.headers.get("Authorization"))
        if self.mode.startswith("redirect "):
            handler.send_response(302)
            handler.send_header("Location", self.mode.removeprefix("redirect "))
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        handler.send_response(200)
        if self.mode == "huge":
            handler.send_header("Connection", "close")
        else:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            if self.mode == "drip":
                for offset in range(len(body)):
                    if self.stop.wait(0.2):
                        return
                    handler.wfile.write(body[offset:offset + 1])
                    handler.wfile.flush()
            elif self.mode == "huge":
                block = b"\0" * (1 << 16)
                while self.sent < 100 << 20 and not self.stop.is_set():
                    handler.wfile.write(block)
                    self.sent += len(block)
            else:
                handler.wfile.write(body)
        except OSError:
            handler.close_connection = True


@pytest.fixture
def server() -> Iterator[Server]:
    found = Server()
    thread = threading.Thread(target=found.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        found.stop.set()
        found.httpd.shutdown()
        found.httpd.server_close()


class _Fixed:
    """Credentials that give every request the same header."""

    def __init__(self, value: str) -> None:
        self.value = value

    def header_for(self, url: str) -> str | None:
        return self.value


def client(**timeouts: float) -> http.Client:
    return http.Client(error=OcistrapError, timeouts=http.Timeouts(**timeouts))


def test_a_dripping_body_is_cut_off_at_the_deadline(server: Server) -> None:
    server.mode = "drip"
    started = time.monotonic()
    response = client(read=2.0, deadline=1.0).send("GET", server.url, what="drip")
    with pytest.raises(http.Transient, match="timed out: no complete answer within 1 s"):
        response.read(1000, "drip")
    assert 0.9 < time.monotonic() - started < 10  # the message names the deadline; a busy machine may be slow


@pytest.fixture
def dripping_tls_server() -> Iterator[str]:
    """An https:// address whose server answers a TLS handshake one byte of a never-finished
    ServerHello every 0.2 s (each read well within the read timeout), for 8 s at most."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for byte in (b"\x16\x03\x03\x40\x00" + b"\x02" * 40):
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{listener.getsockname()[1]}/"
    finally:
        stop.set()
        listener.close()


def test_a_dripping_tls_handshake_ends_within_the_connect_timeout(dripping_tls_server: str) -> None:
    """Python bounds the whole handshake by the socket's timeout, the connect timeout (urllib3
    shakes hands before the request is bound to its deadline): a server that answers a byte at
    a time cannot hold a download past it."""
    started = time.monotonic()
    with pytest.raises(http.Transient, match="timed out"):
        client(connect=1.0, read=10.0, deadline=30.0).send("GET", dripping_tls_server, what="handshake")
    assert time.monotonic() - started < 4  # the server drips for 9 s


def test_a_large_body_must_keep_moving(server: Server) -> None:
    server.mode = "drip"
    response = client(read=2.0, deadline=0.5, stall=0.5).send("GET", server.url, what="drip", large=True)
    with pytest.raises(OcistrapError, match="drip: timed out: less than 65536 bytes moved in 0.5 s"):
        response.stream("drip").read()


def test_a_body_over_the_cap_is_refused_without_reading_it_all(server: Server) -> None:
    server.mode = "huge"
    response = client().send("GET", server.url, what="huge")
    with pytest.raises(OcistrapError, match="huge: the answer is larger than 4194304 bytes; refused"):
        response.read(4 << 20, "huge")
    time.sleep(0.2)
    assert server.sent < 40 << 20


def test_an_honest_answer_is_read_whole(server: Server) -> None:
    with client(deadline=1.0).send("GET", server.url, what="ok") as response:
        assert response.read(200, "ok") == b"x" * 200


def test_a_refused_redirect_is_named_without_its_query(server: Server) -> None:
    server.mode = "redirect ftp://storage.example/blob?X-Amz-Signature=s3cr3t"
    with pytest.raises(OcistrapError, match=f"blob: refused the redirect of GET {server.url}/b to "
                                            "ftp://storage.example/blob \\(only http->http") as info:
        client().send("GET", server.url + "/b?state=s3cr3t", what="blob")
    assert "s3cr3t" not in str(info.value)


def test_a_netrc_entry_for_the_host_is_never_sent(server: Server, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Logins come from auth.conf/--auth-file only: ~/.netrc would replace a registry's bearer token."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password s3cr3t\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    with client().send("GET", server.url, what="ok") as response:
        response.read(200, "ok")
    token = _Fixed("Bearer t0ken")
    with client().send("GET", server.url, what="ok", authorization=token) as response:
        response.read(200, "ok")
    assert server.authorizations == [None, "Bearer t0ken"]
