"""A content-addressed store of verified files (InRelease, indices, .debs).

Layout under the cache root:
  blobs/sha256/HEX   a file whose SHA256 is HEX; only ever created by rename
                     after verification, so a present blob is a verified blob
  partial/HEX        an interrupted download of HEX, resumed next time
  partial/.tmp-*     files being written, flocked by their writer; those of a
                     killed process are swept by the next one
  refs/NAME          the SHA256 of the last verified InRelease of a suite,
                     so that ``--offline`` can find it without a lockfile
  parsed/HEX.marshal a parsed Packages index, keyed by the index's SHA256
  derived/KIND/HEX   a file made from blob HEX (KIND "expanded": the .deb with its
                     data uncompressed, see ocistrap.expand), and HEX.tag beside it
  locks/HEX          an empty file whose flock marks partial/HEX as being written
  locks/in-use       flocked shared by every process using the cache, exclusively
                     by ``ocistrap cache prune``: nothing is pruned from under a build

Parsed indices and derived files are not named by their own hash, so their
name vouches for nothing: each carries an HMAC-SHA256 under a key that lives
outside the cache (``default_key_file``). A cache copied from elsewhere, a CI
cache restored from another job, or one someone else could write, is then
made again from its blobs instead of trusted.

Several processes may share one cache: every write goes to a unique temp file
and is renamed into place; identical content makes a concurrent rename harmless.
The one shared file, partial/HEX, is only touched under its lock.
"""

import fcntl
import hashlib
import hmac
import marshal
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ocistrap import log
from ocistrap.errors import OcistrapError


class CacheError(OcistrapError):
    """The cache cannot be read or written, or holds a damaged file."""


CHUNK = 1 << 20
KEY_SIZE = 32
TAG_FORMAT = "ocistrap-derived/1"
IN_USE = "in-use"


def default_root() -> Path:
    """``$XDG_CACHE_HOME/ocistrap``, as other desktop tools place caches."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ocistrap"


def default_key_file() -> Path:
    """``$XDG_STATE_HOME/ocistrap/cache.key``: beside the cache, never in it."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "ocistrap" / "cache.key"


