"""Subordinate id ranges, the id maps built from them, and newuidmap/newgidmap that apply them."""

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ocistrap.errors import BuildError
from ocistrap.rootfs.syscalls import CAP_SETGID, CAP_SETUID

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")

# Inner ids 1..65535 come from the subordinate ranges; 0 is the caller.
SUBORDINATE_IDS = 65535
DEFAULT_SUBID_START = 100000
SYSTEM_PATH = "/usr/bin:/usr/sbin:/bin:/sbin"
MAPPER_PATH = SYSTEM_PATH
VFS_CAP_REVISION_MASK = 0xFF000000
VFS_CAP_REVISION_1 = 0x01000000


# ---- id maps (pure) ----

@dataclass(frozen=True)
class SubIdRange:
    """One ``name:start:count`` line of /etc/subuid or /etc/subgid."""

    start: int
    count: int

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True)
class IdRange:
    """One line of a uid_map/gid_map: COUNT ids from INNER map to ids from OUTER."""

    inner: int
    outer: int
    count: int


@dataclass(frozen=True)
class IdMaps:
    """The uid and gid maps of a sandbox."""

    uid: tuple[IdRange, ...]
    gid: tuple[IdRange, ...]

    @classmethod
    def single(cls, uid: int, gid: int) -> "IdMaps":
        """Only the caller, as root: what an unprivileged process may map by itself."""
        return cls(uid=(IdRange(0, uid, 1),), gid=(IdRange(0, gid, 1),))

    @property
    def is_single(self) -> bool:
        return len(self.uid) == 1 and len(self.gid) == 1 and self.uid[0].count == 1 == self.gid[0].count


def _subid_lines(text: str) -> Iterable[tuple[str, SubIdRange]]:
    """Well-formed ``owner:start:count`` lines; newuidmap ignores the others too."""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or not fields[1].isdigit() or not fields[2].isdigit():
            continue
        if int(fields[2]) > 0:
            yield fields[0], SubIdRange(int(fields[1]), int(fields[2]))


def parse_subid(text: str, *, user: str, uid: int) -> list[SubIdRange]:
    """USER's ranges in a subuid/subgid file, in file order (lines name USER or UID)."""
    return [r for owner, r in _subid_lines(text) if owner in (user, str(uid))]


def free_subid_start(text: str) -> int:
    """A start for a new range that overlaps no range of the file, to suggest to the user."""
    ends = [r.end for _, r in _subid_lines(text)]
    return max([DEFAULT_SUBID_START, *ends])


def add_range_advice(user: str, kind: Literal["uid", "gid"], start: int,
                     count: int = SUBORDINATE_IDS + 1) -> str:
    """The exact command (and line) that gives USER COUNT more subordinate ids."""
    return (f"run `sudo usermod --add-sub{kind}s {start}-{start + count - 1} {user}` "
            f"(or add the line `{user}:{start}:{count}` to /etc/sub{kind})")


def id_map(own_id: int, ranges: Sequence[SubIdRange], *, user: str,
           kind: Literal["uid", "gid"] = "uid", path: str | None = None,
           suggest_start: int = DEFAULT_SUBID_START) -> list[IdRange]:
    """Inner 0 -> OWN_ID, inner 1..65535 -> RANGES (read from PATH) concatenated in order.

    Fewer than 65535 subordinate ids is an error, never a smaller map: files of
    the packages would get the wrong owners.
    """
    path = path or f"/etc/sub{kind}"
    if not ranges:
        raise BuildError(f"{path} has no range for {user}; the sandbox needs "
                           f"{SUBORDINATE_IDS + 1} subordinate {kind}s",
                           hint=add_range_advice(user, kind, suggest_start))
    _check_disjoint(own_id, ranges, user=user, kind=kind, path=path)
    result = [IdRange(0, own_id, 1)]
    inner = 1
    for r in ranges:
        count = min(r.count, SUBORDINATE_IDS + 1 - inner)
        if count <= 0:
            break
        result.append(IdRange(inner, r.start, count))
        inner += count
    have = inner - 1
    if have < SUBORDINATE_IDS:
        raise BuildError(f"{path} gives {user} only {have} subordinate {kind}s; the sandbox "
                           f"needs {SUBORDINATE_IDS} (ids 1-{SUBORDINATE_IDS} of the image)",
                           hint=add_range_advice(user, kind, suggest_start))
    return result


