"""A real, signed Debian repository made on the spot, and a mirror that can lie.

``RepoBuilder`` builds tiny .debs with dpkg-deb, writes Packages indices, a
Release with SHA256 entries, InRelease and Release.gpg signed by a throwaway
GnuPG key; ``http_mirror`` serves a directory on 127.0.0.1 with per-path
tampering, for hostile-mirror tests.
"""

import contextlib
import gzip
import hashlib
import http.server
import lzma
import os
import shutil
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

__all__ = [
    "SigningKey",
    "make_key",
    "build_deb",
    "RepoBuilder",
    "Tamper",
    "Mirror",
    "signing_key",
    "other_key",
    "expired_key",
    "repo",
    "http_mirror",
]


@dataclass(frozen=True)
class SigningKey:
    """A throwaway OpenPGP key: its GNUPGHOME (secret part) and its public keyring file."""

    home: Path
    fingerprint: str
    keyring: Path

    def gpg(self, *args: str, data: bytes = b"", faked_time: str | None = None) -> bytes:
        fake = [f"--faked-system-time={faked_time}"] if faked_time else []
        command = ["gpg", "--batch", "--quiet", "--homedir", str(self.home), *fake, *args]
        env = {**os.environ, "GNUPGHOME": str(self.home)}
        return subprocess.run(command, input=data, capture_output=True, check=True, env=env).stdout

    def clearsign(self, data: bytes, *, faked_time: str | None = None) -> bytes:
        return self.gpg("--digest-algo", "SHA256", "--clearsign", data=data, faked_time=faked_time)

    def detach_sign(self, data: bytes, *, faked_time: str | None = None) -> bytes:
        return self.gpg("--digest-algo", "SHA256", "--armor", "--detach-sign", data=data, faked_time=faked_time)


def make_key(directory: Path, name: str, *, expires: str = "never", faked_time: str | None = None) -> SigningKey:
    """Generate an ed25519 signing key without passphrase (fast) and export its keyring."""
    home = directory / f"gnupg-{name}"
    home.mkdir(mode=0o700, parents=True)
    stub = SigningKey(home=home, fingerprint="", keyring=directory / f"{name}.gpg")
    stub.gpg("--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.invalid>",
             "ed25519", "sign", expires, faked_time=faked_time)
    listing = stub.gpg("--with-colons", "--list-keys").decode()
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    stub.keyring.write_bytes(stub.gpg("--export", fingerprint))
    return SigningKey(home=home, fingerprint=fingerprint, keyring=stub.keyring)


def _stop_agent(key: SigningKey) -> None:
    subprocess.run(["gpgconf", "--homedir", str(key.home), "--kill", "all"], capture_output=True, check=False)


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    """The key the test archive is signed with."""
    key = make_key(tmp_path_factory.mktemp("keys"), "archive")
    yield key
    _stop_agent(key)


@pytest.fixture(scope="session")
def other_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    """An unrelated key, for "signed by a key nobody trusts" tests."""
    key = make_key(tmp_path_factory.mktemp("keys"), "stranger")
    yield key
    _stop_agent(key)


EXPIRED_KEY_TIME = "20200101T000000"


@pytest.fixture(scope="session")
def expired_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningKey]:
    """A key made in 2020 that expired in 2020; sign with ``faked_time=EXPIRED_KEY_TIME``."""
    key = make_key(tmp_path_factory.mktemp("keys"), "expired", expires="2020-02-01", faked_time=EXPIRED_KEY_TIME)
    yield key
    _stop_agent(key)


CONTROL_ORDER = ("Package", "Version", "Architecture", "Multi-Arch", "Essential", "Priority",
                 "Pre-Depends", "Depends", "Provides", "Maintainer", "Description")


def control_text(fields: dict[str, str]) -> str:
    """A control paragraph with fields in Debian's usual order; empty values are left out."""
    ordered = sorted(fields, key=lambda name: CONTROL_ORDER.index(name) if name in CONTROL_ORDER else 99)
    return "".join(f"{name}: {fields[name]}\n" for name in ordered if fields[name])


