"""Logins for mirrors, read as apt reads them, and kept out of every URL that is written or shown.

apt's auth.conf format (apt_auth.conf(5), netrc syntax): ``machine
[scheme://]host[:port][/path] login NAME password SECRET``. An entry without a
scheme applies to https only; one with a port only to URLs that name that
port; one with a path to URLs whose path starts with it. The first entry that
matches wins: the ``--auth-file`` files in the order given, then
``/etc/apt/auth.conf.d/*.conf`` in name order, then ``/etc/apt/auth.conf``.

A mirror URL given with ``user:password@`` has that part moved into an entry
for exactly its scheme, host, port and path, and is used without it from then
on: the lockfile, the image's annotations, SBOM and apt sources, and every
message name the URL without it. A secret never shows in a repr or a message.
"""

import base64
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ocistrap.errors import UsageError

APT_AUTH_FILE = Path("/etc/apt/auth.conf")
APT_AUTH_PARTS = Path("/etc/apt/auth.conf.d")
_KEYWORDS = ("machine", "login", "password")


@dataclass(frozen=True)
class Login:
    """One auth.conf entry: where it applies and what it sends."""

    scheme: str | None
    host: str
    port: int | None
    path: str
    login: str
    password: str = field(repr=False)

    def applies_to(self, url: str) -> bool:
        """Whether apt would send this login with a request for URL."""
        parts = urllib.parse.urlsplit(url)
        scheme_ok = parts.scheme == self.scheme if self.scheme else parts.scheme == "https"
        return (scheme_ok and (parts.hostname or "") == self.host
                and (self.port is None or _port(parts) == self.port) and parts.path.startswith(self.path))


@dataclass(frozen=True)
class MirrorLogins:
    """The logins a Fetcher may send, each only where it applies."""

    entries: tuple[Login, ...] = ()

    def for_url(self, url: str) -> tuple[str, str] | None:
        """The (login, password) for a request of URL, or None: nothing is sent."""
        found = next((e for e in self.entries if e.applies_to(url)), None)
        return None if found is None else (found.login, found.password)

    def header_for(self, url: str) -> str | None:
        """The Basic ``Authorization`` value for a request of URL (http.Credentials), or None."""
        found = self.for_url(url)
        if found is None:
            return None
        return "Basic " + base64.b64encode(f"{found[0]}:{found[1]}".encode()).decode("ascii")

    def __add__(self, other: "MirrorLogins") -> "MirrorLogins":
        return MirrorLogins(self.entries + other.entries)


def parse(text: str, *, what: str) -> MirrorLogins:
    """The entries of an auth.conf file's TEXT; as apt does, unknown words are skipped, and each
    ``machine`` starts an entry. One without a login or password is an error, not a silent miss."""
    words = [w for line in text.splitlines() if not line.lstrip().startswith("#") for w in line.split()]
    fields: list[dict[str, str]] = []
    n = 0
    while n < len(words):
        key = words[n]
        if key not in _KEYWORDS or n + 1 == len(words):
            n += 1
            continue
        if key == "machine" or not fields:
            fields.append({})
        fields[-1].setdefault(key, words[n + 1])
        n += 2
    return MirrorLogins(tuple(_entry(entry, what) for entry in fields))


def _entry(fields: dict[str, str], what: str) -> Login:
    machine = fields.get("machine")
    if machine is None or "login" not in fields or "password" not in fields:
        problem = (f"the entry for {machine} lacks a login or password" if machine is not None
                   else "an entry has no machine")
        raise UsageError(f"{what}: {problem}",
                         hint="write `machine HOST[/PATH] login NAME password SECRET` (apt_auth.conf(5))")
    scheme, sep, rest = machine.partition("://")
    if not sep:
        scheme, rest = "", machine
    parts = urllib.parse.urlsplit(f"//{rest}")
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{what}: machine {machine}: not a port number") from None
    return Login(scheme=scheme.lower() or None, host=parts.hostname or "", port=port, path=parts.path,
                 login=fields["login"], password=fields["password"])


def read(files: Sequence[Path], *, apt_files: Sequence[Path] | None = None) -> MirrorLogins:
    """The logins of FILES (the user named them: each must be readable), then of apt's own files,
    of which those this user cannot read are skipped, as they are root's."""
    logins = MirrorLogins()
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"cannot read the auth file {path}: {getattr(e, 'strerror', None) or e}") from None
        logins += parse(text, what=str(path))
    for path in apt_auth_files() if apt_files is None else apt_files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        logins += parse(text, what=str(path))
    return logins


def apt_auth_files() -> list[Path]:
    """apt's auth.conf.d parts in name order, then auth.conf."""
    try:
        parts = sorted(p for p in APT_AUTH_PARTS.iterdir() if p.name.endswith(".conf"))
    except OSError:
        parts = []
    return [*parts, APT_AUTH_FILE]


def split_userinfo(url: str) -> tuple[str, MirrorLogins]:
    """URL without ``user:password@``, and the login it held, for exactly that scheme, host, port
    and path (a path of /debian does not reach /debian-security)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, MirrorLogins()
    plain = without_userinfo(url)
    login = Login(scheme=parts.scheme.lower(), host=parts.hostname or "", port=_port(parts),
                  path=parts.path.rstrip("/") + "/", login=urllib.parse.unquote(parts.username or ""),
                  password=urllib.parse.unquote(parts.password or ""))
    return plain, MirrorLogins((login,))


def without_userinfo(url: str) -> str:
    """URL with any ``user:password@`` removed: what may be written or shown."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def has_userinfo(url: str) -> bool:
    return "@" in urllib.parse.urlsplit(url).netloc


def _port(parts: urllib.parse.SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None