def _check_disjoint(own_id: int, ranges: Sequence[SubIdRange], *, user: str, kind: str,
                    path: str) -> None:
    """The kernel rejects maps whose outer ids overlap; say which lines do."""
    spans = sorted([(own_id, own_id + 1, f"{user}'s own {kind} {own_id}")]
                   + [(r.start, r.end, f"{user}:{r.start}:{r.count}") for r in ranges])
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise BuildError(f"{path}: {second} overlaps {first}",
                               hint=f"fix or remove one of these ranges in {path}")


def inner_id(outer: int, ranges: Sequence[IdRange]) -> int | None:
    """The id inside the sandbox that host id OUTER shows as, or None if unmapped."""
    for r in ranges:
        if r.outer <= outer < r.outer + r.count:
            return r.inner + outer - r.outer
    return None


def inner_id_mapped(inner: int, map_text: str) -> bool:
    """Whether id INNER exists in the namespace whose /proc/PID/[ug]id_map is MAP_TEXT."""
    for line in map_text.splitlines():
        fields = line.split()
        if len(fields) == 3 and int(fields[0]) <= inner < int(fields[0]) + int(fields[2]):
            return True
    return False


def map_args(ranges: Sequence[IdRange]) -> list[str]:
    """The ``inner outer count ...`` arguments of newuidmap/newgidmap."""
    return [str(n) for r in ranges for n in (r.inner, r.outer, r.count)]


def _read_subid_file(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise BuildError(f"cannot read {path}: {e.strerror}") from e


def current_user() -> tuple[str, int, int]:
    """Name, uid and gid of the caller; the name is the uid if there is no passwd entry."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return name, uid, os.getgid()


def load_maps(*, subuid: Path = SUBUID, subgid: Path = SUBGID, user: str | None = None,
              uid: int | None = None, gid: int | None = None) -> IdMaps:
    """The caller's (or USER's) id maps from the subordinate id files."""
    me, my_uid, my_gid = current_user()
    user = me if user is None else user
    uid = my_uid if uid is None else uid
    gid = my_gid if gid is None else gid
    return _maps(_read_subid_file(subuid), _read_subid_file(subgid), user=user, uid=uid, gid=gid,
                 paths=(subuid, subgid))


def _maps(uid_text: str, gid_text: str, *, user: str, uid: int, gid: int,
          paths: tuple[Path, Path]) -> IdMaps:
    return IdMaps(uid=tuple(subid_map(uid_text, kind="uid", user=user, uid=uid, own_id=uid,
                                      path=str(paths[0]))),
                  gid=tuple(subid_map(gid_text, kind="gid", user=user, uid=uid, own_id=gid,
                                      path=str(paths[1]))))


def subid_map(text: str, *, kind: Literal["uid", "gid"], user: str, uid: int, own_id: int,
              path: str | None = None) -> list[IdRange]:
    """The map for USER from the text of a subuid/subgid file (raises with advice)."""
    return id_map(own_id, parse_subid(text, user=user, uid=uid), user=user, kind=kind,
                  path=path, suggest_start=free_subid_start(text))


# ---- host checks (pure verdicts + probes) ----

def file_caps(xattr: bytes | None) -> frozenset[int]:
    """Permitted capabilities of a ``security.capability`` xattr (vfs_cap_data)."""
    if not xattr or len(xattr) < 12:
        return frozenset()
    magic = int.from_bytes(xattr[0:4], "little")
    words = [int.from_bytes(xattr[4:8], "little")]
    if magic & VFS_CAP_REVISION_MASK != VFS_CAP_REVISION_1 and len(xattr) >= 20:
        words.append(int.from_bytes(xattr[12:16], "little"))
    permitted = sum(w << (32 * i) for i, w in enumerate(words))
    return frozenset(bit for bit in range(64) if permitted >> bit & 1)


OVERFLOW_ID = 65534
INITIAL_USERNS_MAP = "0 0 4294967295"


def mapper_verdict(name: str, path: str | None, *, mode: int = 0, owner: int = -1,
                   caps: frozenset[int] = frozenset(), nested: bool = False) -> str | None:
    """What is wrong with newuidmap/newgidmap at PATH, or None if it can map ids.

    NESTED: the caller is itself in a user namespace, where an owner the
    namespace does not map shows as OVERFLOW_ID.
    """
    if path is None:
        return (f"{name} is not installed: run `sudo apt install uidmap` "
                f"(the package is called shadow-utils or shadow on other distributions)")
    if nested and owner == OVERFLOW_ID:
        return (f"ocistrap runs inside a user namespace that does not map root (a rootless "
                f"container?), so {name} cannot map subordinate ids here: run it outside, or give "
                "the container a range of ids")
    needed = CAP_SETUID if name == "newuidmap" else CAP_SETGID
    if owner == 0 and mode & 0o4000:
        return None
    if needed in caps:
        return None
    cap = "cap_setuid" if needed == CAP_SETUID else "cap_setgid"
    return (f"{path} is neither setuid root nor has the {cap} file capability: "
            f"run `sudo chmod u+s {path}` or `sudo setcap {cap}+ep {path}` "
            f"(or reinstall: `sudo apt install --reinstall uidmap`)")


def find_mapper(name: str) -> tuple[str | None, str | None]:
    """(path, problem) of newuidmap or newgidmap on this host."""
    search = os.pathsep.join(filter(None, [os.environ.get("PATH"), MAPPER_PATH]))
    path = shutil.which(name, path=search)
    if path is None:
        return None, mapper_verdict(name, None)
    st = os.stat(path)
    try:
        caps = file_caps(os.getxattr(path, "security.capability"))
    except OSError:
        caps = frozenset()
    return path, mapper_verdict(name, path, mode=st.st_mode, owner=st.st_uid, caps=caps,
                                nested=in_nested_userns())


def in_nested_userns() -> bool:
    """Whether this process runs in a user namespace other than the host's."""
    try:
        return " ".join(Path("/proc/self/uid_map").read_text().split()) != INITIAL_USERNS_MAP
    except OSError:
        return False


