"""A content-addressed store of verified files (InRelease, indices, .debs).

Layout under the cache root:
  blobs/sha256/HEX   a file whose SHA256 is HEX; only ever created by rename
                     after verification, so a present blob is a verified blob
  partial/HEX        an interrupted download of HEX, resumed next time
  partial/.tmp-*     files being written, flocked by their writer from the start
                     (under locks/creating); those of a killed process are swept
                     by the next one
  refs/NAME          the SHA256 of the last verified InRelease of a suite,
                     so that ``--offline`` can find it without a lockfile
  parsed/HEX.marshal a parsed Packages index, keyed by the index's SHA256
  derived/KIND/HEX   a file made from blob HEX (KIND "expanded": the .deb with its
                     data uncompressed, see ocistrap.debian.expand), and HEX.tag beside it
  locks/HEX          an empty file whose flock marks partial/HEX as being written
  locks/in-use       flocked shared by every process using the cache, exclusively
                     by ``ocistrap cache prune``: nothing is pruned from under a build

Parsed indices and derived files are not named by their own hash, so their
name vouches for nothing: each carries an HMAC-SHA256 under a key that lives
outside the cache (``default_key_file``). A cache copied from elsewhere or a
CI cache restored from another job is then made again from its blobs instead
of trusted.

Several processes may share one cache: every write goes to a unique temp file
and is renamed into place; identical content makes a concurrent rename harmless.
The one shared file, partial/HEX, is only touched under its lock.

Only its owner may write a cache: a directory of the layout that is a symbolic
link, belongs to another user (root aside: in a user namespace, whatever uid root
shows as there) or that others may write is refused, and so is a way to it that
others may change (see ``check_directory``). Files
are opened without following symbolic links, and one that others may write is
not used. What is verified is used through the same open file (``open_verified``,
``open_derived``, ``link_private``), never reopened by name.
"""

import errno
import fcntl
import functools
import hashlib
import hmac
import marshal
import os
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ocistrap import log
from ocistrap.errors import ArchiveError

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
    """Size and SHA256 of a file (not followed if it is a symbolic link), read in bounded chunks."""
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
        return hash_open(f)


def hash_open(f: BinaryIO) -> tuple[int, str]:
    """Size and SHA256 of the open file F from its start; F is left at its start again, so that
    what reads it next reads the bytes hashed here."""
    f.seek(0)
    digest = hashlib.sha256()
    size = 0
    while chunk := f.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    f.seek(0)
    return size, digest.hexdigest()


class Untrusted(Exception):
    """A cache entry that is not a plain file only its owner (or root) may change."""


def trusted(st: os.stat_result) -> bool:
    """Whether ST is a regular file that no other user than its owner, this user or root, may write."""
    return stat.S_ISREG(st.st_mode) and st.st_uid in (os.geteuid(), host_root()) and not st.st_mode & 0o022


