"""A fake host for the build mode's decision and for `ocistrap doctor` (buildmode.HostProbe,
doctor.Host): every fact a verdict depends on is a field."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ocistrap.rootfs import idmaps

ARM64_ENTRY = ("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n"
               "offset 0\nmagic 7f454c460201010000000000000000000200b700\n")
FULL = idmaps.IdMaps(uid=(idmaps.IdRange(0, 1000, 1), idmaps.IdRange(1, 100000, 65535)),
                      gid=(idmaps.IdRange(0, 1000, 1), idmaps.IdRange(1, 100000, 65535)))
HOST_MAP = "         0          0 4294967295\n"
# a container's root: every capability Docker gives it by default (CAP_SYS_ADMIN is not one)
CONTAINER_CAPS = sum(1 << bit for bit in (0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31))
MAPPERS = {"newuidmap": ("/usr/bin/newuidmap", None), "newgidmap": ("/usr/bin/newgidmap", None)}


@dataclass
class FakeHost:
    """alice (uid and gid 1000) with a full range, working mappers and user namespaces."""

    user: str = "alice"
    ids: tuple[int, int] = (1000, 1000)
    subuid: str = "alice:100000:65536\n"
    subgid: str = "alice:100000:65536\n"
    userns: str | None = None
    own_proc: str | None = None
    mappers: dict[str, tuple[str | None, str | None]] = field(default_factory=lambda: dict(MAPPERS))
    files: dict[str, str] = field(default_factory=lambda: {
        "/proc/sys/fs/binfmt_misc/status": "enabled\n",
        "/proc/sys/fs/binfmt_misc/qemu-aarch64": ARM64_ENTRY,
    })
    tools: dict[str, str] = field(default_factory=lambda: {"gpgv": "/usr/bin/gpgv"})
    keyring_readable: bool = True
    arch: str = "amd64"
    caps: int = 0
    maps: dict[str, str] = field(default_factory=lambda: {"uid": HOST_MAP, "gid": HOST_MAP})
    chrootless: str | None = None
    runs: bool | None = None

    def identity(self) -> tuple[str, int, int]:
        return self.user, *self.ids

    def userns_problem(self) -> str | None:
        return self.userns

    def own_proc_problem(self) -> str | None:
        return self.own_proc

    def subid_text(self, kind: Literal["uid", "gid"]) -> str:
        return self.subuid if kind == "uid" else self.subgid

    def mapper(self, name: str) -> tuple[str | None, str | None]:
        return self.mappers[name]

    def capabilities(self) -> int:
        return self.caps

    def id_map(self, kind: Literal["uid", "gid"]) -> str:
        return self.maps[kind]

    def which(self, name: str) -> str | None:
        return self.tools.get(name)

    def read_text(self, path: Path) -> str | None:
        return self.files.get(str(path))

    def readable(self, path: Path) -> bool:
        return self.keyring_readable

    def native_arch(self) -> str:
        return self.arch

    def runs_foreign(self, arch: str) -> bool | None:
        return self.runs

    def chrootless_problem(self) -> str | None:
        return self.chrootless