def _mappers(find: Callable[[str], tuple[str | None, str | None]] = find_mapper) -> tuple[str, str]:
    """The paths of newuidmap and newgidmap, or BuildError saying what is wrong with one."""
    paths = []
    for name in ("newuidmap", "newgidmap"):
        path, problem = find(name)
        if problem or path is None:
            raise BuildError(problem or f"{name} not found")
        paths.append(path)
    return paths[0], paths[1]


class MapRefused(BuildError):
    """newuidmap or newgidmap would not write the maps."""


def writes_own_maps(maps: IdMaps, euid: int) -> bool:
    """Whether the caller (EUID) writes MAPS itself: only itself mapped, or as root, who may map
    any of its ids; else newuidmap and newgidmap do."""
    return maps.is_single or euid == 0


def _write_maps(pid: int, maps: IdMaps) -> None:
    if writes_own_maps(maps, os.geteuid()):
        _write_own_maps(pid, maps)
        return
    newuidmap, newgidmap = _mappers()
    for tool, ranges, kind in ((newuidmap, maps.uid, "uid"), (newgidmap, maps.gid, "gid")):
        result = subprocess.run([tool, str(pid), *map_args(ranges)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise MapRefused(f"{Path(tool).name} refused the {kind} map "
                               f"{' '.join(map_args(ranges))}: {result.stderr.strip()}",
                               hint=f"check the ranges for you in /etc/sub{kind}")


def map_lines(ranges: Sequence[IdRange]) -> str:
    """The text of a uid_map or gid_map: one ``inner outer count`` line a range, written at once."""
    return "".join(f"{r.inner} {r.outer} {r.count}\n" for r in ranges)


def _write_own_maps(pid: int, maps: IdMaps) -> None:
    """Map the caller alone, as any process may for its own child namespace (setgroups denied),
    or, as root, any ids of its own namespace (setgroups left allowed)."""
    proc = Path(f"/proc/{pid}")
    try:
        if maps.is_single:
            (proc / "setgroups").write_text("deny")
        (proc / "uid_map").write_text(map_lines(maps.uid))
        (proc / "gid_map").write_text(map_lines(maps.gid))
    except OSError as e:
        raise MapRefused(f"cannot write the sandbox's id maps {map_lines(maps.uid).strip()!r}: {e.strerror}") from e
