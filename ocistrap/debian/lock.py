"""The lockfile: the exact package set of an image, as deterministic JSON.

Pure: building, serialising and parsing; the schema in specs/ is checked on
write and on read, so a hand-edited or truncated lockfile is refused early.
"""

import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocistrap import schema
from ocistrap.debian import mirrorauth
from ocistrap.errors import ArchiveError


@dataclass(frozen=True)
class LockedArchive:
    """One signed suite on one mirror (e.g. bookworm-security on .../debian-security)."""

    mirror: str
    suite: str

    def url(self, path: str) -> str:
        return f"{self.mirror.rstrip('/')}/{path}"


@dataclass(frozen=True)
class LockedLayer:
    """A named group of packages installed as its own diff layer."""

    name: str
    include: tuple[str, ...]


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
    auto: bool = False
    archive: int = 0
    layer: int = 0


@dataclass(frozen=True)
class LockedRelease:
    path: str
    sha256: str
    date: str
    suite: str
    codename: str
    keys: tuple[str, ...] = ()
    """Primary-key fingerprints of the OpenPGP keys whose signatures verified it (absent in older locks)."""

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "date": self.date,
                                    "suite": self.suite, "codename": self.codename}
        if self.keys:
            document["keys"] = list(self.keys)
        return document


@dataclass(frozen=True)
class EmbeddedKeyring:
    """A keyring the lock was made with, carried inside it (``lock --embed-keyring``).

    Informative by default: a build trusts it only when told to
    (``--trust-lock-keyring``), since whoever can edit a lock can edit this too.
    """

    name: str
    data: bytes

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": hashlib.sha256(self.data).hexdigest(),
                "data": base64.b64encode(self.data).decode()}

    @classmethod
    def from_json(cls, document: dict[str, Any], *, what: str) -> "EmbeddedKeyring":
        data = base64.b64decode(document["data"])
        if hashlib.sha256(data).hexdigest() != document["sha256"]:
            raise ArchiveError(f"{what}: the embedded keyring {document['name']} does not match its sha256",
                            hint="regenerate it with `ocistrap lock --embed-keyring`")
        return cls(name=document["name"], data=data)


@dataclass(frozen=True)
class LockedArch:
    releases: tuple[LockedRelease, ...]
    packages: tuple[LockedPackage, ...]

    def stage(self, name: str) -> tuple[LockedPackage, ...]:
        return tuple(p for p in self.packages if p.stage == name)

    def install_order(self) -> tuple[LockedPackage, ...]:
        """The order in which the sandbox uses the packages: the essential set, then the rest."""
        return self.stage("essential") + self.stage("rest")


@dataclass(frozen=True)
class Lockfile:
    mirror: str
    suite: str
    components: tuple[str, ...]
    variant: str
    include: tuple[str, ...]
    install_recommends: bool
    archives: tuple[LockedArchive, ...] = ()
    architectures: dict[str, LockedArch] = field(default_factory=dict)
    layers: tuple[LockedLayer, ...] = ()
    slim: bool = False
    keyrings: tuple[EmbeddedKeyring, ...] = ()

    def main_releases(self) -> list[LockedRelease]:
        """The signed Release of the main suite, as each architecture locked it."""
        return [entry.releases[0] for entry in self.architectures.values() if entry.releases]

    def suite_names(self) -> tuple[str, ...]:
        """The names the suite goes by: as locked, and as its signed Release says (suite, codename)."""
        return (self.suite, *(name for r in self.main_releases() for name in (r.suite, r.codename)))

    @property
    def codename(self) -> str:
        """The release's codename as its signed Release gives it (the suite as locked, if none does)."""
        return next((r.codename for r in self.main_releases() if r.codename), self.suite)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "lockfileVersion": 1,
            "mirror": self.mirror,
            "suite": self.suite,
            "components": list(self.components),
            "variant": self.variant,
            "include": list(self.include),
            "installRecommends": self.install_recommends,
            "archives": [vars(a).copy() for a in self.archives],
            "layers": [{"name": layer.name, "include": list(layer.include)} for layer in self.layers],
            "architectures": {arch: _arch_json(a) for arch, a in sorted(self.architectures.items())},
        }
        if self.slim:
            document["slim"] = True
        if self.keyrings:
            document["keyrings"] = [k.to_json() for k in self.keyrings]
        return document

    def dumps(self) -> bytes:
        """Deterministic bytes: same package set, same file, same digest."""
        document = self.to_json()
        schema.validate(document, "lockfile", what="lockfile")
        _refuse_userinfo([self.mirror, *(a.mirror for a in self.archives)], "the lockfile")
        return (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.dumps()).hexdigest()

    def package_url(self, package: LockedPackage) -> str:
        return self.archives[package.archive].url(package.filename)


