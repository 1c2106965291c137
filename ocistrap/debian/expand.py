"""Expanded packages: a verified .deb rewritten with its data.tar uncompressed, kept in the cache.

Every build unpacks the essential set itself and then has dpkg install every
package: decompressing each .deb's data.tar (xz, mostly) twice over cost about
2 CPU-seconds per bookworm minbase build, on the critical path. An expanded
.deb is the same ar archive (debian-binary and control.tar.* copied byte for
byte) with a plain ``data.tar`` member, which dpkg installs alike and which the
unpacker reads straight from the page cache. It is made once per .deb, on the
host, from the verified download, by dpkg-deb, and kept in the cache under an
HMAC that binds it to that download (``cache.Cache.derive``); a build checks the
HMAC and re-hashes the expansion as it re-hashes every blob it uses.

Each is read through the file that was checked: the .deb is hashed and then read
by dpkg-deb through the same descriptor (``/proc/self/fd/N``), the expansion is
hashed through the one whose inode the build then links into its own scratch
directory.

The ar format is the one dpkg-deb writes: the global header ``!<arch>\\n``, then
members of a 60-byte header (name 16, mtime 12, uid 6, gid 6, mode 8, size 10,
"`\\n") followed by the data, padded to an even length.
"""

import errno
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ocistrap.debian.cache import Cache, link_private, open_verified
from ocistrap.errors import ArchiveError

MAGIC = b"!<arch>\n"
HEADER = 60
SIZE = slice(48, 58)
END = b"`\n"
DATA = "data.tar"


@dataclass(frozen=True)
class Member:
    """One ar member: its name, where its header starts, and its data's size."""

    name: str
    header: int
    size: int

    @property
    def data(self) -> int:
        return self.header + HEADER


def members(deb: BinaryIO, what: str) -> Iterator[Member]:
    """The members of the ar archive DEB (positioned at its start), checked as dpkg-deb checks them."""
    if deb.read(len(MAGIC)) != MAGIC:
        raise ArchiveError(f"{what} is not a .deb (an ar archive)")
    offset = len(MAGIC)
    while header := deb.read(HEADER):
        size_field = header[SIZE].strip()
        if len(header) < HEADER or header[58:] != END or not size_field.isdigit():
            raise ArchiveError(f"{what} has a damaged ar member header at byte {offset}")
        name = header[:16].decode("ascii", "replace").rstrip().removesuffix("/")
        member = Member(name, offset, int(size_field))
        yield member
        offset = member.data + member.size + member.size % 2
        deb.seek(offset)


def data_member(deb: BinaryIO, what: str) -> Member:
    """DEB's data.tar.* member, after debian-binary and control.tar.*, as dpkg requires."""
    found = list(members(deb, what))
    names = [m.name for m in found]
    if len(found) < 3 or names[0] != "debian-binary" or not names[1].startswith("control.tar"):
        raise ArchiveError(f"{what} does not start with debian-binary and control.tar ({', '.join(names)})")
    data = [m for m in found[2:] if m.name.startswith(DATA)]
    if len(data) != 1:
        raise ArchiveError(f"{what} has {len(data)} data.tar members, not one")
    return data[0]


def plain_data(path: Path, what: str) -> Member:
    """The data.tar member of an expanded .deb; refuses a compressed one (expanding was skipped)."""
    with open(path, "rb") as deb:
        member = data_member(deb, what)
    if member.name != DATA:
        raise ArchiveError(f"{what} is not expanded: its data member is {member.name}")
    return member


def expand(deb: BinaryIO, out: BinaryIO, what: str, *, nice: int = 0) -> int:
    """Write the .deb open as DEB to OUT (a file at its start) with data.tar uncompressed; return
    OUT's size.

    dpkg-deb decompresses, straight into OUT: the data is by definition what dpkg
    reads from DEB, and the decompressor's memory (up to 64 MiB for xz -9) is its own.
    It reads the very file DEB (through /proc/self/fd), not whatever its name leads to now.
    NICE lowers its priority, for work that must not slow down what waits on the CPU.
    """
    deb.seek(0)
    data = data_member(deb, what)
    template = _read_at(deb, data.header, HEADER)
    deb.seek(0)
    _copy(deb, out, data.header, what)
    out.write(b"\0" * HEADER)
    out.flush()
    start = out.tell()
    niced = ["nice", "-n", str(nice)] if nice else []
    done = subprocess.run([*niced, "dpkg-deb", "--fsys-tarfile", f"/proc/self/fd/{deb.fileno()}"], stdout=out,
                          stderr=subprocess.PIPE, pass_fds=(deb.fileno(),), env={**os.environ, "LC_ALL": "C"})
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        _raise_if_full(reason)
        raise ArchiveError(f"{what}: dpkg-deb cannot read its data: {reason[-1] if reason else done.returncode}")
    end = out.seek(0, os.SEEK_END)
    size = end - start
    if size % 2:
        end += out.write(b"\n")
    out.seek(start - HEADER)
    out.write(_header(DATA, size, template=template))
    out.seek(end)
    return end


