"""One table of every setting: its command-line flag, spec-file key and schema, default and help."""

import argparse
import dataclasses
import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ocistrap.debian.lock import LockedLayer
from ocistrap.debian.mirror import DEFAULT_KEYRING, DEFAULT_MIRROR
from ocistrap.debian.resolve import VARIANTS
from ocistrap.debian.snapshot import DEFAULT_SNAPSHOT_URL, parse_when
from ocistrap.oci import image, sbom
from ocistrap.rootfs import buildmode
from ocistrap.transports import BARE_TRANSPORT, BadReference, Reference, parse_reference

SPEC_COMMANDS = ("lock", "build")
_RESOLVE = SPEC_COMMANDS
_BUILD = ("build",)
_SIGNING = ("build", "push", "index")
_REGISTRY_COMMANDS = ("build", "push", "login", "verify", "sbom", "index", "fetch", "bundle")
_REBUILD = ("verify",)
_ARCHIVE_COMMANDS = (*_RESOLVE, "fetch", "bundle", *_REBUILD)
_LAYER_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"


# ---- values as typed on the command line ----

def csv_list(value: str) -> list[str]:
    """``a,b, c`` → ``["a", "b", "c"]``."""
    return [v.strip() for v in value.split(",") if v.strip()]


def boolean(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def json_or_words(value: str) -> tuple[str, ...]:
    """A JSON list of strings, or words split as a shell would."""
    if value.lstrip().startswith("["):
        try:
            words = json.loads(value)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not a JSON list: {e}") from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise argparse.ArgumentTypeError("expected a JSON list of strings")
        return tuple(words)
    return tuple(shlex.split(value))


def layer(value: str) -> LockedLayer:
    """``NAME=PKG[,PKG...]``."""
    name, sep, packages = value.partition("=")
    if not sep or not re.fullmatch(_LAYER_NAME, name) or not csv_list(packages):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=PKG[,PKG...]")
    return LockedLayer(name=name, include=tuple(csv_list(packages)))


def snapshot_when(value: str) -> str:
    """``auto``, ``off`` or a snapshot timestamp."""
    try:
        return parse_when(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def pair(value: str) -> tuple[str, str]:
    """``KEY=VALUE``; the value may itself hold ``=``."""
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    return key, val


def registry_reference(text: str) -> Reference:
    """A registry reference (``docker://`` optional), in the grammar of every other reference."""
    ref = parse_reference(text)
    if ref.transport != BARE_TRANSPORT:
        raise BadReference(f"{text!r} is not a registry reference",
                           hint="e.g. registry.example/debian:bookworm; -o takes the other outputs")
    return ref


# ---- kinds of settings ----

def _same(value: Any, *_: Any) -> Any:
    return value


def _replace(_file_value: Any, flag_value: Any) -> Any:
    return flag_value


def _under(base: Path, text: str) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _output_under(base: Path, text: str) -> Reference:
    ref = parse_reference(text)
    return ref if ref.path is None else dataclasses.replace(ref, path=_under(base, str(ref.path)))


def _frozen_table(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


_STRING = {"type": "string", "minLength": 1}


def _array(items: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": dict(items)}


@dataclass(frozen=True)
class Kind:
    """How one type of setting is written in a spec file and on the command line, and held."""

    schema: Mapping[str, Any]
    flag: Mapping[str, Any] = field(default_factory=dict)
    from_flag: Callable[[Any], Any] = _same
    from_file: Callable[[Any, Path], Any] = _same
    merge: Callable[[Any, Any], Any] = _replace
    flag_note: str = ""


TEXT = Kind(_STRING)
PATH = Kind(_STRING, {"type": Path}, from_file=lambda v, base: _under(base, v))
PATHS = Kind(_array(_STRING), {"action": "append", "type": Path}, from_flag=tuple,
             from_file=lambda v, base: tuple(_under(base, p) for p in v), flag_note="repeatable")
NAMES = Kind({**_array(_STRING), "minItems": 1}, {"type": csv_list}, from_flag=tuple,
             from_file=lambda v, _: tuple(v), flag_note="comma-separated")
NAME_GROUPS = Kind(_array(_STRING), {"action": "append", "type": csv_list},
                   from_flag=lambda groups: tuple(n for group in groups for n in group),
                   from_file=lambda v, _: tuple(v), flag_note="comma-separated, repeatable")
SWITCH = Kind({"type": "boolean"}, {"action": "store_true"})
BOOLEAN = Kind({"type": "boolean"}, {"type": boolean, "metavar": "true|false"})
WORDS = Kind(_array({"type": "string"}), {"type": json_or_words}, from_file=lambda v, _: tuple(v),
             flag_note='a JSON list or shell words, e.g. \'["bash", "-l"]\' or "bash -l"')
TABLE = Kind({"type": "object", "additionalProperties": {"type": "string"},
              "propertyNames": {"minLength": 1, "pattern": "^[^=]*$",
                                "description": "a name without '='"}},
             {"action": "append", "type": pair},
             from_flag=_frozen_table, from_file=lambda v, _: _frozen_table(v),
             merge=lambda file_value, flag_value: _frozen_table({**file_value, **flag_value}),
             flag_note="repeatable")
LAYERS = Kind(
    _array({"type": "object", "additionalProperties": False, "required": ["name", "packages"],
            "properties": {
                "name": {"type": "string", "pattern": f"^{_LAYER_NAME}$",
                         "description": "a layer name of letters, digits, '.', '_' and '-'"},
                "packages": {**_array(_STRING), "minItems": 1}}}),
    {"action": "append", "type": layer, "metavar": "NAME=PKG[,PKG]"}, from_flag=tuple,
    from_file=lambda v, _: tuple(LockedLayer(name=g["name"], include=tuple(g["packages"])) for g in v),
    flag_note="repeatable, in order")
OUTPUTS = Kind(_array(_STRING), {"action": "append", "metavar": "REF"},
               from_flag=lambda refs: tuple(parse_reference(r) for r in refs),
               from_file=lambda v, base: tuple(_output_under(base, r) for r in v), flag_note="repeatable")
REFERENCE = Kind(_STRING, {"metavar": "REF"}, from_flag=parse_reference,
                 from_file=lambda v, base: _output_under(base, v))
WHEN = Kind({"type": "string", "pattern": "^(auto|off|[0-9]{8}T[0-9]{6}Z)$"},
            {"type": snapshot_when, "metavar": "auto|off|TIMESTAMP"})
REGISTRIES = Kind(_array(_STRING), {"action": "append", "metavar": "REF"},
                  from_flag=lambda refs: tuple(registry_reference(r) for r in refs),
                  from_file=lambda v, _: tuple(registry_reference(r) for r in v), flag_note="repeatable")


@dataclass(frozen=True)
class Setting:
    """One row of the table. ``flags`` default to ``--KEY`` with ``-`` for ``_``; a flag without
    dashes is an optional positional argument. ``default_text`` says what a default of None means;
    ``choices`` bind the spec file always and the command line only if ``flag_choices``."""

    key: str
    kind: Kind
    help: str
    flags: tuple[str, ...] = ()
    commands: tuple[str, ...] = _RESOLVE
    default: Any = None
    choices: tuple[str, ...] = ()
    flag_choices: bool = True
    metavar: str | None = None
    file_help: str | None = None
    default_text: str | None = None

    def option_flags(self) -> tuple[str, ...]:
        return self.flags or ("--" + self.key.replace("_", "-"),)

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        """Add this setting's option; its default is None so that a given value can be told apart."""
        kwargs: dict[str, Any] = {**self.kind.flag, "default": None, "help": self._help_text()}
        if self.choices and self.flag_choices:
            kwargs["choices"] = self.choices
        if self.metavar:
            kwargs["metavar"] = self.metavar
        flags = self.option_flags()
        if not flags[0].startswith("-"):
            parser.add_argument(self.key, nargs="?", **kwargs)
        else:
            parser.add_argument(*flags, dest=self.key, **kwargs)

    def _help_text(self) -> str:
        shown = self.default_text or _shown_default(self.default)
        return _noted(self.help, self.kind.flag_note, shown and f"default {shown}")

    def file_schema(self) -> dict[str, Any]:
        described = {"description": _noted(self.file_help or self.help,
                                           self.default_text and f"default {self.default_text}")}
        if self.choices:
            return {**described, "enum": list(self.choices)}
        return {**described, **self.kind.schema}


def _noted(text: str, *notes: str | None) -> str:
    given = [n for n in notes if n]
    return f"{text} ({'; '.join(given)})" if given else text


def _shown_default(value: Any) -> str | None:
    if isinstance(value, (str, Path)):
        return str(value)
    if isinstance(value, tuple) and value and all(isinstance(v, (str, Path)) for v in value):
        return ",".join(map(str, value))
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_json_default(v) for v in value]
    if isinstance(value, Mapping):
        return dict(value)
    return value


TABLE_EMPTY: Mapping[str, str] = MappingProxyType({})
SETTINGS: tuple[Setting, ...] = (
    Setting("suite", TEXT, "Debian suite or codename, e.g. bookworm, trixie, sid", flags=("suite",)),
    Setting("mirror", TEXT, "archive URL (a user:password@ in it is used for this mirror only and written "
            "nowhere; --auth-file is the better place)", default=DEFAULT_MIRROR),
    Setting("security_mirror", TEXT, "archive URL of SUITE-security", default_text="MIRROR-security"),
    Setting("auth_files", PATHS, "mirror logins in apt's auth.conf format, read before /etc/apt/auth.conf.d/*.conf "
            "and /etc/apt/auth.conf", flags=("--auth-file",), commands=_ARCHIVE_COMMANDS, default=(),
            metavar="FILE"),
    Setting("components", NAMES, "archive components", default=("main",)),
    Setting("keyrings", PATHS, "OpenPGP keyrings to verify the archive with", flags=("--keyring",),
            commands=(*_ARCHIVE_COMMANDS, "cache"), default=(DEFAULT_KEYRING,), metavar="FILE"),
    Setting("architectures", NAMES, "Debian architectures", flags=("--arch",), metavar="ARCH[,ARCH]",
            default_text="the host's"),
    Setting("variant", TEXT, "package set, as mmdebstrap's --variant (minbase = required)",
            default="minbase", choices=VARIANTS, flag_choices=False),
    Setting("include", NAME_GROUPS, "extra packages", default=(), metavar="PKG[,PKG]"),
    Setting("layers", LAYERS, "install these packages as their own diff layer on top", flags=("--layer",), default=(),
            file_help="packages installed as their own diff layers on top, in order"),
    Setting("install_recommends", SWITCH, "also install Recommends", default=False),
    Setting("slim", SWITCH, "leave out documentation, manual pages and translations, also for packages "
            "installed later in the image (dpkg path-exclude rules, as Debian's slim images)", default=False),
    Setting("no_updates", SWITCH, "for a stable release, do not add its -updates and -security suites",
            default=False),
    Setting("no_check_valid_until", SWITCH,
            "accept a Release whose Valid-Until has passed (frozen mirrors, snapshots)", default=False),
    Setting("lock", PATH, "lockfile to write", flags=("-o", "--output"), commands=("lock",),
            default=Path("ocistrap.debian.lock"), metavar="FILE",
            file_help="the lockfile: `ocistrap lock -f` writes it, `ocistrap build -f` builds exactly it "
                      "(the suite and package keys then come from it; any given must agree with it)"),
    Setting("lock", PATH, "build exactly this lockfile (the suite and package options then come from it; "
            "any given must agree with it)",
            commands=_BUILD, metavar="FILE"),
    Setting("write_lock", PATH, "also save the resolved lockfile here", commands=_BUILD, metavar="FILE"),
    Setting("embed_keyring", SWITCH, "carry the keyrings in the lockfile (informative: a build trusts them "
            "only with --trust-lock-keyring)", commands=("lock",), default=False),
    Setting("trust_lock_keyring", SWITCH, "verify the archive with the keyrings embedded in the lockfile "
            "instead of --keyring (the lockfile then is the trust root)", commands=(*_BUILD, "fetch"),
            default=False),
    Setting("outputs", OUTPUTS, "where to write the image: oci:DIR[:TAG], oci-archive:FILE[:TAG], "
            "docker-archive:FILE[:REPO:TAG], tar:FILE, containers-storage:NAME[:TAG]",
            flags=("--output", "-o"), commands=_BUILD, default=(), default_text="oci:./ocistrap-images:SUITE"),
    Setting("push", REGISTRIES, "push to a registry, e.g. registry.example/debian:bookworm (docker:// optional)",
            commands=_BUILD, default=()),
    Setting("tls_verify", BOOLEAN, "verify registry TLS certificates", commands=_REGISTRY_COMMANDS,
            default_text="true; loopback registries use plain HTTP"),
    Setting("compression", TEXT, "layer compression", commands=_BUILD, default="gzip", choices=("gzip", "zstd")),
    Setting("sbom", TEXT, "attach an SBOM of the installed packages to each image (registries and oci: outputs)",
            commands=_BUILD, choices=sbom.FORMATS),
    Setting("sign", PATH, "sign each manifest and index written or pushed with this ECDSA P-256 private key "
            "(`ocistrap key generate`), as cosign and podman check them; a build also attaches its SLSA "
            "provenance signed with it", commands=_SIGNING, metavar="KEY"),
    Setting("passphrase_file", PATH, "the signing key's passphrase: the first line of FILE (else "
            "$OCISTRAP_PASSWORD, else asked on the terminal)", commands=_SIGNING, metavar="FILE"),
    Setting("env", TABLE, "image environment", commands=_BUILD, default=TABLE_EMPTY, metavar="NAME=VALUE"),
    Setting("cmd", WORDS, "image Cmd", commands=_BUILD, default=image.DEFAULT_CMD,
            file_help='image Cmd, e.g. ["bash", "-l"]'),
    Setting("entrypoint", WORDS, "image Entrypoint", commands=_BUILD),
    Setting("workdir", TEXT, "image working directory", commands=_BUILD),
    Setting("user", TEXT, "image default user", commands=_BUILD),
    Setting("labels", TABLE, "image label", flags=("--label",), commands=_BUILD, default=TABLE_EMPTY,
            metavar="KEY=VALUE", file_help="image labels"),
    Setting("annotations", TABLE, "manifest annotation", flags=("--annotation",), commands=_BUILD,
            default=TABLE_EMPTY, metavar="KEY=VALUE", file_help="manifest annotations"),
    Setting("staging_dir", PATH, "build the tree on disk under DIR instead of in memory (big images)",
            commands=(*_BUILD, *_REBUILD), metavar="DIR"),
    Setting("mode", TEXT, "how the sandbox maps ids: unshare (a /etc/subuid range; as root, ids map to "
            "themselves), root (uid 0 without any namespace, as in a container), single-uid (only "
            "your own id; owners are recorded instead of applied), chrootless (no user namespace: the host's "
            "dpkg installs from outside, maintainer scripts run on the host as you), or auto (the first that "
            "works here; chrootless only when no namespace can be made)",
            commands=(*_BUILD, *_REBUILD), default="auto", choices=buildmode.MODES),
    Setting("cache_dir", PATH, "content-addressed cache", commands=(*_ARCHIVE_COMMANDS, "cache"), metavar="DIR",
            default_text="$XDG_CACHE_HOME/ocistrap"),
    Setting("offline", SWITCH, "never use the network; the cache must hold everything",
            commands=_ARCHIVE_COMMANDS, default=False),
    Setting("bundle", REFERENCE, "take the archive's files from this bundle (`ocistrap bundle`) instead of the "
            "mirror, and its lockfile unless --lock is given; checked as a mirror is, no network used",
            flags=("--from",), commands=(*_BUILD, "fetch"),
            file_help="a bundle (`ocistrap bundle`) to take the archive's files from instead of the mirror"),
    Setting("snapshot", WHEN, "for files of a lockfile gone from the mirror, the snapshot service: auto (its "
            "first import after the lock's Release dates), off, or a timestamp; `lock` and `build SUITE` with a timestamp "
            "resolve against that snapshot", commands=_ARCHIVE_COMMANDS, default="auto"),
    Setting("snapshot_url", TEXT, "the snapshot service (snapshot.debian.org's layout: URL/archive/NAME/TIMESTAMP/)",
            commands=_ARCHIVE_COMMANDS, default=DEFAULT_SNAPSHOT_URL),
)
KEYS: tuple[str, ...] = tuple(dict.fromkeys(s.key for s in SETTINGS))
URL_KEYS = ("mirror", "security_mirror")


def rows(command: str) -> list[Setting]:
    """The settings COMMAND takes, in table order."""
    return [s for s in SETTINGS if command in s.commands]


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """Add COMMAND's options (and -f SPEC for the commands that read spec files) to PARSER."""
    if command in SPEC_COMMANDS:
        parser.add_argument("-f", "--file", type=Path, default=None, metavar="SPEC", dest="spec",
                            help="read settings from this TOML spec file (the command line overrides it)")
    for setting in rows(command):
        setting.add_to(parser)
