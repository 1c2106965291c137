"""The lockfile: the exact package set of an image, as deterministic JSON.

Pure: building, serialising and parsing; the schema in specs/ is checked on
write and on read, so a hand-edited or truncated lockfile is refused early.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocistrap import schema
from ocistrap.errors import OcistrapError


class LockError(OcistrapError):
    """The lockfile is missing, unreadable or invalid."""


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    architecture: str
    filename: str
    size: int
    sha256: str
    stage: str
    source: str = ""


@dataclass(frozen=True)
class LockedRelease:
    path: str
    sha256: str
    date: str
    suite: str
    codename: str


@dataclass(frozen=True)
class LockedArch:
    release: LockedRelease
    packages: tuple[LockedPackage, ...]

    def stage(self, name: str) -> tuple[LockedPackage, ...]:
        return tuple(p for p in self.packages if p.stage == name)


@dataclass(frozen=True)
class Lockfile:
    mirror: str
    suite: str
    components: tuple[str, ...]
    variant: str
    include: tuple[str, ...]
    install_recommends: bool
    architectures: dict[str, LockedArch] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "lockfileVersion": 1,
            "mirror": self.mirror,
            "suite": self.suite,
            "components": list(self.components),
            "variant": self.variant,
            "include": list(self.include),
            "installRecommends": self.install_recommends,
            "architectures": {arch: _arch_json(a) for arch, a in sorted(self.architectures.items())},
        }

    def dumps(self) -> bytes:
        """Deterministic bytes: same package set, same file, same digest."""
        document = self.to_json()
        schema.validate(document, "lockfile", what="lockfile")
        return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.dumps()).hexdigest()


def _arch_json(arch: LockedArch) -> dict[str, Any]:
    packages = []
    for p in sorted(arch.packages, key=lambda p: (p.name, p.architecture)):
        entry = {"name": p.name, "version": p.version, "architecture": p.architecture,
                 "filename": p.filename, "size": p.size, "sha256": p.sha256, "stage": p.stage}
        if p.source:
            entry["source"] = p.source
        packages.append(entry)
    return {"release": vars(arch.release).copy(), "packages": packages}


def loads(data: bytes, *, what: str) -> Lockfile:
    """Parse and validate a lockfile's bytes; WHAT names it in errors."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LockError(f"{what} is not valid JSON: {e}", hint="regenerate it with `ocistrap lock`") from None
    try:
        schema.validate(document, "lockfile", what=what)
    except schema.SchemaError as e:
        raise LockError(str(e), hint="regenerate it with `ocistrap lock`") from None
    return Lockfile(
        mirror=document["mirror"],
        suite=document["suite"],
        components=tuple(document["components"]),
        variant=document["variant"],
        include=tuple(document["include"]),
        install_recommends=document["installRecommends"],
        architectures={
            arch: LockedArch(
                release=LockedRelease(**entry["release"]),
                packages=tuple(LockedPackage(**p) for p in entry["packages"]),
            )
            for arch, entry in document["architectures"].items()
        },
    )


def read(path: Path) -> Lockfile:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise LockError(f"cannot read lockfile {path}: {e.strerror}",
                        hint="create one with `ocistrap lock SUITE -o FILE`") from None
    return loads(data, what=f"lockfile {path}")


def write(lockfile: Lockfile, path: Path) -> None:
    """Write atomically: a reader never sees half a lockfile."""
    data = lockfile.dumps()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LockError(f"cannot write lockfile {path}: {e.strerror}") from None