def _raise_if_full(messages: list[str]) -> None:
    """A full disk where dpkg-deb writes is the cache's fault, not the package's: say so as the
    OSError it was (dpkg-deb's messages are in the C locale)."""
    for code in (errno.ENOSPC, errno.EDQUOT):
        if any(os.strerror(code) in line for line in messages):
            raise OSError(code, os.strerror(code))


def _header(name: str, size: int, *, template: bytes) -> bytes:
    """A member header for NAME and SIZE, keeping TEMPLATE's mtime, owner and mode."""
    return name.encode().ljust(16) + template[16:SIZE.start] + str(size).encode().ljust(10) + END


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    return f.read(size)


def _copy(source: BinaryIO, out: BinaryIO, size: int, what: str) -> None:
    data = source.read(size)
    if len(data) != size:
        raise ArchiveError(f"{what} is cut short")
    out.write(data)


class Bounded:
    """A reader of the SIZE bytes of STREAM from where it stands, then end of file; a STREAM
    that ends sooner is an EOFError."""

    def __init__(self, stream: BinaryIO, size: int) -> None:
        self.stream = stream
        self.left = size

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        if not want:
            return b""
        data = self.stream.read(want)
        if not data:
            raise EOFError(f"the file ended {self.left} bytes before the end of its member")
        self.left -= len(data)
        return data


KIND = "expanded"


@dataclass(frozen=True)
class Source:
    """A verified .deb in the cache: its blob's SHA256, its path, a name for messages, and how
    much lower than ours its expanding runs (expand's NICE)."""

    sha256: str
    path: Path
    what: str
    nice: int = 0


def expanded(source: Source, cache: Cache) -> BinaryIO:
    """The cache's expansion of SOURCE, open and verified, made now if it has none (or a damaged
    one) from SOURCE's file once that hashed to its SHA256. Read it through this file only."""
    if (f := cache.open_derived(KIND, source.sha256)) is not None:
        return f
    with open_verified(source.path, source.sha256, source.what) as deb:
        return cache.derive(KIND, source.sha256, lambda out: expand(deb, out, source.what, nice=source.nice))


class Pending:
    """Expansions of SOURCES being made in the background, in their order, so that the sandbox
    can start on the first packages while later ones are still decompressing. With INTO, a
    directory only this build writes, each is given a name there (``cache.link_private``): the
    very file that was verified, which no one who can write the cache can swap."""

    def __init__(self, sources: Sequence[Source], cache: Cache, workers: int | None = None,
                 into: Path | None = None) -> None:
        self.into = into
        self.paths = [into / s.sha256 if into else cache.derived_path(KIND, s.sha256) for s in sources]
        self._pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1,
                                        thread_name_prefix="expand")
        self.started = time.monotonic()
        self.finished = self.started
        self._futures = [self._pool.submit(self._one, s, path, cache) for s, path in zip(sources, self.paths)]

    def _one(self, source: Source, path: Path, cache: Cache) -> Path:
        with expanded(source, cache) as f:
            if self.into:
                link_private(f, cache.derived_path(KIND, source.sha256), path)
        self.finished = max(self.finished, time.monotonic())
        return path

    def ready(self) -> Iterator[int]:
        """Yield 1, 2, ... as the first 1, 2, ... expansions are made; raise the first failure."""
        for count, future in enumerate(self._futures, 1):
            future.result()
            yield count

    def seconds(self) -> float:
        """From the start until the last expansion was made (or found made)."""
        return self.finished - self.started

    def wait(self) -> list[Path]:
        """Every expansion's path, once all are made."""
        for _ in self.ready():
            pass
        return self.paths

    def close(self) -> None:
        """Stop: expansions not yet started are dropped, running ones finish."""
        self._pool.shutdown(wait=True, cancel_futures=True)
