"""Every setting of `lock` and `build` in one table: spec-file keys, flags, defaults and help.

The table drives the argparse options, the JSON Schema of spec files
(``specs/spec.schema.json``) and the merge of both into one frozen `Settings`:
a value given on the command line wins over the spec file, which wins over the
default. Lists given on the command line replace the file's; tables (env,
labels, annotations) are merged key by key. Relative paths in a spec file are
relative to the spec file.
"""

import argparse
import dataclasses
import difflib
import json
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema

from ocistrap import image, lock, mirrorauth, openpgp, sandbox, sbom, schema
from ocistrap.errors import ArchiveError, OcistrapError, UsageError
from ocistrap.lock import LockedLayer
from ocistrap.mirror import DEFAULT_KEYRING, DEFAULT_MIRROR, STABLE_SUITES
from ocistrap.mirrorauth import MirrorLogins
from ocistrap.resolve import VARIANTS
from ocistrap.transports import BARE_TRANSPORT, BadReference, Reference, parse_reference

SPEC_COMMANDS = ("lock", "build")
_RESOLVE = SPEC_COMMANDS
_BUILD = ("build",)
_REGISTRY_COMMANDS = ("build", "push", "login", "verify", "sbom", "index")
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
            "and /etc/apt/auth.conf", flags=("--auth-file",), commands=(*_RESOLVE, "fetch"), default=(),
            metavar="FILE"),
    Setting("components", NAMES, "archive components", default=("main",)),
    Setting("keyrings", PATHS, "OpenPGP keyrings to verify the archive with", flags=("--keyring",),
            commands=(*_RESOLVE, "fetch", "cache"), default=(DEFAULT_KEYRING,), metavar="FILE"),
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
            default=Path("ocistrap.lock"), metavar="FILE",
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
            commands=_BUILD, metavar="DIR"),
    Setting("mode", TEXT, "how the sandbox maps ids: unshare (a /etc/subuid range), single-uid (only "
            "your own id; owners are recorded instead of applied), or auto (unshare when possible)",
            commands=_BUILD, default="auto", choices=sandbox.MODES),
    Setting("cache_dir", PATH, "content-addressed cache", commands=(*_RESOLVE, "fetch", "cache"), metavar="DIR",
            default_text="$XDG_CACHE_HOME/ocistrap"),
    Setting("offline", SWITCH, "never use the network; the cache must hold everything",
            commands=(*_RESOLVE, "fetch"), default=False),
)

KEYS: tuple[str, ...] = tuple(dict.fromkeys(s.key for s in SETTINGS))

URL_KEYS = ("mirror", "security_mirror")

Settings = dataclasses.make_dataclass(
    "Settings", [("spec", Path | None), *((key, Any) for key in KEYS),
                 ("given", frozenset, field(default=frozenset())),
                 ("url_logins", MirrorLogins, field(default=MirrorLogins()))], frozen=True)
Settings.__doc__ = """The settings of one command: command line over spec file over default.
``spec`` is the spec file read, if any; the other fields are the keys of SETTINGS, then ``given``:
the keys the spec file or the command line set, and ``url_logins``: the logins taken out of the
URL_KEYS' URLs, which hold none from then on (ocistrap.mirrorauth)."""


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


def resolve(args: argparse.Namespace, command: str) -> Settings:
    """The Settings of COMMAND from parsed ARGS and the spec file they name (-f)."""
    spec: Path | None = getattr(args, "spec", None)
    filed = read_spec(spec) if spec is not None else {}
    values = {key: next(s.default for s in SETTINGS if s.key == key) for key in KEYS}
    given = set()
    for setting in rows(command):
        value = filed.get(setting.key, setting.default)
        flag = getattr(args, setting.key)
        if flag is not None:
            value = setting.kind.merge(value, setting.kind.from_flag(flag))
        if flag is not None or setting.key in filed:
            given.add(setting.key)
        values[setting.key] = value
    logins = MirrorLogins()
    for key in URL_KEYS:
        if values[key] is not None:
            values[key], found = mirrorauth.split_userinfo(values[key])
            logins += found
    return Settings(spec=spec, **values, given=frozenset(given), url_logins=logins)