def build_deb(directory: Path, fields: dict[str, str], files: dict[str, bytes] | None = None) -> Path:
    """Build a .deb with dpkg-deb from control FIELDS and FILES (path in the tree -> content)."""
    name = f"{fields['Package']}_{fields['Version'].replace(':', '%3a')}_{fields['Architecture']}"
    tree = directory / f"{name}.tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(control_text(fields))
    for path, content in (files or {}).items():
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    deb = directory / f"{name}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)],
                   capture_output=True, check=True)
    shutil.rmtree(tree)
    return deb


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class BuiltDeb:
    """One .deb in the pool and the stanza that describes it."""

    component: str
    architecture: str
    filename: str
    stanza: str


class RepoBuilder:
    """Build a signed repository under ROOT (the directory a mirror serves)."""

    def __init__(self, root: Path, key: SigningKey) -> None:
        self.root = root
        self.key = key
        self.debs: list[BuiltDeb] = []
        root.mkdir(parents=True, exist_ok=True)

    def add_deb(self, package: str, version: str = "1.0", *, architecture: str = "amd64",
                component: str = "main", depends: str = "", pre_depends: str = "", provides: str = "",
                essential: bool = False, priority: str = "", multi_arch: str = "",
                files: dict[str, bytes] | None = None, extra: dict[str, str] | None = None) -> BuiltDeb:
        """Build a .deb into pool/COMPONENT/ and remember its Packages stanza."""
        fields = {
            "Package": package, "Version": version, "Architecture": architecture,
            "Multi-Arch": multi_arch, "Essential": "yes" if essential else "", "Priority": priority,
            "Pre-Depends": pre_depends, "Depends": depends, "Provides": provides,
            "Maintainer": "Test <test@example.invalid>", "Description": f"test package {package}\n tiny",
            **(extra or {}),
        }
        pool = self.root / "pool" / component / package[0] / package
        pool.mkdir(parents=True, exist_ok=True)
        deb = build_deb(pool, fields, files if files is not None else {f"usr/share/{package}/README": b"hi\n"})
        data = deb.read_bytes()
        filename = deb.relative_to(self.root).as_posix()
        stanza = control_text(fields) + f"Filename: {filename}\nSize: {len(data)}\nSHA256: {sha256_of(data)}\n"
        built = BuiltDeb(component=component, architecture=architecture, filename=filename, stanza=stanza)
        self.debs.append(built)
        return built

    def packages_text(self, component: str, architecture: str) -> str:
        """The Packages index of COMPONENT/ARCHITECTURE (Architecture: all goes in every one)."""
        stanzas = [deb.stanza for deb in self.debs
                   if deb.component == component and deb.architecture in (architecture, "all")]
        return "\n".join(stanzas)

    def write(self, suite: str = "testing", *, codename: str = "", valid_until: datetime | None = None,
              by_hash: bool = False, date: datetime | None = None, architectures: tuple[str, ...] = (),
              compressions: tuple[str, ...] = ("", ".xz")) -> Path:
        """Write the indices, Release, InRelease and Release.gpg of SUITE; return dists/SUITE."""
        dist = self.root / "dists" / suite
        components = sorted({deb.component for deb in self.debs} or {"main"})
        arches = architectures or tuple(sorted({d.architecture for d in self.debs} - {"all"} or {"amd64"}))
        files: dict[str, bytes] = {}
        for component in components:
            for arch in arches:
                index = self.packages_text(component, arch).encode()
                for suffix in compressions:
                    files[f"{component}/binary-{arch}/Packages{suffix}"] = compress(index, suffix)
        for path, data in files.items():
            self._put(dist / path, data, by_hash=by_hash)
        release = release_text(suite=suite, codename=codename or suite, date=date or datetime.now(timezone.utc),
                               valid_until=valid_until, by_hash=by_hash, architectures=arches,
                               components=tuple(components), files=files)
        self.sign(suite, release.encode())
        return dist

    def sign(self, suite: str, release: bytes, key: SigningKey | None = None, *,
             faked_time: str | None = None) -> None:
        """(Re)write Release, InRelease and Release.gpg of SUITE, signed by KEY (default: the builder's)."""
        key = key or self.key
        dist = self.root / "dists" / suite
        dist.mkdir(parents=True, exist_ok=True)
        (dist / "Release").write_bytes(release)
        (dist / "InRelease").write_bytes(key.clearsign(release, faked_time=faked_time))
        (dist / "Release.gpg").write_bytes(key.detach_sign(release, faked_time=faked_time))

    def resign(self, suite: str, key: SigningKey, **kwargs: str) -> None:
        """Sign SUITE's current Release again, with another key."""
        self.sign(suite, (self.root / "dists" / suite / "Release").read_bytes(), key, **kwargs)

    def _put(self, path: Path, data: bytes, *, by_hash: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if by_hash:
            hashed = path.parent / "by-hash" / "SHA256" / sha256_of(data)
            hashed.parent.mkdir(parents=True, exist_ok=True)
            hashed.write_bytes(data)

    def flip_byte(self, relpath: str, offset: int = -1) -> None:
        """Invert one byte of a file under the root (default: the last one)."""
        path = self.root / relpath
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))

    def truncate(self, relpath: str, size: int | None = None) -> None:
        """Cut a file under the root to SIZE bytes (default: half)."""
        path = self.root / relpath
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2 if size is None else size])


