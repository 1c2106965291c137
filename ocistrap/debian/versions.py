"""Debian version ordering and relation checks, as dpkg compares them."""

from __future__ import annotations

import re
from functools import lru_cache

from debian import debian_support
from debian.debian_support import version_compare


def version_satisfies(version: str | None, op: str | None, wanted: str | None) -> bool:
    """dpkg's relation check; a missing version (an unversioned Provides) never satisfies a versioned one."""
    if op is None:
        return True
    if version is None:
        return False
    cmp = _version_compare(version, wanted)  # type: ignore[arg-type]
    return {"<<": cmp < 0, "<=": cmp <= 0, "=": cmp == 0, ">=": cmp >= 0, ">>": cmp > 0}[op]


# python-debian's own comparison, unless python-apt is installed and it defers to apt.
_NATIVE_VERSIONS = issubclass(debian_support.Version, debian_support.NativeVersion)
_VERSION_RUNS = re.compile(r"[0-9]+|[^0-9]+")
_CHAR_ORDER = {c: -1 if c == "~" else int(c) + 1 if c.isdigit() else ord(c) if c.isalpha() else ord(c) + 256
               for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.+:~-"}
_Run = tuple[int | None, tuple[int, ...]]
_ZERO_RUN: _Run = (0, (_CHAR_ORDER["0"], 0))


def _version_compare(a: str, b: str) -> int:
    """``version_compare`` with each version parsed once: it runs for every pair resolution compares.

    The same algorithm as python-debian's ``NativeVersion`` (the same
    ValueError for an invalid version), minus re-parsing both versions and
    matching a regex per character on every call.
    """
    if not _NATIVE_VERSIONS:
        return version_compare(a, b)
    epoch_a, upstream_a, revision_a = _parsed_version(a)
    epoch_b, upstream_b, revision_b = _parsed_version(b)
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _compare_runs(upstream_a, upstream_b) or _compare_runs(revision_a, revision_b)


@lru_cache(maxsize=1 << 16)
def _parsed_version(version: str) -> tuple[int, tuple[_Run, ...], tuple[_Run, ...]]:
    parsed = debian_support.BaseVersion(version)
    return int(parsed.epoch or "0"), _runs(parsed.upstream_version or "0"), _runs(parsed.debian_revision or "0")


def _runs(text: str) -> tuple[_Run, ...]:
    """Digit and non-digit runs: the number of a digit run, and every run's character orders, 0-ended."""
    return tuple((int(run) if run[0].isdigit() else None, (*map(_CHAR_ORDER.__getitem__, run), 0))
                 for run in _VERSION_RUNS.findall(text))


def _compare_runs(a: tuple[_Run, ...], b: tuple[_Run, ...]) -> int:
    """Runs pairwise, a missing run counting as "0": numbers if both are digits, else character orders."""
    for index in range(max(len(a), len(b))):
        number_a, orders_a = a[index] if index < len(a) else _ZERO_RUN
        number_b, orders_b = b[index] if index < len(b) else _ZERO_RUN
        if number_a is not None and number_b is not None:
            if number_a != number_b:
                return -1 if number_a < number_b else 1
        elif orders_a != orders_b:
            return -1 if orders_a < orders_b else 1
    return 0