def open_trusted(path: Path) -> BinaryIO:
    """PATH open for reading; FileNotFoundError if absent, Untrusted if it is a symbolic link, a
    FIFO, a device or a file that others may write (its bytes could change after they were checked)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Untrusted(f"{path} is a symbolic link") from None
        raise
    if not trusted(os.fstat(fd)):
        os.close(fd)
        raise Untrusted(f"{path} is not a plain file only its owner may write")
    return open(fd, "rb")


def open_verified(path: Path, sha256: str, what: str) -> BinaryIO:
    """PATH open for reading once its bytes hash to SHA256; read it through this file only."""
    try:
        f = open_trusted(path)
    except (FileNotFoundError, Untrusted) as e:
        raise ArchiveError(f"{what}: the verified file {path} is gone or was replaced",
                         hint="run the command again to fetch it afresh") from e
    if hash_open(f)[1] != sha256:
        f.close()
        raise ArchiveError(f"{what}: {path} changed on disk after it was verified",
                         hint="run the command again to fetch it afresh")
    return f


def link_private(f: BinaryIO, source: Path, dest: Path) -> None:
    """Give the open file F, found at SOURCE, the new name DEST in a directory only this process
    writes: a hard link, kept only if it is F's very inode (SOURCE may lead elsewhere by now),
    else a copy read through F."""
    try:
        os.link(source, dest, follow_symlinks=False)
        st, linked = os.fstat(f.fileno()), os.lstat(dest)
        if (st.st_dev, st.st_ino) == (linked.st_dev, linked.st_ino):
            return
        dest.unlink()
    except OSError:
        pass  # another file system, or a kernel that refuses: copy
    try:
        f.seek(0)
        with open(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644),
                  "wb") as out:
            while chunk := f.read(CHUNK):
                out.write(chunk)
        f.seek(0)
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise ArchiveError(f"cannot write {dest}: {e.strerror}") from e


LAYOUT = ("blobs", "blobs/sha256", "partial", "refs", "parsed", "locks", "derived", "derived/expanded")


def directory_problem(st: os.stat_result, *, sticky_ok: bool = False) -> str | None:
    """Why a directory with ST cannot hold a cache (None if it can): anyone who may change it
    could swap a file between its check and its use. STICKY_OK: others may write it if the sticky
    bit stops them from renaming what is not theirs (as in /tmp, for a way to the cache)."""
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid not in (os.geteuid(), host_root()):
        return f"it belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o022 and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return WRITABLE
    return None


WRITABLE = "other users may write to it"


def root_seen_as(uid_map: str, overflow: int) -> int:
    """The uid the host's root shows as in a user namespace with UID_MAP (its
    /proc/self/uid_map): its inner id if mapped, else OVERFLOW, as the kernel shows any
    unmapped owner. In a namespace that maps only its user (a CI container, `unshare
    --map-current-user`), / and /home then belong to OVERFLOW."""
    for line in uid_map.splitlines():
        inner, outer, count = (int(field) for field in line.split())
        if outer <= 0 < outer + count:
            return inner - outer
    return overflow


@functools.cache
def host_root() -> int:
    """root_seen_as for this process (0 where /proc says nothing)."""
    try:
        uid_map = Path("/proc/self/uid_map").read_text()
        overflow = int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return 0
    return root_seen_as(uid_map, overflow)


def check_directory(root: Path) -> None:
    """Refuse ROOT as a cache, naming the directory, if another user could change what it holds:
    ROOT and each directory of its layout must be a real directory of this user (or root) that
    no one else may write; each directory on the way to it may be written by others only if it
    is sticky."""
    real = Path(os.path.realpath(root))
    checks = [(p, os.stat, True) for p in reversed(real.parents)]
    checks += [(real, os.stat, False)] + [(real / sub, os.lstat, False) for sub in LAYOUT]
    for path, look, sticky_ok in checks:
        try:
            problem = directory_problem(look(path), sticky_ok=sticky_ok)
        except FileNotFoundError:
            continue
        except OSError as e:
            problem = e.strerror
        if problem:
            fix = f"run `chmod go-w {path}` or " if problem == WRITABLE else ""
            raise ArchiveError(f"refusing the cache directory {path}: {problem}",
                             hint=f"{fix}choose another cache with --cache-dir")


class Cache:
    """The verified store; see the module docstring for its layout."""

    def __init__(self, root: Path, key_file: Path | None = None, *, exclusive: bool = False) -> None:
        """EXCLUSIVE: this process alone may use the cache (to prune it); raise if another does.
        ROOT is made absolute: its paths are handed to programs that run elsewhere (the host's
        dpkg in chrootless mode, the sandbox)."""
        root = self.root = root.absolute()
        try:
            root.mkdir(parents=True, exist_ok=True, mode=0o755)
            for sub in LAYOUT:
                _mkdir(root / sub)
        except OSError as e:
            raise ArchiveError(f"cannot create cache directory {root}: {e.strerror}",
                             hint="choose another with --cache-dir") from e
        check_directory(root)
        self.key_file = key_file or default_key_file()
        self._key: bytes | None = None
        self.used: set[str] | None = None
        """When a set, the SHA256 of every blob, parsed index and derived file asked for is added to it."""
        self.exclusive = exclusive
        self._in_use = self._hold(exclusive)
        try:
            sweep_orphans(root / "partial", root / "locks")
        except OSError:
            pass  # a read-only cache can still be read

    def _hold(self, exclusive: bool) -> BinaryIO | None:
        """Hold locks/in-use while this object lives (a read-only cache is not locked, only read)."""
        try:
            f = _open_lock(self.root / "locks" / IN_USE)
        except OSError as e:
            if exclusive:
                raise ArchiveError(f"cannot lock the cache in {self.root}: {e.strerror}") from e
            return None
        try:
            fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            if exclusive:
                f.close()
                raise ArchiveError(f"the cache in {self.root} is in use by another ocistrap",
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
        """The blob's path if present with the right size (its name vouches for its hash); anything
        but a plain file of ours under that name is removed."""
        self._record(sha256)
        path = self.blob_path(sha256)
        return path if _plain_size(path) == size else None

    def read(self, sha256: str) -> bytes | None:
        """A small blob's bytes, re-hashed on the way out; None if absent."""
        self._record(sha256)
        data = _read_entry(self.blob_path(sha256))
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            self.blob_path(sha256).unlink(missing_ok=True)
            raise ArchiveError(f"cache blob {sha256} was damaged on disk and has been removed",
                             hint="run the command again to download it afresh")
        return data

    def put_bytes(self, data: bytes, verify: Callable[[bytes], None]) -> Path:
        """Store DATA after VERIFY accepted it (VERIFY raises on mismatch)."""
        verify(data)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.blob_path(sha256)
        if _plain_size(path) == len(data):
            return path
        with self._temp() as tmp:
            tmp.file.write(data)
            tmp.commit(path)
        return path

    def partial_size(self, sha256: str) -> int:
        """How much of SHA256 an earlier download left in partial/SHA256 (0: none); anything but
        a plain file of ours there is removed, never written through."""
        return _plain_size(self.partial_path(sha256)) or 0

    def open_partial(self, sha256: str, *, append: bool) -> BinaryIO:
        """partial/SHA256 for writing, from its end (APPEND) or emptied; never through a link."""
        path = self.partial_path(sha256)
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        try:
            return open(os.open(path, flags, 0o600), "ab" if append else "wb")
        except OSError as e:
            raise ArchiveError(f"cannot write {path}: {e.strerror}") from e

    def commit_partial(self, sha256: str, verify: Callable[[BinaryIO], None]) -> Path:
        """Move a completed download into the store once VERIFY accepted its bytes, read through the
        file that is then renamed; a rejected one is removed."""
        partial = self.partial_path(sha256)
        try:
            f = open_trusted(partial)
        except (FileNotFoundError, Untrusted) as e:
            _remove(partial)
            raise ArchiveError(f"the download of {sha256} in {partial} is gone or was replaced",
                             hint="run the command again") from e
        path = self.blob_path(sha256)
        with f:
            try:
                verify(f)
            except BaseException:
                _remove(partial)
                raise
            _commit(f, partial, path)
        return path

    @contextmanager
    def claim(self, sha256: str) -> Iterator[None]:
        """Exclusive use of partial/SHA256: a second downloader waits, then finds the blob."""
        try:
            f = _open_lock(self.root / "locks" / sha256)
        except OSError as e:
            raise ArchiveError(f"cannot lock {sha256} in the cache: {e.strerror}") from e
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def set_ref(self, name: str, sha256: str) -> None:
        with self._temp() as tmp:
            tmp.file.write(sha256.encode() + b"\n")
            tmp.commit(self.root / "refs" / _safe(name))

    def get_ref(self, name: str) -> str | None:
        data = _read_entry(self.root / "refs" / _safe(name))
        try:
            return None if data is None else data.decode().strip()
        except UnicodeDecodeError:
            return None

    def load_parsed(self, sha256: str) -> Any | None:
        """The value stored for SHA256 if its HMAC is ours, else None; marshal never sees other bytes."""
        self._record(sha256)
        data = _read_entry(self.root / "parsed" / f"{sha256}.marshal")
        if data is None:
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
        with self._temp() as tmp:
            tmp.file.write(self._parsed_mac(sha256, body))
            tmp.file.write(body)
            tmp.commit(self.root / "parsed" / f"{sha256}.marshal")

    def _parsed_mac(self, sha256: str, body: bytes | memoryview) -> bytes:
        mac = hmac.new(self.key, f"parsed {sha256} ".encode(), hashlib.sha256)
        mac.update(body)
        return mac.digest()

    def derived_path(self, kind: str, source: str) -> Path:
        return self.root / "derived" / kind / source

    def open_derived(self, kind: str, source: str) -> BinaryIO | None:
        """The file derived as KIND from blob SOURCE, open at its start, if its tag is ours and the
        bytes of this open file still match it (re-hashed, as blobs are); a stale or foreign one
        is removed. Use it through this file: its name may since lead elsewhere."""
        self._record(source)
        path = self.derived_path(kind, source)
        tag = path.with_name(f"{source}.tag")
        try:
            fields = (_read_entry(tag) or b"").decode().split()
            if len(fields) == 6 and fields[:3] == [TAG_FORMAT, kind, source]:
                _, _, _, size, sha256, mac = fields
                if hmac.compare_digest(bytes.fromhex(mac), self._derived_mac(kind, source, size, sha256)):
                    f = open_trusted(path)
                    if hash_open(f) == (int(size), sha256):
                        return f
                    f.close()
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, ValueError, Untrusted):
            pass
        for stale in (path, tag):
            _remove(stale)
        return None

    def derive(self, kind: str, source: str, make: Callable[[BinaryIO], object]) -> BinaryIO:
        """Write what MAKE writes into a file as the KIND derived from blob SOURCE, tag it with the
        hash of the bytes this file holds, and return it open at its start."""
        path = self.derived_path(kind, source)
        self._ensure_dir(path.parent)
        with self._temp() as data:
            make(data.file)
            size, sha256 = hash_open(data.file)
            with self._temp() as tag:
                tag.file.write(f"{TAG_FORMAT} {kind} {source} {size} {sha256} "
                               f"{self._derived_mac(kind, source, str(size), sha256).hex()}\n".encode())
                # the tag first: a process killed in between leaves a tag without its file (made
                # again next time), never a file without its tag
                tag.commit(path.with_name(f"{source}.tag"))
            data.commit(path)
            return data.keep()

    def _ensure_dir(self, path: Path) -> None:
        try:
            _mkdir(path)
            problem = directory_problem(os.lstat(path))
        except OSError as e:
            raise ArchiveError(f"cannot create cache directory {path}: {e.strerror}") from e
        if problem:
            raise ArchiveError(f"refusing the cache directory {path}: {problem}")

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
        yield from (e for e in _files(LOCKS, self.root / "locks", lambda name: "")
                    if e.paths[0].name not in (IN_USE, CREATING))

    def prune(self, keep: Collection[str] | None = None, *, dry_run: bool = False) -> list["Entry"]:
        """Remove what no build needs from the cache, and return it.

        Without KEEP: what can be made again from the blobs without the network
        (expanded packages, parsed indices), partial downloads and lock files.
        With KEEP, the SHA256s a set of builds uses (``pipeline.needed_by``): every
        blob, derived file, parsed index and ref outside it too. Needs the cache
        to itself (``exclusive``), so that no running build loses a file.
        """
        if not self.exclusive:
            raise ArchiveError(f"cannot prune the cache in {self.root} without having it to itself")
        gone = [e for e in self.entries() if _prunable(e, keep)]
        if not dry_run:
            for entry in gone:
                for path in entry.paths:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as e:
                        raise ArchiveError(f"cannot remove {path}: {e.strerror}") from e
        return gone

    def _derived_mac(self, kind: str, source: str, size: str, sha256: str) -> bytes:
        return hmac.new(self.key, f"{TAG_FORMAT} {kind} {source} {size} {sha256}".encode(), hashlib.sha256).digest()

    def _temp(self) -> "_TempFile":
        return _TempFile(self.root / "partial", self.root / "locks")