def _arch_json(arch: LockedArch) -> dict[str, Any]:
    packages = []
    for p in sorted(arch.packages, key=lambda p: (p.name, p.architecture)):
        entry: dict[str, Any] = {"name": p.name, "version": p.version, "architecture": p.architecture,
                                 "filename": p.filename, "size": p.size, "sha256": p.sha256, "stage": p.stage}
        optional = {"source": p.source, "auto": p.auto, "archive": p.archive, "layer": p.layer}
        entry.update({k: v for k, v in optional.items() if v})
        packages.append(entry)
    return {"releases": [r.to_json() for r in arch.releases], "packages": packages}


def loads(data: bytes, *, what: str) -> Lockfile:
    """Parse and validate a lockfile's bytes; WHAT names it in errors."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArchiveError(f"{what} is not valid JSON: {e}", hint="regenerate it with `ocistrap lock`") from None
    try:
        schema.validate(document, "lockfile", what=what)
    except schema.SchemaError as e:
        raise ArchiveError(str(e), hint="regenerate it with `ocistrap lock`") from None
    archives = tuple(LockedArchive(**a) for a in document["archives"])
    _refuse_userinfo([document["mirror"], *(a.mirror for a in archives)], what)
    architectures = {}
    for arch, entry in document["architectures"].items():
        locked = LockedArch(releases=tuple(LockedRelease(**{**r, "keys": tuple(r.get("keys", ()))})
                                           for r in entry["releases"]),
                            packages=tuple(LockedPackage(**p) for p in entry["packages"]))
        layers = document.get("layers", [])
        if (len(locked.releases) != len(archives) or any(p.archive >= len(archives) for p in locked.packages)
                or any(p.layer > len(layers) for p in locked.packages)):
            raise ArchiveError(f"{what}: {arch} does not match the archives list",
                            hint="regenerate it with `ocistrap lock`")
        architectures[arch] = locked
    return Lockfile(
        mirror=document["mirror"],
        suite=document["suite"],
        components=tuple(document["components"]),
        variant=document["variant"],
        include=tuple(document["include"]),
        install_recommends=document["installRecommends"],
        archives=archives,
        architectures=architectures,
        layers=tuple(LockedLayer(name=layer["name"], include=tuple(layer["include"]))
                     for layer in document.get("layers", [])),
        slim=document.get("slim", False),
        keyrings=tuple(EmbeddedKeyring.from_json(k, what=what) for k in document.get("keyrings", [])),
    )


def _refuse_userinfo(mirrors: list[str], what: str) -> None:
    """A login in a mirror URL would be copied into the image (annotations, SBOM, apt sources)."""
    for url in mirrors:
        if mirrorauth.has_userinfo(url):
            raise ArchiveError(f"{what} names the mirror {mirrorauth.without_userinfo(url)} with a user name or "
                            f"password in its URL; refusing to copy them into an image",
                            hint="put the login in an auth file (--auth-file, /etc/apt/auth.conf) and lock again")


def read(path: Path) -> Lockfile:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ArchiveError(f"cannot read lockfile {path}: {e.strerror}",
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
        raise ArchiveError(f"cannot write lockfile {path}: {e.strerror}") from None


def embed_keyrings(lockfile: Lockfile, keyrings: Sequence[Path]) -> Lockfile:
    """LOCKFILE carrying the files of KEYRINGS, so that a rebuild years later holds the keys it trusted."""
    embedded = []
    for number, path in enumerate(keyrings):
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ArchiveError(f"cannot read keyring {path} to embed it: {e.strerror}") from None
        name = path.name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", path.name) else f"keyring-{number}.gpg"
        embedded.append(EmbeddedKeyring(name=name, data=data))
    return dataclasses.replace(lockfile, keyrings=tuple(embedded))


def write_keyrings(lockfile: Lockfile, directory: Path, *, what: str) -> tuple[Path, ...]:
    """Write the keyrings embedded in LOCKFILE into DIRECTORY, for a build told to trust them."""
    if not lockfile.keyrings:
        raise ArchiveError(f"{what} carries no keyring", hint="make it with `ocistrap lock --embed-keyring`, "
                        "or drop --trust-lock-keyring and pass --keyring FILE")
    paths = []
    for number, keyring in enumerate(lockfile.keyrings):
        path = directory / f"{number}-{keyring.name}"
        path.write_bytes(keyring.data)
        paths.append(path)
    return tuple(paths)