def load_key(path: Path) -> bytes | None:
    """The key of PATH, made (32 random bytes, mode 0600) if there is none yet; None if it cannot be."""
    try:
        key = path.read_bytes()
        return key if len(key) == KEY_SIZE else None
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".key-")
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(KEY_SIZE))
        try:
            os.link(tmp, path)  # the first of two racing processes wins; the other reads its key
        finally:
            os.unlink(tmp)
        return load_key(path)
    except FileExistsError:
        return load_key(path)
    except OSError:
        return None


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and SHA256 of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class Cache:
    """The verified store; see the module docstring for its layout."""

    def __init__(self, root: Path, key_file: Path | None = None, *, exclusive: bool = False) -> None:
        """EXCLUSIVE: this process alone may use the cache (to prune it); raise if another does."""
        self.root = root
        try:
            for sub in ("blobs/sha256", "partial", "refs", "parsed", "locks", "derived"):
                (root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create cache directory {root}: {e.strerror}",
                             hint="choose another with --cache-dir") from e
        self.key_file = key_file or default_key_file()
        self._key: bytes | None = None
        self.used: set[str] | None = None
        """When a set, the SHA256 of every blob, parsed index and derived file asked for is added to it."""
        self.exclusive = exclusive
        self._in_use = self._hold(exclusive)
        try:
            sweep_orphans(root / "partial")
        except OSError:
            pass  # a read-only cache can still be read

    def _hold(self, exclusive: bool) -> BinaryIO | None:
        """Hold locks/in-use while this object lives (a read-only cache is not locked, only read)."""
        try:
            f = open(os.open(self.root / "locks" / IN_USE, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644), "rb")
        except OSError as e:
            if exclusive:
                raise CacheError(f"cannot lock the cache in {self.root}: {e.strerror}") from e
            return None
        try:
            fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            if exclusive:
                f.close()
                raise CacheError(f"the cache in {self.root} is in use by another ocistrap",
                                 hint="run this again once it has finished") from None
            fcntl.flock(f, fcntl.LOCK_SH)  # a prune is running: wait for it
        return f

    def _record(self, sha256: str) -> None:
        if self.used is not None:
            self.used.add(sha256)

    @property
    def key(self) -> bytes:
        """The HMAC key of parsed and derived files; without a key file, one for this process
        alone (what it writes is then made again next time, never trusted)."""
        if self._key is None:
            self._key = load_key(self.key_file)
            if self._key is None:
                log.get().info(f"cannot keep the cache's key in {self.key_file}: parsed indices and expanded "
                               f"packages are made afresh by every run (set XDG_STATE_HOME to a writable place)")
                self._key = os.urandom(KEY_SIZE)
        return self._key

    def blob_path(self, sha256: str) -> Path:
        return self.root / "blobs" / "sha256" / sha256

    def partial_path(self, sha256: str) -> Path:
        return self.root / "partial" / sha256

    def lookup(self, sha256: str, size: int) -> Path | None:
        """The blob's path if present with the right size (its name vouches for its hash)."""
        self._record(sha256)
        path = self.blob_path(sha256)
        try:
            if path.stat().st_size == size:
                return path
        except FileNotFoundError:
            return None
        return None

    def read(self, sha256: str) -> bytes | None:
        """A small blob's bytes, re-hashed on the way out; None if absent."""
        self._record(sha256)
        try:
            data = self.blob_path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            self.blob_path(sha256).unlink(missing_ok=True)
            raise CacheError(f"cache blob {sha256} was damaged on disk and has been removed",
                             hint="run the command again to download it afresh")
        return data

    def put_bytes(self, data: bytes, verify: Callable[[bytes], None]) -> Path:
        """Store DATA after VERIFY accepted it (VERIFY raises on mismatch)."""
        verify(data)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha256)
        if path.exists():
            return path
        with self._temp() as (tmp, f):
            f.write(data)
        self._commit(tmp, path)
        return path

    def commit_partial(self, sha256: str, verify: Callable[[Path], None]) -> Path:
        """Move a completed download into the store once VERIFY accepted its file."""
        partial = self.partial_path(sha256)
        verify(partial)
        path = self.blob_path(sha256)
        self._commit(partial, path)
        return path

    @contextmanager
    def claim(self, sha256: str) -> Iterator[None]:
        """Exclusive use of partial/SHA256: a second downloader waits, then finds the blob."""
        try:
            f = open(self.root / "locks" / sha256, "ab")
        except OSError as e:
            raise CacheError(f"cannot lock {sha256} in the cache: {e.strerror}") from e
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def set_ref(self, name: str, sha256: str) -> None:
        with self._temp() as (tmp, f):
            f.write(sha256.encode() + b"\n")
        os.replace(tmp, self.root / "refs" / _safe(name))

    def get_ref(self, name: str) -> str | None:
        try:
            return (self.root / "refs" / _safe(name)).read_text().strip()
        except FileNotFoundError:
            return None

    def load_parsed(self, sha256: str) -> Any | None:
        """The value stored for SHA256 if its HMAC is ours, else None; marshal never sees other bytes."""
        self._record(sha256)
        try:
            data = (self.root / "parsed" / f"{sha256}.marshal").read_bytes()
        except FileNotFoundError:
            return None
        body = memoryview(data)[KEY_SIZE:]
        if not hmac.compare_digest(data[:KEY_SIZE], self._parsed_mac(sha256, body)):
            return None
        try:
            return marshal.loads(body)
        except (EOFError, ValueError, TypeError):
            return None

    def store_parsed(self, sha256: str, value: Any) -> None:
        body = marshal.dumps(value)
        with self._temp() as (tmp, f):
            f.write(self._parsed_mac(sha256, body))
            f.write(body)
        os.replace(tmp, self.root / "parsed" / f"{sha256}.marshal")

    def _parsed_mac(self, sha256: str, body: bytes | memoryview) -> bytes:
        mac = hmac.new(self.key, f"parsed {sha256} ".encode(), hashlib.sha256)
        mac.update(body)
        return mac.digest()

    def derived_path(self, kind: str, source: str) -> Path:
        return self.root / "derived" / kind / source

    def derived(self, kind: str, source: str) -> Path | None:
        """The file derived as KIND from blob SOURCE if its tag is ours and its bytes still match
        it (re-hashed, as blobs are); a stale or foreign one is removed."""
        self._record(source)
        path = self.derived_path(kind, source)
        tag = path.with_name(f"{source}.tag")
        try:
            fields = tag.read_text().split()
            if len(fields) == 6 and fields[:3] == [TAG_FORMAT, kind, source]:
                _, _, _, size, sha256, mac = fields
                if hmac.compare_digest(bytes.fromhex(mac), self._derived_mac(kind, source, size, sha256)) and \
                        file_sha256(path) == (int(size), sha256):
                    return path
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, ValueError):
            pass
        for stale in (path, tag):
            stale.unlink(missing_ok=True)
        return None

    def derive(self, kind: str, source: str, make: Callable[[BinaryIO], object]) -> Path:
        """Write what MAKE writes into a file as the KIND derived from blob SOURCE, and tag it."""
        path = self.derived_path(kind, source)
        path.parent.mkdir(exist_ok=True)
        with self._temp() as (tmp, f):
            make(f)
        size, sha256 = file_sha256(tmp)
        with self._temp() as (tag, f):
            f.write(f"{TAG_FORMAT} {kind} {source} {size} {sha256} "
                    f"{self._derived_mac(kind, source, str(size), sha256).hex()}\n".encode())
        # the tag first: a process killed in between leaves a tag without its file (made again
        # next time), never a file without its tag
        self._commit(tag, path.with_name(f"{source}.tag"))
        self._commit(tmp, path)
        return path

    def entries(self) -> Iterator["Entry"]:
        """Everything stored, one entry per blob, derived file (with its tag), parsed index,
        partial download, ref and lock file."""
        yield from _files(BLOBS, self.root / "blobs" / "sha256")
        for kind in _subdirs(self.root / "derived"):
            by_source: dict[str, list[Path]] = {}
            for path in _listing(kind):
                by_source.setdefault(path.name.removesuffix(".tag"), []).append(path)
            yield from (Entry(DERIVED.get(kind.name, kind.name), source, tuple(paths))
                        for source, paths in sorted(by_source.items()))
        yield from _files(PARSED, self.root / "parsed", lambda name: name.removesuffix(".marshal"))
        yield from _files(PARTIAL, self.root / "partial", lambda name: "")
        yield from _files(REFS, self.root / "refs", lambda name: "")
        yield from (e for e in _files(LOCKS, self.root / "locks", lambda name: "") if e.paths[0].name != IN_USE)

    def prune(self, keep: Collection[str] | None = None, *, dry_run: bool = False) -> list["Entry"]:
        """Remove what no build needs from the cache, and return it.

        Without KEEP: what can be made again from the blobs without the network
        (expanded packages, parsed indices), partial downloads and lock files.
        With KEEP, the SHA256s a set of builds uses (``pipeline.needed_by``): every
        blob, derived file, parsed index and ref outside it too. Needs the cache
        to itself (``exclusive``), so that no running build loses a file.
        """
        if not self.exclusive:
            raise CacheError(f"cannot prune the cache in {self.root} without having it to itself")
        gone = [e for e in self.entries() if _prunable(e, keep)]
        if not dry_run:
            for entry in gone:
                for path in entry.paths:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as e:
                        raise CacheError(f"cannot remove {path}: {e.strerror}") from e
        return gone

    def _derived_mac(self, kind: str, source: str, size: str, sha256: str) -> bytes:
        return hmac.new(self.key, f"{TAG_FORMAT} {kind} {source} {size} {sha256}".encode(), hashlib.sha256).digest()

    def _temp(self) -> "_TempFile":
        return _TempFile(self.root / "partial")

    def _commit(self, tmp: Path, path: Path) -> None:
        try:
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as e:
            raise CacheError(f"cannot write {path}: {e.strerror}") from e