def _commit(f: BinaryIO, tmp: Path, path: Path) -> None:
    """Make the file F, written (or checked) under the name TMP, readable and name it PATH."""
    try:
        f.flush()
        os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise ArchiveError(f"cannot write {path}: {e.strerror}") from e


def _mkdir(path: Path) -> None:
    """Make the directory PATH unless something is there already (checked apart)."""
    try:
        path.mkdir(mode=0o755)
    except FileExistsError:
        pass


def _plain_size(path: Path) -> int | None:
    """The size of the plain file of ours at PATH; None if there is none (anything else there,
    a symbolic link say, is removed: no cache entry is ever one)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if trusted(st):
        return st.st_size
    _remove(path)
    return None


def _remove(path: Path) -> None:
    """Remove the entry PATH (a link itself, not what it leads to), if this user may."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _read_entry(path: Path) -> bytes | None:
    """The bytes of the cache file PATH; None if it is absent, or not a plain file of ours
    (then removed): a link to /dev/zero or a FIFO is never read."""
    try:
        with open_trusted(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except Untrusted:
        _remove(path)
        return None


def _open_lock(path: Path) -> BinaryIO:
    """The lock file PATH, made if need be; a symbolic link there is removed, not followed."""
    flags = os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return open(os.open(path, flags, 0o644), "rb")
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
    path.unlink()
    return open(os.open(path, flags, 0o644), "rb")


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
                total += path.lstat().st_size
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
        return sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())
    except FileNotFoundError:
        return []


