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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ocistrap.debian import lock, mirrorauth, openpgp
from ocistrap.debian.lock import LockedLayer
from ocistrap.debian.mirror import STABLE_SUITES
from ocistrap.debian.mirrorauth import MirrorLogins
from ocistrap.errors import ArchiveError, UsageError
from ocistrap.settingtable import KEYS, SETTINGS, URL_KEYS, rows
from ocistrap.specfile import read_spec

Settings = dataclasses.make_dataclass(
    "Settings", [("spec", Path | None), *((key, Any) for key in KEYS),
                 ("given", frozenset, field(default=frozenset())),
                 ("url_logins", MirrorLogins, field(default=MirrorLogins()))], frozen=True)
Settings.__doc__ = """The settings of one command: command line over spec file over default.
``spec`` is the spec file read, if any; the other fields are the keys of SETTINGS, then ``given``:
the keys the spec file or the command line set, and ``url_logins``: the logins taken out of the
URL_KEYS' URLs, which hold none from then on (ocistrap.debian.mirrorauth)."""


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


def _security_mirror(locked: lock.Lockfile) -> str | None:
    return next((a.mirror for a in locked.archives[1:] if a.suite.endswith("-security")), None)


def _left_out_updates(locked: lock.Lockfile) -> bool | None:
    """Whether a stable release was locked without its -updates and -security suites."""
    stable = any(r.suite in STABLE_SUITES for r in locked.main_releases())
    return len(locked.archives) == 1 if stable else None


LOCKED: Mapping[str, Locked] = MappingProxyType({
    "suite": Locked(lock.Lockfile.suite_names, lambda given, names: given in names),
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