def compress(data: bytes, suffix: str) -> bytes:
    if suffix == ".xz":
        return lzma.compress(data)
    if suffix == ".gz":
        return gzip.compress(data, mtime=0)
    return data


def release_text(*, suite: str, codename: str, date: datetime, valid_until: datetime | None, by_hash: bool,
                 architectures: tuple[str, ...], components: tuple[str, ...], files: dict[str, bytes]) -> str:
    """A Release file listing FILES (path -> content) with their size and SHA256."""
    lines = ["Origin: Ocistrap-Test", "Label: Ocistrap-Test", f"Suite: {suite}", f"Codename: {codename}",
             f"Date: {format_datetime(date.astimezone(timezone.utc), usegmt=True)}"]
    if valid_until is not None:
        lines.append(f"Valid-Until: {format_datetime(valid_until.astimezone(timezone.utc), usegmt=True)}")
    if by_hash:
        lines.append("Acquire-By-Hash: yes")
    lines += [f"Architectures: {' '.join(architectures)}", f"Components: {' '.join(components)}",
              "Description: generated by the ocistrap test suite", "SHA256:"]
    lines += [f" {sha256_of(data)} {len(data):>8} {path}" for path, data in sorted(files.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture
def repo(tmp_path: Path, signing_key: SigningKey) -> RepoBuilder:
    """An empty repository signed by ``signing_key``; add debs, then ``write()``."""
    return RepoBuilder(tmp_path / "repo", signing_key)


@dataclass
class Tamper:
    """How the mirror misbehaves for one path.

    body: serve these bytes instead of the file; status: answer with this code;
    content_length: announce this length; cut_after: close the connection after
    this many body bytes; delay: wait this long before answering (a large
    value is a hang); drip: send the body one byte at a time, this many
    seconds apart (each read is quick, the whole never ends); redirect: answer
    302 to this location; headers: send these too (Retry-After); times: misbehave
    for this many requests only, then serve normally.
    """

    body: bytes | None = None
    status: int | None = None
    content_length: int | None = None
    cut_after: int | None = None
    delay: float = 0.0
    drip: float = 0.0
    redirect: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = None


@dataclass
class Mirror:
    """A served directory; ``url`` has no trailing slash; ``authorizations`` pairs each requested
    path with the Authorization header it came with."""

    root: Path
    url: str = ""
    tampers: dict[str, Tamper] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    authorizations: list[tuple[str, str | None]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def tamper(self, path: str, **how: object) -> Tamper:
        """Make PATH (relative to the root, no leading slash) misbehave as ``Tamper(**how)`` says."""
        self.tampers[path.lstrip("/")] = tamper = Tamper(**how)  # type: ignore[arg-type]
        return tamper

    def take_tamper(self, path: str) -> Tamper | None:
        with self.lock:
            self.requests.append(path)
            tamper = self.tampers.get(path)
            if tamper is None or tamper.times is None:
                return tamper
            tamper.times -= 1
            if tamper.times <= 0:
                del self.tampers[path]
            return tamper


MAX_HANG_SECONDS = 60.0


class _Handler(http.server.BaseHTTPRequestHandler):
    mirror: Mirror
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:
            pass  # the client gave up, as hostile-mirror tests make it do

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, *, send_body: bool) -> None:
        path = served_path(self.path)
        self.mirror.authorizations.append((path, self.headers.get("Authorization")))
        tamper = self.mirror.take_tamper(path) or Tamper()
        if tamper.delay:
            self.mirror.stopping.wait(min(tamper.delay, MAX_HANG_SECONDS))
        if tamper.redirect is not None:
            self._head(302, 0, {"Location": tamper.redirect})
            return
        body = tamper.body if tamper.body is not None else self._read(path)
        status = tamper.status or (200 if body is not None else 404)
        body = body if body is not None and status < 400 else b"error\n"
        body, status, extra = self._range(body, status)
        length = tamper.content_length if tamper.content_length is not None else len(body)
        self._head(status, length, {**extra, **tamper.headers})
        if send_body and tamper.drip:
            self._drip(body, tamper.drip)
        elif send_body:
            self.wfile.write(body if tamper.cut_after is None else body[: tamper.cut_after])
        if tamper.cut_after is not None or length != len(body):
            self.close_connection = True

    def _drip(self, body: bytes, seconds: float) -> None:
        for offset in range(len(body)):
            if self.mirror.stopping.wait(seconds):
                break
            self.wfile.write(body[offset:offset + 1])
            self.wfile.flush()

    def _read(self, path: str) -> bytes | None:
        """The file PATH; for a directory, a page linking to what it holds (as `NAME/`: the snapshot
        service's lists of imports are read this way)."""
        target = (self.mirror.root / path).resolve()
        if not target.is_relative_to(self.mirror.root.resolve()):
            return None
        if target.is_dir():
            return "".join(f'<a href="{p.name}/">{p.name}</a>\n' for p in sorted(target.iterdir())).encode()
        return target.read_bytes() if target.is_file() else None

    def _range(self, body: bytes, status: int) -> tuple[bytes, int, dict[str, str]]:
        """Honour ``Range: bytes=N-``, which resuming downloads send."""
        wanted = self.headers.get("Range", "")
        if status != 200 or not wanted.startswith("bytes=") or not wanted.endswith("-"):
            return body, status, {}
        start = int(wanted[len("bytes="):-1] or 0)
        if start >= len(body):
            return b"", 416, {"Content-Range": f"bytes */{len(body)}"}
        return body[start:], 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}

    def _head(self, status: int, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()


def served_path(target: str) -> str:
    """The file a request target names below the root. An absolute target (the server used as an
    HTTP proxy: `http_proxy=URL`) names its host too: http://deb.debian.org/debian/x is
    deb.debian.org/debian/x, so one root serves the mirrors a lockfile names at their own URLs."""
    if target.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(target)
        target = parts.netloc + parts.path
    return target.split("?", 1)[0].lstrip("/")


@pytest.fixture
def http_mirror(repo: RepoBuilder) -> Iterator[Mirror]:
    """Serve ``repo.root`` on 127.0.0.1 (port chosen by the OS) for the length of a test."""
    with serving(repo.root) as mirror:
        yield mirror


@contextlib.contextmanager
def serving(root: Path) -> Iterator[Mirror]:
    """Serve ROOT on 127.0.0.1 (port chosen by the OS) while the block runs."""
    mirror = Mirror(root=root)
    handler = type("Handler", (_Handler,), {"mirror": mirror})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    mirror.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield mirror
    finally:
        mirror.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