def mirror_logins(settings: Settings) -> MirrorLogins:
    """Every login a Fetcher of these settings may send: a mirror URL's own, then the auth files'."""
    return settings.url_logins + mirrorauth.read(settings.auth_files or ())


# ---- files the user names: wrong ones are usage errors ----

def check_inputs(settings: Settings) -> None:
    """Refuse, before any work, keyrings that are missing, unreadable or no keyrings (exit 2)."""
    try:
        openpgp.check_keyrings(settings.keyrings, what="the archive")
    except ArchiveError as e:
        raise UsageError(e.message, hint=e.hint) from None


def read_lockfile(path: Path) -> lock.Lockfile:
    """The lockfile the user named; one that is missing, unreadable or no lockfile is a usage error."""
    try:
        return lock.read(path)
    except ArchiveError as e:
        raise UsageError(e.message, hint=e.hint) from None


# ---- settings a lockfile decides ----

@dataclass(frozen=True)
class Locked:
    """How a lockfile decides one setting: its value there (None: the lock leaves it open) and
    whether a given value agrees with it."""

    value: Callable[[lock.Lockfile], Any]
    agrees: Callable[[Any, Any], bool] = lambda given, locked: given == locked


def _same_url(given: str, locked: str) -> bool:
    return given.rstrip("/") == locked.rstrip("/")


def _same_set(given: Iterable[str], locked: Iterable[str]) -> bool:
    return set(given) == set(locked)


def _main_releases(locked: lock.Lockfile) -> list[lock.LockedRelease]:
    return [entry.releases[0] for entry in locked.architectures.values() if entry.releases]


def _suite_names(locked: lock.Lockfile) -> tuple[str, ...]:
    """The names the lock's suite goes by: as locked, and as its signed Release says (suite, codename)."""
    return (locked.suite, *(name for r in _main_releases(locked) for name in (r.suite, r.codename)))


def _security_mirror(locked: lock.Lockfile) -> str | None:
    return next((a.mirror for a in locked.archives[1:] if a.suite.endswith("-security")), None)


def _left_out_updates(locked: lock.Lockfile) -> bool | None:
    """Whether a stable release was locked without its -updates and -security suites."""
    stable = any(r.suite in STABLE_SUITES for r in _main_releases(locked))
    return len(locked.archives) == 1 if stable else None


LOCKED: Mapping[str, Locked] = MappingProxyType({
    "suite": Locked(_suite_names, lambda given, names: given in names),
    "mirror": Locked(lambda lk: lk.mirror, _same_url),
    "security_mirror": Locked(_security_mirror, _same_url),
    "components": Locked(lambda lk: lk.components),
    "architectures": Locked(lambda lk: tuple(lk.architectures), _same_set),
    "variant": Locked(lambda lk: lk.variant),
    "include": Locked(lambda lk: lk.include, _same_set),
    "layers": Locked(lambda lk: lk.layers),
    "install_recommends": Locked(lambda lk: lk.install_recommends),
    "slim": Locked(lambda lk: lk.slim),
    "no_updates": Locked(_left_out_updates),
})


def check_against_lock(settings: Settings, locked: lock.Lockfile, path: Path) -> None:
    """Refuse a setting the lockfile decides that was given with another value (exit 2): a build
    of a lockfile builds exactly it, and ignoring `--arch arm64` beside an amd64 lock would
    silently build amd64."""
    for key in sorted(settings.given & LOCKED.keys(), key=KEYS.index):
        rule, given = LOCKED[key], getattr(settings, key)
        value = rule.value(locked)
        if value is None or rule.agrees(given, value):
            continue
        flag = next(s for s in rows("build") if s.key == key).option_flags()[0]
        named = f"{key} {_shown(given)}" + (f" ({flag})" if flag.startswith("-") else "")
        shown = _shown(value[0] if key == "suite" else value)
        raise UsageError(f"{named} disagrees with the lockfile {path}, which locks {key} {shown}",
                         hint="leave it out to build exactly the lockfile, or lock again with it (`ocistrap lock`)")


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, LockedLayer):
        return f"{value.name}={','.join(value.include)}"
    if isinstance(value, tuple):
        return ",".join(map(_shown, value)) if value else "none"
    return str(value)


