"""Debian archive metadata: Release/InRelease, Packages indices, and their hashes.

Pure parsing and checking; fetching lives in ``fetch``, signatures in ``openpgp``.
"""

import collections
import dataclasses
import email.utils
import gc
import gzip
import hashlib
import itertools
import lzma
import operator
import posixpath
import re
import zlib
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ocistrap.errors import ArchiveError

MIRROR_HINT = "the mirror may be broken, mid-update or hostile; try again or use another mirror"


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


@dataclass(frozen=True)
class FileEntry:
    """Size and SHA256 of one file listed in a Release."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Release:
    """The signed Release text of a suite and the facts drawn from it."""

    origin: str
    label: str
    suite: str
    codename: str
    date: datetime
    valid_until: datetime | None
    acquire_by_hash: bool
    architectures: tuple[str, ...]
    components: tuple[str, ...]
    files: dict[str, FileEntry] = field(repr=False)
    text: str = field(repr=False)
    sha256: str = ""

    @property
    def name(self) -> str:
        return self.codename or self.suite


def field_lookup(names: Collection[str]) -> dict[str, str]:
    """Map each field name, as Debian spells it and lower-cased, to its lower-cased key.

    Trying the usual spelling first spares a ``lower()`` on most lines.
    """
    return {name: name.lower() for name in names} | {name.lower(): name.lower() for name in names}


RELEASE_FIELDS = field_lookup(
    ("Origin", "Label", "Suite", "Codename", "Date", "Valid-Until", "Acquire-By-Hash")
    + ("Architectures", "Components", "SHA256")
)
SHA256_RE = re.compile(r"[0-9a-f]{64}")
INDEX_SUFFIXES = (".xz", ".gz", "")


def paragraph_fields(paragraph: str, lookup: dict[str, str]) -> dict[str, str]:
    """The fields of one deb822 paragraph that LOOKUP names, keyed lower-case.

    Continuation lines are kept, joined by newlines; every other field is
    skipped unread.
    """
    fields: dict[str, str] = {}
    key = None
    get = lookup.get
    for line in paragraph.split("\n"):
        first = line[:1]
        if first == " " or first == "\t":
            if key is not None:
                fields[key] += "\n" + line.strip()
            continue
        name, colon, value = line.partition(":")
        key = (get(name) or get(name.lower())) if colon else None
        if key is not None:
            fields[key] = value.strip()
    return fields


def paragraphs(text: str) -> Iterator[str]:
    """The non-empty paragraphs of a deb822 text, one at a time: a list of them all would
    double the memory an index of tens of megabytes takes."""
    start, end = 0, len(text)
    while start < end:
        stop = text.find("\n\n", start)
        if stop < 0:
            stop = end
        paragraph = text[start:stop]
        if paragraph and not paragraph.isspace():
            yield paragraph
        start = stop + 2


def parse_release(text: str, *, what: str) -> Release:
    """Read the (already verified) Release text of a suite."""
    first = next(paragraphs(text.replace("\r\n", "\n")), "")
    fields = paragraph_fields(first, RELEASE_FIELDS)
    if "date" not in fields:
        raise ArchiveError(f"{what} has no Date field", hint="the mirror serves a broken Release file")
    if "sha256" not in fields:
        raise ArchiveError(
            f"{what} lists no SHA256 checksums", hint="only archives with SHA256 in their Release can be verified"
        )
    valid_until = fields.get("valid-until")
    return Release(
        origin=fields.get("origin", ""),
        label=fields.get("label", ""),
        suite=fields.get("suite", ""),
        codename=fields.get("codename", ""),
        date=parse_date(fields["date"], field_name="Date", what=what),
        valid_until=parse_date(valid_until, field_name="Valid-Until", what=what) if valid_until else None,
        acquire_by_hash=fields.get("acquire-by-hash", "").lower() == "yes",
        architectures=tuple(fields.get("architectures", "").split()),
        components=tuple(fields.get("components", "").split()),
        files=parse_checksums(fields["sha256"], what=what),
        text=text,
        sha256=hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest(),
    )


def parse_date(value: str, *, field_name: str, what: str) -> datetime:
    """An RFC 2822 date of a Release as an aware datetime (UTC when the zone is unnamed)."""
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError) as error:
        raise ArchiveError(f"{what}: {field_name} {value!r} is not a date") from error
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def parse_checksums(value: str, *, what: str) -> dict[str, FileEntry]:
    """The ``SHA256`` field: one ``hex size path`` line per file."""
    files = {}
    for line in value.split("\n"):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or not SHA256_RE.fullmatch(parts[0]) or not _is_size(parts[1]):
            raise ArchiveError(f"{what}: malformed SHA256 line {line.strip()!r}")
        files[parts[2]] = FileEntry(size=int(parts[1]), sha256=parts[0])
    return files


def _is_size(value: str) -> bool:
    return value.isascii() and value.isdigit()


def check_valid_until(release: Release, now: datetime, *, allow_expired: bool, what: str) -> None:
    """Refuse a Release past its Valid-Until, which guards against replayed old metadata."""
    if allow_expired or release.valid_until is None or now <= release.valid_until:
        return
    raise ArchiveError(
        f"{what} expired on {release.valid_until:%Y-%m-%d %H:%M:%S %Z} (Valid-Until)",
        hint="the mirror may be stale or replaying old metadata; "
        "pass --no-check-valid-until to accept it anyway (e.g. for a frozen mirror)",
    )


def index_path(release: Release, component: str, arch: str) -> tuple[str, FileEntry]:
    """The Packages index of COMPONENT/ARCH to fetch: .xz, else .gz, else uncompressed."""
    base = f"{component}/binary-{arch}/Packages"
    for suffix in INDEX_SUFFIXES:
        entry = release.files.get(base + suffix)
        if entry is not None:
            return base + suffix, entry
    raise ArchiveError(
        f"suite {release.name} has no Packages index for component {component!r}, architecture {arch!r}",
        hint=f"its components are {' '.join(release.components) or '(none listed)'}; "
        f"its architectures are {' '.join(release.architectures) or '(none listed)'}",
    )


def by_hash_path(path: str, entry: FileEntry) -> str:
    """Where an Acquire-By-Hash archive keeps PATH under its hash, immune to mid-update races."""
    directory = posixpath.dirname(path)
    return posixpath.join(directory, "by-hash", "SHA256", entry.sha256)


def verify_bytes(data: bytes, entry: FileEntry, *, what: str) -> None:
    """Refuse DATA unless its size and SHA256 are those the Release lists."""
    if len(data) != entry.size:
        raise ArchiveError(f"{what}: size {len(data)}, expected {entry.size}", hint=MIRROR_HINT)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise ArchiveError(f"{what}: SHA256 mismatch (expected {entry.sha256}, got {digest})", hint=MIRROR_HINT)


def decompress(data: bytes, path: str) -> bytes:
    """Decompress an index by the suffix of its PATH (.xz, .gz, or none)."""
    return b"".join(decompressed_chunks(data, path))


def decompressed_chunks(data: bytes, path: str, size: int = 1 << 20) -> Iterator[bytes]:
    """DATA decompressed by the suffix of its PATH, in pieces of at most SIZE bytes (an .xz
    index), so that the whole text need not be in memory at once."""
    try:
        if path.endswith(".xz"):
            yield from _xz_chunks(data, size)
        elif path.endswith(".gz"):
            yield gzip.decompress(data)
        else:
            yield data
    except (lzma.LZMAError, OSError, EOFError, zlib.error) as error:
        raise ArchiveError(f"{path}: cannot decompress: {error}", hint=MIRROR_HINT) from error


def _xz_chunks(data: bytes, size: int) -> Iterator[bytes]:
    """What ``lzma.decompress`` returns, piece by piece: every stream of DATA, each complete."""
    while True:
        stream = lzma.LZMADecompressor()
        piece = stream.decompress(data, max_length=size)
        while True:
            if piece:
                yield piece
            if stream.eof or stream.needs_input:
                break
            piece = stream.decompress(b"", max_length=size)
        if not stream.eof:
            raise EOFError("Compressed data ended before the end-of-stream marker was reached")
        data = stream.unused_data
        if not data:
            return


# Package's columns, each with the field it is read from.
COLUMN_FIELDS = {
    "name": "Package", "version": "Version", "architecture": "Architecture", "multi_arch": "Multi-Arch",
    "essential": "Essential", "priority": "Priority", "pre_depends": "Pre-Depends", "depends": "Depends",
    "recommends": "Recommends", "provides": "Provides", "conflicts": "Conflicts", "breaks": "Breaks",
    "source": "Source", "filename": "Filename", "size": "Size", "sha256": "SHA256",
}
PACKAGE_COLUMNS = tuple(f.name for f in dataclasses.fields(Package))
_FIELD_DEFAULTS = {"Multi-Arch": "no", "Priority": "optional"}
_REQUIRED_FIELDS = ("Package", "Version", "Architecture", "Filename", "Size", "SHA256")
_UNSHARED_FIELDS = frozenset({"Package", "Filename", "SHA256"})  # one of a kind per stanza: nothing to share
# A field's value: stripped of surrounding whitespace, with its continuation lines (unfolded
# later); then the whitespace that ends its line.
_VALUE = r"[^\S\n]*((?:[^\n]*\S)?(?:[^\S\n]*\n[ \t][^\n]*)*)[^\n]*"
# One match takes a whole paragraph (after a leading newline), line by line: each wanted field
# (its name in any ASCII case, as deb822 allows) fills its group, in COLUMN_FIELDS order; a
# field given twice keeps its last value, as a group repeated does; every other line is skipped.
_STANZA_RE = re.compile(
    r"(?:\n(?:" + "|".join(f"(?ai:{re.escape(field)}):{_VALUE}" for field in COLUMN_FIELDS.values())
    + r"|[^\n]*))*")


def parse_packages(data: bytes | Iterable[bytes], *, what: str) -> list[Package]:
    """Every stanza of a Packages index (its bytes, or its bytes in pieces) as a ``Package``."""
    return packages_from_columns(parse_package_columns(data, what=what))


def packages_from_columns(columns: list[list[Any]]) -> list[Package]:
    """The packages whose fields COLUMNS holds: one column of equal length per ``PACKAGE_COLUMNS``.

    Each field is set a column at a time through its slot: the frozen
    dataclass's ``__init__`` calls ``object.__setattr__`` once per field, which
    took twice as long for an index of 63,000 packages.
    """
    with cyclic_gc_paused():
        packages = list(map(object.__new__, itertools.repeat(Package, len(columns[0]))))
        for name, values in zip(PACKAGE_COLUMNS, columns, strict=True):
            collections.deque(map(getattr(Package, name).__set__, packages, values), maxlen=0)
    return packages


def parse_package_columns(data: bytes | Iterable[bytes], *, what: str) -> list[list[Any]]:
    """The fields ``Package`` holds of every stanza of a Packages index, by column.

    Work happens a piece of text at a time: one regular expression per stanza
    picks out the wanted fields and the rest is done column-wise in C loops,
    so Python code runs per stanza, not per line or field. Equal values of the
    fields that repeat (versions, architectures, dependency lists, source
    names) become one string object: a fifth less memory for Debian's 63,000
    stanzas, and shared references when the columns are marshalled.
    """
    columns: list[list[Any]] = [[] for _ in PACKAGE_COLUMNS]
    share: dict[str | None, str] = {None: ""}
    with cyclic_gc_paused():
        for text in _texts([data] if isinstance(data, bytes) else data):
            for column, part in zip(columns, _text_columns(text, what, share)):
                column.extend(part)
    return columns


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic garbage collection meanwhile: parsing makes a few tuples per stanza that hold
    only strings, and collecting them again and again took a sixth of the parsing time. They
    are freed by reference counting all the same. Work on a whole index's packages (reading one
    from the cache, indexing it, resolving) makes tens of thousands of such objects too."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _texts(chunks: Iterable[bytes], size: int = 1 << 20) -> Iterator[str]:
    """CHUNKS cut anywhere, re-cut between paragraphs about every SIZE bytes and decoded a piece
    at a time: one non-Latin-1 character would make the text of a whole index take two or four
    bytes per character. Decoding with "replace" a piece cut at a blank line gives what decoding
    each of its paragraphs would."""
    rest = b""
    for chunk in chunks:
        for start in range(0, len(chunk), size):
            data = rest + chunk[start:start + size]
            cut = data.rfind(b"\n\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 2:]
            yield data[:cut].decode("utf-8", "replace")
    if rest:
        yield rest.decode("utf-8", "replace")


def _text_columns(text: str, what: str, share: dict[str | None, str]) -> list[list[Any]]:
    """The columns of the stanzas of TEXT, a piece of an index that ends between paragraphs."""
    paragraphs = [p for p in text.split("\n\n") if p and not p.isspace()]
    match = _STANZA_RE.match
    rows = [match("\n" + p).groups() for p in paragraphs]  # type: ignore[union-attr]  # it always matches
    raw = dict(zip(COLUMN_FIELDS.values(), zip(*rows) if rows else [()] * len(COLUMN_FIELDS)))
    if not _plausible(raw):
        for paragraph, row in zip(paragraphs, rows):
            _check_stanza(paragraph, dict(zip(COLUMN_FIELDS.values(), row)), what)
    return [_column(field, raw[field], share) for field in COLUMN_FIELDS.values()]


def _plausible(raw: dict[str, tuple[Any, ...]]) -> bool:
    """Whether every stanza has its required fields and a well-formed Size and SHA256."""
    sizes = raw["Size"]
    return (all(all(raw[field]) for field in _REQUIRED_FIELDS)
            and all(map(str.isdigit, sizes)) and all(map(str.isascii, sizes))
            and all(map(SHA256_RE.fullmatch, raw["SHA256"])))


def _check_stanza(paragraph: str, record: dict[str, str | None], what: str) -> None:
    """Raise the error that names what is wrong with one stanza, if anything is."""
    missing = [field.lower() for field in _REQUIRED_FIELDS if not record[field]]
    if missing:
        label = record["Package"] or f"stanza {paragraph[:40]!r}"
        raise ArchiveError(f"{what}: package {label} lacks {', '.join(missing)}", hint=MIRROR_HINT)
    name, size, sha256 = record["Package"], record["Size"] or "", record["SHA256"] or ""
    if not _is_size(size):
        raise ArchiveError(f"{what}: package {name} has Size {size!r}", hint=MIRROR_HINT)
    if not SHA256_RE.fullmatch(sha256):
        raise ArchiveError(f"{what}: package {name} has a malformed SHA256", hint=MIRROR_HINT)


def _column(field: str, values: tuple[Any, ...], share: dict[str | None, str]) -> list[Any]:
    """The column of FIELD from its raw VALUES, None where a stanza lacks it.

    SHARE maps None to the empty string, so sharing the values of a column
    also fills in the fields that stanzas lack.
    """
    if field == "Essential":
        return [value is not None and value.lower() == "yes" for value in values]
    if field == "Size":
        return list(map(int, values))
    if field in _FIELD_DEFAULTS:
        values = tuple(map({None: _FIELD_DEFAULTS[field]}.get, values, values))
    column = list(values) if field in _UNSHARED_FIELDS else list(map(share.setdefault, values, values))
    if field == "SHA256" or not any(map(operator.contains, column, itertools.repeat("\n"))):
        return column
    column = list(map(_one_line, column))
    return column if field in _UNSHARED_FIELDS else list(map(share.setdefault, column, column))


def _one_line(value: str) -> str:
    """A folded field unfolded, so relationship parsers need not know about continuation lines."""
    return " ".join(value.split()) if "\n" in value else value
