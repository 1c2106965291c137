"""snapshot.debian.org as the mirror of last resort: where an archive is kept as it was at a time.

Pure: which URL holds an archive at which timestamp. What comes from there is
checked exactly as a mirror's bytes are (signature, the lock's pins, the signed
sizes and hashes); the service only changes where the bytes come from.

The service imports each archive a few times a day, and a timestamp between two
imports names the earlier one: the archive as it was before a Release dated
then reached the service. So a lock's Release date is looked up in the
service's list of imports, and the first import at or after it is asked.
"""

import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, timezone

DEFAULT_SNAPSHOT_URL = "https://snapshot.debian.org"
WHEN = ("auto", "off")
_TIMESTAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_IMPORT = re.compile(r"(?<![0-9])([0-9]{8}T[0-9]{6}Z)")
_KEPT = re.compile(r"/archive/(?P<name>[^/]+)/(?P<stamp>[0-9]{8}T[0-9]{6}Z)(?:/|$)")


def parse_when(text: str) -> str:
    """``auto``, ``off`` or a snapshot timestamp (YYYYMMDDTHHMMSSZ); ValueError otherwise."""
    if text in WHEN or _TIMESTAMP.fullmatch(text):
        return text
    raise ValueError(f"{text!r} is neither auto, off nor a timestamp such as 20240610T000000Z")


def timestamp_of(date: str) -> str:
    """The snapshot timestamp of an ISO 8601 date (a lock's Release date)."""
    parsed = datetime.fromisoformat(date)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def archive_name(mirror: str) -> str:
    """The snapshot service's name of the archive a mirror URL serves: its last path component
    (``.../debian`` is ``debian``, ``.../debian-security`` is ``debian-security``)."""
    return urllib.parse.urlsplit(mirror).path.rstrip("/").rsplit("/", 1)[-1] or "debian"


def first_import(listing: str, since: str) -> str | None:
    """The first import at or after the timestamp SINCE that a listing page of the service names
    (its links, ``20240610T083001Z/``); None if it names none that late."""
    return min((stamp for stamp in _IMPORT.findall(listing) if stamp >= since), default=None)


def listing_months(stamp: str) -> list[tuple[int, int]]:
    """The months whose listing pages may name the first import at or after STAMP: its own, and
    the next (a Release dated late on the last day of a month)."""
    year, month = int(stamp[:4]), int(stamp[4:6])
    return [(year, month), (year + month // 12, month % 12 + 1)]


@dataclass(frozen=True)
class Snapshots:
    """The snapshot service at BASE, and WHEN to fall back to it: ``auto`` (at the lock's Release
    dates), ``off``, or one timestamp for every archive."""

    base: str = DEFAULT_SNAPSHOT_URL
    when: str = "off"

    def archive_url(self, mirror: str, timestamp: str) -> str:
        """The mirror URL of MIRROR's archive as the service kept it at TIMESTAMP."""
        return f"{self.base.rstrip('/')}/archive/{archive_name(mirror)}/{timestamp}"

    def fallback(self, mirror: str, release_date: str) -> str | None:
        """Where to look for a file gone from MIRROR, whose Release the lock dates RELEASE_DATE."""
        if self.when == "off":
            return None
        return self.archive_url(mirror, timestamp_of(release_date) if self.when == "auto" else self.when)

    def dated(self, url: str) -> tuple[str, str] | None:
        """(archive name, timestamp) of a URL of the service's that ``auto`` dated by a lock's
        Release date, to be moved to the first import since; None for any other URL."""
        if self.when != "auto" or not self.serves(url):
            return None
        found = _KEPT.match(url, len(self.base.rstrip("/")))
        return (found["name"], found["stamp"]) if found else None

    def listing_urls(self, name: str, stamp: str) -> list[str]:
        """The service's pages listing the imports of archive NAME around STAMP."""
        return [f"{self.base.rstrip('/')}/archive/{name}/?year={year}&month={month:02d}"
                for year, month in listing_months(stamp)]

    def serves(self, url: str) -> bool:
        """Whether URL is the service's (asked sparingly: few connections, patient retries)."""
        return url.startswith(self.base.rstrip("/") + "/")