# ---- spec files ----

def spec_schema() -> dict[str, Any]:
    """The JSON Schema of spec files, as committed in specs/spec.schema.json."""
    properties: dict[str, Any] = {}
    for key in KEYS:
        settings = [s for s in SETTINGS if s.key == key and set(s.commands) & set(SPEC_COMMANDS)]
        if not settings:
            continue
        properties[key] = settings[0].file_schema()
        defaults = {json.dumps(_json_default(s.default)) for s in settings}
        if len(defaults) == 1 and settings[0].default is not None and not settings[0].default_text:
            properties[key]["default"] = _json_default(settings[0].default)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://ocistrap.dev/specs/spec.schema.json",
        "title": "ocistrap spec file",
        "description": "Settings of `ocistrap lock -f` and `ocistrap build -f` (TOML). Every key is "
                       "optional; the command line overrides the file. Relative paths are relative "
                       "to the spec file. Generated from ocistrap/settings.py.",
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }


def spec_schema_text() -> str:
    return json.dumps(spec_schema(), indent=2) + "\n"


def read_spec(path: Path) -> dict[str, Any]:
    """The settings written in the spec file PATH, checked against its schema before any is used."""
    try:
        with path.open("rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read the spec file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    found = problems(document)
    if found:
        raise UsageError(f"{path}: " + "; ".join(found),
                         hint="the keys and their types are in specs/spec.schema.json")
    setting = {s.key: s for s in reversed(SETTINGS)}
    values = {}
    for key, value in document.items():
        try:
            values[key] = setting[key].kind.from_file(value, path.parent)
        except OcistrapError as e:
            raise UsageError(f"{path}: key {key!r}: {e.message}", hint=e.hint) from None
    return values


def problems(document: Any) -> list[str]:
    """What is wrong with a parsed spec file, one phrase each, in the order of the keys."""
    errors = sorted(schema.validator("spec").iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    return [phrase for error in errors for phrase in _explain(error)]


def _explain(error: jsonschema.ValidationError) -> list[str]:
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        return [f"unknown key {_dotted([*error.absolute_path, k])!r}{_did_you_mean(k, known, top=not where)}"
                for k in error.instance if k not in known]
    if error.validator == "required":
        return [f"key {_dotted([*error.absolute_path, k])!r} is missing"
                for k in error.validator_value if k not in error.instance]
    return [f"key {where!r}: expected {_expected(error)}, not {_toml(error.instance)}"]


def _expected(error: jsonschema.ValidationError) -> str:
    rule, value = error.validator, error.validator_value
    if rule == "type":
        return _type_words(error.schema)
    if rule == "enum":
        return "one of " + ", ".join(_toml(v) for v in value)
    if rule == "minLength":
        return "a non-empty string"
    if rule == "minItems":
        return f"at least {value} item" + ("s" if value != 1 else "")
    if rule == "pattern":
        return error.schema.get("description", f"text matching {value}")
    return error.message


def _type_words(fragment: Mapping[str, Any]) -> str:
    kind = fragment.get("type")
    if kind == "array":
        items = _type_words(fragment.get("items", {}))
        return "an array of " + {"a string": "strings", "a table": "tables"}.get(items, items)
    if kind == "object":
        return "a table of strings" if fragment.get("additionalProperties") == {"type": "string"} else "a table"
    return {"string": "a string", "boolean": "true or false"}.get(kind, str(kind))


def _did_you_mean(key: str, known: list[str], *, top: bool) -> str:
    names = {k: k for k in known}
    if top:
        names.update((flag.lstrip("-").replace("-", "_"), s.key)
                     for s in SETTINGS for flag in s.option_flags() if flag.startswith("--"))
    if key in names:
        return f" (did you mean {names[key]!r}?)"
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return f" (did you mean {names[close[0]]!r}?)" if close else ""


def _dotted(path: Iterable[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    try:
        return json.dumps(value)
    except TypeError:
        return str(value)


if __name__ == "__main__":
    sys.stdout.write(spec_schema_text())