def _files(kind: str, directory: Path, key: Callable[[str], str] = lambda name: name) -> Iterator[Entry]:
    return (Entry(kind, key(path.name), (path,)) for path in _listing(directory))


TEMP_PREFIX = ".tmp-"
CREATING = "creating"
"""The lock file (in locks/) that writers hold shared while they make and flock a temp file, and a
sweep holds exclusively: so no temp file is ever unlocked but one whose writer is gone."""


@contextmanager
def _creating(locks: Path, operation: int) -> Iterator[None]:
    with _open_lock(locks / CREATING) as f:
        fcntl.flock(f, operation)
        yield


class _TempFile:
    """A uniquely named temp file in DIRECTORY, open for writing and reading, removed on the way
    out unless ``commit`` named it; its writer holds a flock on it from the moment it exists (see
    CREATING), so that a file left by a killed process can be told from one still being written."""

    def __init__(self, directory: Path, locks: Path) -> None:
        self.directory = directory
        self.locks = locks
        self.committed = False
        self.kept = False

    def __enter__(self) -> "_TempFile":
        try:
            with _creating(self.locks, fcntl.LOCK_SH):
                fd, name = tempfile.mkstemp(dir=self.directory, prefix=TEMP_PREFIX)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            raise ArchiveError(f"cannot write to the cache in {self.directory}: {e.strerror}") from e
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "w+b")
        return self

    def commit(self, path: Path) -> None:
        """Name the file PATH, with all that was written flushed."""
        _commit(self.file, self.path, path)
        self.committed = True

    def keep(self) -> BinaryIO:
        """The file, open at its start, for the caller to close."""
        self.file.seek(0)
        self.kept = True
        return self.file

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        failure = value if kind is not None else None
        if not self.kept or failure is not None:
            try:
                self.file.close()
            except OSError as e:
                failure = failure or e
        if not self.committed or failure is not None:
            self.path.unlink(missing_ok=True)
        if isinstance(failure, OSError):
            raise ArchiveError(f"cannot write to the cache in {self.directory}: {failure.strerror}") from failure


def sweep_orphans(directory: Path, locks: Path) -> list[str]:
    """Remove the temp files in DIRECTORY that killed processes left, however recently (unlocked:
    a writer flocks its file before a sweep can see it); return their names."""
    removed = []
    with _creating(locks, fcntl.LOCK_EX):
        for entry in os.scandir(directory):
            if entry.name.startswith(TEMP_PREFIX) and _orphan(entry.path):
                removed.append(entry.name)
    return removed


def _orphan(path: str) -> bool:
    """Remove PATH if no writer holds it (a link there is removed, never followed); whether it was."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno != errno.ELOOP:
            return False
        os.unlink(path)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.unlink(path)
        return True
    except (BlockingIOError, FileNotFoundError):
        return False
    finally:
        os.close(fd)


def _safe(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:32]