BLOBS, PARSED, PARTIAL, REFS, LOCKS = ("verified files", "parsed indices", "partial downloads", "refs", "locks")
DERIVED = {"expanded": "expanded packages"}
KEPT_WITHOUT_KEEP = (BLOBS, REFS)


@dataclass(frozen=True)
class Entry:
    """One thing stored: its KIND, the blob SHA256 it is or was made from ("" if none), its files."""

    kind: str
    sha256: str
    paths: tuple[Path, ...]

    @property
    def size(self) -> int:
        total = 0
        for path in self.paths:
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total


def _prunable(entry: Entry, keep: Collection[str] | None) -> bool:
    if entry.kind == REFS:
        return keep is not None and _ref_target(entry.paths[0]) not in keep
    if not entry.sha256:
        return True
    if keep is None:
        return entry.kind not in KEPT_WITHOUT_KEEP
    return entry.sha256 not in keep


def _ref_target(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _listing(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if not p.is_dir())
    except FileNotFoundError:
        return []


def _subdirs(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def _files(kind: str, directory: Path, key: Callable[[str], str] = lambda name: name) -> Iterator[Entry]:
    return (Entry(kind, key(path.name), (path,)) for path in _listing(directory))


TEMP_PREFIX = ".tmp-"
ORPHAN_AGE = 10.0
"""Seconds a temp file must sit unlocked and unchanged before a sweep takes it for orphaned."""


class _TempFile:
    """A uniquely named temp file, removed if the block fails; its writer holds a flock on it,
    so that a file left by a killed process can be told from one still being written."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __enter__(self) -> tuple[Path, BinaryIO]:
        fd, name = tempfile.mkstemp(dir=self.directory, prefix=TEMP_PREFIX)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")
        return self.path, self.file

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        try:
            self.file.close()  # flushes: a full disk may show only here
        except OSError as e:
            value = value if kind is not None else e
            kind = kind or type(e)
        if kind is not None:
            self.path.unlink(missing_ok=True)
            if isinstance(value, OSError):
                raise CacheError(f"cannot write to the cache in {self.directory}: {value.strerror}") from value


def sweep_orphans(directory: Path, now: float | None = None) -> list[str]:
    """Remove the temp files in DIRECTORY that killed processes left (unlocked, and unchanged for
    ORPHAN_AGE seconds); return their names."""
    now = time.time() if now is None else now
    removed = []
    for entry in os.scandir(directory):
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            with open(entry.path, "rb") as f:
                if now - os.fstat(f.fileno()).st_mtime < ORPHAN_AGE:
                    continue
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(entry.path)
                removed.append(entry.name)
        except (BlockingIOError, FileNotFoundError):
            continue
    return removed


def _safe(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]
