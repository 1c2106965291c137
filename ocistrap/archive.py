"""Debian archive metadata: Release/InRelease, Packages indices, and their hashes.

Pure parsing and checking; fetching lives in ``fetch``, signatures in ``openpgp``.
"""

from dataclasses import dataclass

from ocistrap.errors import OcistrapError


class ArchiveError(OcistrapError):
    """Archive metadata is missing, malformed, expired or does not match its hash."""


@dataclass(frozen=True, slots=True)
class Package:
    """One binary package stanza of a Packages index, relationship fields kept raw.

    Relationship fields are parsed only for the few packages resolution visits,
    which keeps parsing a 77,000-stanza index fast.
    """

    name: str
    version: str
    architecture: str
    multi_arch: str = "no"
    essential: bool = False
    priority: str = "optional"
    pre_depends: str = ""
    depends: str = ""
    recommends: str = ""
    provides: str = ""
    conflicts: str = ""
    breaks: str = ""
    source: str = ""
    filename: str = ""
    size: int = 0
    sha256: str = ""
