"""Debian archive metadata: Release/InRelease, Packages indices, and their hashes.

Pure parsing and checking; fetching lives in ``fetch``, signatures in ``openpgp``.
"""

import email.utils
import gzip
import hashlib
import lzma
import posixpath
import re
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ocistrap.errors import OcistrapError

MIRROR_HINT = "the mirror may be broken, mid-update or hostile; try again or use another mirror"


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
PACKAGE_FIELDS = field_lookup(
    ("Package", "Version", "Architecture", "Multi-Arch", "Essential", "Priority", "Source")
    + ("Pre-Depends", "Depends", "Recommends", "Provides", "Conflicts", "Breaks")
    + ("Filename", "Size", "SHA256")
)
REQUIRED_PACKAGE_FIELDS = ("package", "version", "architecture", "filename", "size", "sha256")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
INDEX_SUFFIXES = (".xz", ".gz", "")


def paragraph_fields(paragraph: str, lookup: dict[str, str]) -> dict[str, str]:
    """The fields of one deb822 paragraph that LOOKUP names, keyed lower-case.

    Continuation lines are kept, joined by newlines; every other field is
    skipped unread, which is what makes a 77,000-stanza index parse in well
    under a second.
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


def parse_packages(data: bytes | Iterable[bytes], *, what: str) -> list[Package]:
    """Every stanza of a Packages index (its bytes, or its bytes in pieces), reading only the
    fields ``Package`` holds.

    Each stanza is decoded on its own: one non-Latin-1 character would make the
    text of a whole index take two or four bytes per character. Equal values of
    the fields that repeat (versions, architectures, dependency lists, source
    names) become one string object: a fifth less memory for Debian's 66,000
    stanzas, and shared references when the list is marshalled.
    """
    share: dict[str, str] = {}
    return [_package(paragraph.decode("utf-8", "replace"), what, share.setdefault)
            for paragraph in _byte_paragraphs([data] if isinstance(data, bytes) else data)]


def _byte_paragraphs(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The non-empty paragraphs of a deb822 text that arrives in CHUNKS cut anywhere."""
    rest = b""
    for chunk in chunks:
        text = rest + chunk
        cut = text.rfind(b"\n\n")
        if cut < 0:
            rest = text
            continue
        rest = text[cut + 2:]
        yield from (p for p in text[:cut].split(b"\n\n") if p and not p.isspace())
    if rest and not rest.isspace():
        yield rest


def _package(paragraph: str, what: str, share: Callable[[str, str], str] = lambda v, _: v) -> Package:
    fields = paragraph_fields(paragraph, PACKAGE_FIELDS)
    missing = [name for name in REQUIRED_PACKAGE_FIELDS if not fields.get(name)]
    if missing:
        label = fields.get("package") or f"stanza {paragraph[:40]!r}"
        raise ArchiveError(f"{what}: package {label} lacks {', '.join(missing)}", hint=MIRROR_HINT)
    name = fields["package"]
    if not _is_size(fields["size"]):
        raise ArchiveError(f"{what}: package {name} has Size {fields['size']!r}", hint=MIRROR_HINT)
    if not SHA256_RE.fullmatch(fields["sha256"]):
        raise ArchiveError(f"{what}: package {name} has a malformed SHA256", hint=MIRROR_HINT)
    get = fields.get

    def shared(key: str, default: str = "") -> str:
        value = _one_line(get(key, default))
        return share(value, value)

    return Package(
        name=_one_line(name),
        version=shared("version"),
        architecture=shared("architecture"),
        multi_arch=shared("multi-arch", "no"),
        essential=get("essential", "").lower() == "yes",
        priority=shared("priority", "optional"),
        pre_depends=shared("pre-depends"),
        depends=shared("depends"),
        recommends=shared("recommends"),
        provides=shared("provides"),
        conflicts=shared("conflicts"),
        breaks=shared("breaks"),
        source=shared("source"),
        filename=_one_line(fields["filename"]),
        size=int(fields["size"]),
        sha256=fields["sha256"],
    )


def _one_line(value: str) -> str:
    """A folded field unfolded, so relationship parsers need not know about continuation lines."""
    return " ".join(value.split()) if "\n" in value else value
