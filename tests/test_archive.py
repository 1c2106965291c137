import gzip
import io
import lzma
import os
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from debian import deb822
from hypothesis import given, settings
from hypothesis import strategies as st
from repo_factory import Mirror, RepoBuilder, SigningKey, release_text

from ocistrap.debian import archive, openpgp
from ocistrap.debian.archive import (
    ArchiveError,
    FileEntry,
    Package,
    by_hash_path,
    check_valid_until,
    decompress,
    index_path,
    parse_packages,
    parse_release,
    verify_bytes,
)

WHAT = "http://mirror.example/debian/dists/testing/InRelease"
PACKAGES_WHAT = "http://mirror.example/debian/dists/testing/main/binary-amd64/Packages.xz"
DEBIAN = "http://deb.debian.org/debian"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
DATE = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
HEX = "ab" * 32


def make_release(*, valid_until: datetime | None = None, files: dict[str, bytes] | None = None,
                 by_hash: bool = False) -> archive.Release:
    text = release_text(suite="testing", codename="forky", date=DATE, valid_until=valid_until, by_hash=by_hash,
                        architectures=("amd64", "arm64"), components=("main", "contrib"),
                        files=files if files is not None else {"main/binary-amd64/Packages": b"x"})
    return parse_release(text, what=WHAT)


def deb822_packages(data: bytes) -> list[Package]:
    """The reference: python-debian's parser, mapped onto Package the same way."""
    def one(stanza: deb822.Packages) -> Package:
        def get(name: str, default: str = "") -> str:
            return " ".join(stanza.get(name, default).split())
        return Package(
            name=get("Package"), version=get("Version"), architecture=get("Architecture"),
            multi_arch=get("Multi-Arch", "no"), essential=get("Essential").lower() == "yes",
            priority=get("Priority", "optional"), pre_depends=get("Pre-Depends"), depends=get("Depends"),
            recommends=get("Recommends"), provides=get("Provides"), conflicts=get("Conflicts"),
            breaks=get("Breaks"), source=get("Source"), filename=get("Filename"), size=int(get("Size")),
            sha256=get("SHA256"),
        )
    return [one(stanza) for stanza in deb822.Packages.iter_paragraphs(io.BytesIO(data), use_apt_pkg=False)]


# --- Release ------------------------------------------------------------------------------------

def test_parse_release_reads_every_field() -> None:
    files = {"main/binary-amd64/Packages": b"abc", "main/binary-amd64/Packages.xz": lzma.compress(b"abc")}
    until = DATE + timedelta(days=7)
    release = make_release(valid_until=until, files=files, by_hash=True)
    assert (release.origin, release.label, release.suite, release.codename) == (
        "Ocistrap-Test", "Ocistrap-Test", "testing", "forky")
    assert release.date == DATE and release.date.tzinfo is not None
    assert release.valid_until == until
    assert release.acquire_by_hash is True
    assert release.architectures == ("amd64", "arm64")
    assert release.components == ("main", "contrib")
    assert release.files["main/binary-amd64/Packages"] == FileEntry(
        size=3, sha256="ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    assert set(release.files) == set(files)
    assert archive.hashlib.sha256(release.text.encode()).hexdigest() == release.sha256


def test_parse_release_without_valid_until_or_by_hash() -> None:
    release = make_release()
    assert release.valid_until is None and release.acquire_by_hash is False


@pytest.mark.parametrize(("drop", "message"), [("Date:", "no Date"), ("SHA256:", "no SHA256")])
def test_release_missing_required_field(drop: str, message: str) -> None:
    text = make_release().text
    kept = "\n".join(line for line in text.split("\n") if not line.startswith(drop))
    with pytest.raises(ArchiveError, match=message) as caught:
        parse_release(kept, what=WHAT)
    assert WHAT in str(caught.value)


@pytest.mark.parametrize("line", [
    "Date: yesterday",
    "Valid-Until: soon",
    "SHA256:\n nothex 3 main/binary-amd64/Packages",
    f"SHA256:\n {HEX} three main/binary-amd64/Packages",
    f"SHA256:\n {HEX} 3",
])
def test_release_with_malformed_field(line: str) -> None:
    text = "Suite: testing\nDate: Sat, 01 Nov 2026 12:00:00 UTC\n" + line + "\n"
    if not line.startswith("SHA256"):
        text += f"SHA256:\n {HEX} 3 main/binary-amd64/Packages\n"
    with pytest.raises(ArchiveError, match=WHAT):
        parse_release(text, what=WHAT)


def test_release_field_names_are_case_insensitive_and_only_the_first_paragraph_counts() -> None:
    text = f"suite: testing\ndate: Sat, 01 Nov 2026 12:00:00 +0000\nsha256:\n {HEX} 3 p\n\nSuite: evil\n"
    release = parse_release(text, what=WHAT)
    assert release.suite == "testing" and release.files == {"p": FileEntry(3, HEX)}


@pytest.mark.parametrize(("now", "allow", "fails"), [
    (DATE + timedelta(days=6), False, False),
    (DATE + timedelta(days=8), False, True),
    (DATE + timedelta(days=8), True, False),
])
def test_valid_until(now: datetime, allow: bool, fails: bool) -> None:
    release = make_release(valid_until=DATE + timedelta(days=7))
    if fails:
        with pytest.raises(ArchiveError, match="--no-check-valid-until") as caught:
            check_valid_until(release, now, allow_expired=allow, what=WHAT)
        assert WHAT in str(caught.value) and "expired" in str(caught.value)
    else:
        check_valid_until(release, now, allow_expired=allow, what=WHAT)


def test_release_without_valid_until_never_expires() -> None:
    check_valid_until(make_release(), DATE + timedelta(days=9999), allow_expired=False, what=WHAT)


# --- Index selection and hashes -----------------------------------------------------------------

@pytest.mark.parametrize(("listed", "chosen"), [
    (["", ".gz", ".xz"], ".xz"),
    (["", ".gz"], ".gz"),
    ([""], ""),
    ([".xz", ".gz"], ".xz"),
])
def test_index_path_prefers_xz_then_gz(listed: list[str], chosen: str) -> None:
    files = {f"main/binary-amd64/Packages{suffix}": suffix.encode() for suffix in listed}
    files["main/binary-arm64/Packages.bz2"] = b"other"
    path, entry = index_path(make_release(files=files), "main", "amd64")
    assert path == f"main/binary-amd64/Packages{chosen}"
    assert entry.size == len(chosen)


def test_index_path_missing_names_suite_component_and_arch() -> None:
    with pytest.raises(ArchiveError, match="forky.*'contrib'.*'riscv64'") as caught:
        index_path(make_release(), "contrib", "riscv64")
    assert "amd64 arm64" in str(caught.value)


def test_by_hash_path() -> None:
    assert by_hash_path("main/binary-amd64/Packages.xz", FileEntry(1, HEX)) == (
        f"main/binary-amd64/by-hash/SHA256/{HEX}")


def test_verify_bytes() -> None:
    entry = FileEntry(size=3, sha256=archive.hashlib.sha256(b"abc").hexdigest())
    verify_bytes(b"abc", entry, what=PACKAGES_WHAT)
    with pytest.raises(ArchiveError, match=f"{PACKAGES_WHAT}: size 4, expected 3"):
        verify_bytes(b"abcd", entry, what=PACKAGES_WHAT)
    with pytest.raises(ArchiveError, match=f"{PACKAGES_WHAT}: SHA256 mismatch \\(expected {entry.sha256}, got "):
        verify_bytes(b"abd", entry, what=PACKAGES_WHAT)


@pytest.mark.parametrize(("path", "pack"), [
    ("Packages.xz", lzma.compress), ("Packages.gz", gzip.compress), ("Packages", lambda data: data)])
def test_decompress_by_suffix(path: str, pack: object) -> None:
    assert decompress(pack(b"Package: a\n"), path) == b"Package: a\n"  # type: ignore[operator]


@pytest.mark.parametrize("path", ["Packages.xz", "Packages.gz"])
def test_decompress_garbage(path: str) -> None:
    with pytest.raises(ArchiveError, match=path):
        decompress(b"not compressed", path)


def test_xz_in_pieces_is_what_lzma_decompress_gives() -> None:
    from ocistrap.debian.archive import decompressed_chunks
    first, second = os.urandom(5000).hex().encode(), b"Package: b\n" * 3000
    packed = lzma.compress(first) + lzma.compress(second)
    pieces = list(decompressed_chunks(packed, "Packages.xz", size=4096))
    assert b"".join(pieces) == lzma.decompress(packed) == first + second
    assert max(map(len, pieces)) == 4096
    for broken in (packed[:-7], lzma.compress(first)[:-30], packed + b"trailing garbage"):
        with pytest.raises(ArchiveError, match="Packages.xz: cannot decompress"):
            list(decompressed_chunks(broken, "Packages.xz", size=4096))


# --- Packages -----------------------------------------------------------------------------------

def stanza(name: str, **fields: str) -> str:
    base = {"Package": name, "Version": "1.0", "Architecture": "amd64",
            "Filename": f"pool/main/{name[0]}/{name}/{name}_1.0_amd64.deb", "Size": "1234", "SHA256": HEX}
    base.update(fields)
    return "".join(f"{key}: {value}\n" for key, value in base.items() if value is not None)


GENERATED_INDEX = "\n".join([
    stanza("base-files", Essential="yes", Priority="required", **{"Multi-Arch": "foreign"}),
    stanza("libc6", Depends="libgcc-s1, libc-bin (= 2.36)", **{"Pre-Depends": "libgcc-s1"}),
    stanza("folded", Depends="a,\n b (>= 1),\n\tc", Description="short\n long line one\n .\n line two"),
    stanza("lower", **{"multi-arch": "same", "essential": "Yes", "priority": "important"}),
    stanza("relations", Recommends="r", Provides="p (= 1)", Conflicts="c", Breaks="b", Source="src (0.9)"),
    stanza("empty-essential", Essential="no", Homepage="http://x/a:b"),
]) + "\n\n\n"


def test_parse_packages_matches_python_debian_on_a_generated_index() -> None:
    data = GENERATED_INDEX.encode()
    packages = parse_packages(data, what=PACKAGES_WHAT)
    assert packages == deb822_packages(data)
    by_name = {package.name: package for package in packages}
    assert by_name["base-files"].essential and by_name["base-files"].priority == "required"
    assert by_name["base-files"].multi_arch == "foreign"
    assert by_name["libc6"].multi_arch == "no" and by_name["libc6"].priority == "optional"
    assert by_name["folded"].depends == "a, b (>= 1), c"
    assert by_name["lower"].essential and by_name["lower"].multi_arch == "same"
    assert by_name["relations"].source == "src (0.9)"
    assert by_name["empty-essential"].essential is False


def test_parse_packages_matches_python_debian_on_a_built_repository(repo: RepoBuilder) -> None:
    repo.add_deb("base-files", "13.1", essential=True, priority="required", multi_arch="foreign")
    repo.add_deb("libfoo1", "2:1.0-1", depends="base-files (>= 13)", pre_depends="dpkg", provides="libfoo")
    repo.add_deb("foo-data", "1.0", architecture="all", files={"usr/share/foo/a": b"a", "etc/foo.conf": b"x=1\n"})
    dist = repo.write("testing")
    data = (dist / "main/binary-amd64/Packages").read_bytes()
    packages = parse_packages(data, what=PACKAGES_WHAT)
    assert packages == deb822_packages(data)
    assert [p.name for p in packages] == ["base-files", "libfoo1", "foo-data"]
    assert packages[1].version == "2:1.0-1" and packages[1].filename.endswith("libfoo1_2%3a1.0-1_amd64.deb")


@pytest.mark.parametrize(("text", "message"), [
    (stanza("nover", Version=None), "package nover lacks version"),
    (stanza("nofile", Filename=None, SHA256=None), "package nofile lacks filename, sha256"),
    (stanza("noarch", Architecture=None), "package noarch lacks architecture"),
    (stanza("nosize", Size=None), "package nosize lacks size"),
    (stanza("badsize", Size="12k"), "package badsize has Size '12k'"),
    (stanza("negsize", Size="-1"), "package negsize has Size"),
    (stanza("badhash", SHA256="abc"), "package badhash has a malformed SHA256"),
    (stanza("x", Package=None), "package stanza 'Version"),
    ("Package:\nVersion: 1\n", "package stanza 'Package:"),
])
def test_parse_packages_refuses_malformed_stanzas(text: str, message: str) -> None:
    data = (stanza("good") + "\n" + text).encode()
    with pytest.raises(ArchiveError, match=message) as caught:
        parse_packages(data, what=PACKAGES_WHAT)
    assert PACKAGES_WHAT in str(caught.value)


def test_parse_packages_of_empty_index() -> None:
    assert parse_packages(b"", what=PACKAGES_WHAT) == []
    assert parse_packages(b"\n\n \n", what=PACKAGES_WHAT) == []


def test_parse_packages_in_pieces_cut_anywhere_is_the_same() -> None:
    data = ("\n\n\n" + GENERATED_INDEX + "\n \n\n" + stanza("zz", Description="caf\u00e9 \U0001f600")).encode()
    whole = parse_packages(data, what=PACKAGES_WHAT)
    assert len(whole) > 3
    for cut in range(len(data) + 1):
        assert parse_packages(iter([data[:cut], data[cut:]]), what=PACKAGES_WHAT) == whole
    assert parse_packages((data[n:n + 7] for n in range(0, len(data), 7)), what=PACKAGES_WHAT) == whole


def test_parse_packages_shares_equal_values_of_repeated_fields() -> None:
    text = "".join(stanza(name) + "Depends: libc6 (>= 2.36)\nSource: gcc\n\n" for name in ("a", "b"))
    first, second = parse_packages(text.encode(), what=PACKAGES_WHAT)
    assert first.depends == "libc6 (>= 2.36)" and first.source == "gcc"
    assert first.depends is second.depends and first.source is second.source
    assert first.architecture is second.architecture


def test_an_index_given_whole_is_decoded_a_piece_at_a_time() -> None:
    data = "".join(stanza(f"p{n}", Description="caf\u00e9") + "\n" for n in range(200)).encode()
    texts = list(archive._texts([data], size=1000))
    assert len(texts) > 20 and max(map(len, texts)) < 1000 + len(stanza("p199"))
    assert "\n\n".join(texts) + "\n\n" == data.decode()


def test_package_columns_are_package_fields_in_order() -> None:
    assert tuple(archive.COLUMN_FIELDS) == archive.PACKAGE_COLUMNS
    data = GENERATED_INDEX.encode()
    columns = archive.parse_package_columns(data, what=PACKAGES_WHAT)
    assert [len(column) for column in columns] == [6] * len(archive.PACKAGE_COLUMNS)
    assert archive.packages_from_columns(columns) == parse_packages(data, what=PACKAGES_WHAT)
    by_column = dict(zip(archive.PACKAGE_COLUMNS, columns))
    assert by_column["size"] == [1234] * 6 and by_column["essential"] == [True, False, False, True, False, False]


def test_packages_from_columns_makes_ordinary_frozen_packages() -> None:
    one = Package(name="a", version="1", architecture="amd64", essential=True, filename="pool/a.deb", size=3,
                  sha256=HEX)
    (made,) = archive.packages_from_columns([[getattr(one, name)] for name in archive.PACKAGE_COLUMNS])
    assert made == one and hash(made) == hash(one) and repr(made) == repr(one)
    with pytest.raises(AttributeError):
        made.name = "b"  # type: ignore[misc]
    assert archive.packages_from_columns([[] for _ in archive.PACKAGE_COLUMNS]) == []


def test_field_names_in_any_case_values_stripped_last_of_a_repeated_field_wins() -> None:
    text = (stanza("mixed", Version="1.0 \t", **{"DEPENDS": "a,  \n b", "pre-depends": "c ",
                                                  "MULTI-arch": "same"})
            + "Source: first\nsource: second\nPriority:\nSHA256: " + "cd" * 32 + "\n")
    (package,) = parse_packages(text.encode(), what=PACKAGES_WHAT)
    assert (package.version, package.depends, package.pre_depends) == ("1.0", "a, b", "c")
    assert (package.multi_arch, package.source, package.priority, package.sha256) == (
        "same", "second", "", "cd" * 32)


def test_a_bad_stanza_deep_in_an_index_read_in_pieces_is_the_one_named() -> None:
    good = "".join(stanza(f"pkg{n}", Depends=f"dep{n % 7}") + "\n" for n in range(3000))
    bad = stanza("broken", Size="12k") + "\n" + stanza("worse", Version=None) + "\n"
    data = (good + bad + good).encode()
    pieces = (data[n:n + 65536] for n in range(0, len(data), 65536))
    with pytest.raises(ArchiveError, match="package broken has Size '12k'"):
        parse_packages(pieces, what=PACKAGES_WHAT)
    assert len(parse_packages((good + good).encode(), what=PACKAGES_WHAT)) == 6000


@pytest.mark.parametrize("enabled", [True, False])
def test_parsing_leaves_the_cyclic_gc_as_it_found_it(enabled: bool) -> None:
    import gc
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        parse_packages(GENERATED_INDEX.encode(), what=PACKAGES_WHAT)
        assert gc.isenabled() is enabled
        with pytest.raises(ArchiveError):
            parse_packages(stanza("x", Size="no").encode(), what=PACKAGES_WHAT)
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


def line_by_line(data: bytes) -> list[Package] | None:
    """The reference: the plain reading of each stanza, line by line, keyed case-insensitively;
    None where ``parse_packages`` must refuse the index."""
    lookup = archive.field_lookup(archive.COLUMN_FIELDS.values())
    one_line = archive._one_line
    packages = []
    for paragraph in data.split(b"\n\n"):
        if not paragraph or paragraph.isspace():
            continue
        fields = archive.paragraph_fields(paragraph.decode("utf-8", "replace"), lookup)
        if not all(fields.get(name) for name in ("package", "version", "architecture", "filename", "size",
                                                  "sha256")):
            return None
        if not (fields["size"].isascii() and fields["size"].isdigit()) or \
                not archive.SHA256_RE.fullmatch(fields["sha256"]):
            return None
        values = {column: one_line(fields.get(field.lower(), archive._FIELD_DEFAULTS.get(field, "")))
                  for column, field in archive.COLUMN_FIELDS.items()}
        packages.append(Package(**{**values, "essential": fields.get("essential", "").lower() == "yes",
                                   "size": int(fields["size"]), "sha256": fields["sha256"]}))
    return packages


FIELD_LINE = st.tuples(
    st.sampled_from([*archive.COLUMN_FIELDS.values(), "Description", "Tag", "X"]).flatmap(
        lambda name: st.sampled_from([name, name.lower(), name.upper(), name.swapcase()])),
    st.sampled_from([":", ":", ": ", ":\t", " :", ""]),
    st.sampled_from(["1234", HEX, "yes", "Yes", "foreign", "a, b (>= 1)", "", " ", "x\xa0", "\u3000y",
                     "12k", "é"]),
    st.sampled_from(["", " ", "\t", "\r", "\xa0"]),
    st.lists(st.sampled_from([" more", "\tmore ", " .", " ", "\t"]), max_size=2),
).map(lambda t: f"{t[0]}{t[1]}{t[2]}{t[3]}" + "".join("\n" + line for line in t[4]))
STANZAS = st.lists(st.lists(FIELD_LINE, max_size=8).map("\n".join), max_size=4).map(
    lambda stanzas: "\n\n".join(stanza(f"p{n}") + text for n, text in enumerate(stanzas)))


@settings(max_examples=400, deadline=None)
@given(STANZAS, st.integers(min_value=1, max_value=300))
def test_parse_packages_reads_what_a_line_by_line_reading_reads(text: str, piece: int) -> None:
    """The regular expression that picks fields out of a stanza keeps to the plain reading:
    field names in any case, whitespace around values, continuation lines, repeated fields."""
    data = text.encode()
    expected = line_by_line(data)
    pieces = (data[n:n + piece] for n in range(0, len(data), piece))
    if expected is None:
        with pytest.raises(ArchiveError):
            parse_packages(pieces, what=PACKAGES_WHAT)
    else:
        assert parse_packages(pieces, what=PACKAGES_WHAT) == expected


FIELD_TEXT = st.text(alphabet=st.sampled_from(list("Package:Version Size SHA256 abf0123456789\n \t-:,()") + ["é"]))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), FIELD_TEXT.map(str.encode)))
def test_fuzz_parse_packages_returns_or_raises_archive_error(data: bytes) -> None:
    try:
        packages = parse_packages(data, what=PACKAGES_WHAT)
    except ArchiveError:
        return
    assert all(isinstance(package, Package) and package.size >= 0 for package in packages)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400), FIELD_TEXT, st.builds(
    lambda date, rest: f"Date: {date}\nSHA256:\n{rest}", st.text(max_size=40), FIELD_TEXT)))
def test_fuzz_parse_release_returns_or_raises_archive_error(text: str) -> None:
    try:
        release = parse_release(text, what=WHAT)
    except ArchiveError:
        return
    assert release.date.tzinfo is not None
    assert all(len(entry.sha256) == 64 and entry.size >= 0 for entry in release.files.values())


# --- The whole chain on a generated, signed repository ------------------------------------------

def chain(root: Path, suite: str, keyring: Path, *, fetch_path: str | None = None) -> list[Package]:
    """InRelease -> Release -> Packages, as the mirror module strings them together."""
    signed = openpgp.verify_clearsigned((root / f"dists/{suite}/InRelease").read_bytes(), [keyring], what=WHAT)
    release = parse_release(signed.decode(), what=WHAT)
    path, entry = index_path(release, "main", "amd64")
    data = (root / f"dists/{suite}" / (fetch_path or path)).read_bytes()
    verify_bytes(data, entry, what=path)
    return parse_packages(decompress(data, path), what=path)


def test_signed_repository_chain(repo: RepoBuilder, signing_key: SigningKey) -> None:
    repo.add_deb("hello", "2.10-3", depends="libc6")
    repo.write("testing", by_hash=True, valid_until=datetime.now(timezone.utc) + timedelta(days=1))
    packages = chain(repo.root, "testing", signing_key.keyring)
    assert [(p.name, p.version, p.depends) for p in packages] == [("hello", "2.10-3", "libc6")]
    deb = (repo.root / packages[0].filename).read_bytes()
    verify_bytes(deb, FileEntry(packages[0].size, packages[0].sha256), what=packages[0].filename)
    release = parse_release((repo.root / "dists/testing/Release").read_text(), what=WHAT)
    path, entry = index_path(release, "main", "amd64")
    assert path.endswith(".xz") and release.acquire_by_hash
    assert chain(repo.root, "testing", signing_key.keyring, fetch_path=by_hash_path(path, entry)) == packages
    openpgp.verify_detached((repo.root / "dists/testing/Release").read_bytes(),
                            (repo.root / "dists/testing/Release.gpg").read_bytes(), [signing_key.keyring], what=WHAT)


def test_tampered_repository_is_caught(repo: RepoBuilder, signing_key: SigningKey, other_key: SigningKey) -> None:
    repo.add_deb("hello")
    repo.write("testing")
    repo.flip_byte("dists/testing/main/binary-amd64/Packages.xz")
    with pytest.raises(ArchiveError, match="SHA256 mismatch"):
        chain(repo.root, "testing", signing_key.keyring)
    repo.truncate("dists/testing/main/binary-amd64/Packages.xz")
    with pytest.raises(ArchiveError, match="size"):
        chain(repo.root, "testing", signing_key.keyring)
    repo.resign("testing", other_key)
    with pytest.raises(ArchiveError, match="no given keyring holds"):
        chain(repo.root, "testing", signing_key.keyring)


def test_expired_repository(repo: RepoBuilder) -> None:
    repo.write("testing", valid_until=datetime.now(timezone.utc) - timedelta(hours=1))
    release = parse_release((repo.root / "dists/testing/Release").read_text(), what=WHAT)
    with pytest.raises(ArchiveError, match="--no-check-valid-until"):
        check_valid_until(release, datetime.now(timezone.utc), allow_expired=False, what=WHAT)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_http_mirror_serves_and_misbehaves_on_request(repo: RepoBuilder, http_mirror: Mirror,
                                                      signing_key: SigningKey) -> None:
    repo.add_deb("hello")
    repo.write("testing")
    inrelease = http_mirror.url + "/dists/testing/InRelease"
    assert get(inrelease) == (repo.root / "dists/testing/InRelease").read_bytes()
    http_mirror.tamper("dists/testing/InRelease", body=get(inrelease).replace(b"testing", b"tasting"), times=1)
    with pytest.raises(ArchiveError, match="BAD signature"):
        openpgp.verify_clearsigned(get(inrelease), [signing_key.keyring], what=inrelease)
    assert openpgp.verify_clearsigned(get(inrelease), [signing_key.keyring], what=inrelease)
    http_mirror.tamper("dists/testing/Release", status=503)
    with pytest.raises(urllib.error.HTTPError, match="503"):
        get(http_mirror.url + "/dists/testing/Release")
    http_mirror.tamper("moved", redirect="/dists/testing/Release.gpg")
    assert get(http_mirror.url + "/moved") == (repo.root / "dists/testing/Release.gpg").read_bytes()
    http_mirror.tamper("dists/testing/Release.gpg", cut_after=10)
    with pytest.raises(Exception, match="IncompleteRead|Remote end closed|incomplete"):
        get(http_mirror.url + "/dists/testing/Release.gpg")
    with pytest.raises(urllib.error.HTTPError, match="404"):
        get(http_mirror.url + "/../../etc/passwd")
    request = urllib.request.Request(inrelease, headers={"Range": "bytes=10-"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 206 and response.read() == get(inrelease)[10:]
    http_mirror.tamper("slow", delay=30)
    with pytest.raises(Exception, match="timed out"):
        urllib.request.urlopen(http_mirror.url + "/slow", timeout=0.5)
    assert "dists/testing/InRelease" in http_mirror.requests


# --- Debian itself ------------------------------------------------------------------------------

def debian_release(suite: str) -> tuple[archive.Release, str]:
    if not DEBIAN_KEYRING.exists():
        pytest.skip("debian-archive-keyring is not installed")
    url = f"{DEBIAN}/dists/{suite}/InRelease"
    signed = openpgp.verify_clearsigned(get_slow(url), [DEBIAN_KEYRING], what=url)
    return parse_release(signed.decode(), what=url), f"{DEBIAN}/dists/{suite}/"


def get_slow(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def fetch_index(suite: str) -> bytes:
    release, base = debian_release(suite)
    path, entry = index_path(release, "main", "amd64")
    data = get_slow(base + path)
    verify_bytes(data, entry, what=base + path)
    return decompress(data, path)


@pytest.mark.network
def test_real_bookworm_packages_match_python_debian() -> None:
    data = fetch_index("bookworm")
    packages = parse_packages(data, what="bookworm main/binary-amd64")
    assert len(packages) > 60_000
    assert packages == deb822_packages(data)
    assert {p.name for p in packages if p.essential} >= {"base-files", "dpkg", "libc-bin"}


@pytest.mark.network
def test_real_sid_packages_parse() -> None:
    """sid's 65 MB index, and its Valid-Until noticed once passed (how fast it parses is for `make bench`:
    a timed test fails on a busy machine)."""
    release, base = debian_release("sid")
    assert release.valid_until is not None
    with pytest.raises(ArchiveError, match="--no-check-valid-until"):
        check_valid_until(release, release.valid_until + timedelta(seconds=1), allow_expired=False, what=base)
    data = fetch_index("sid")
    start = time.perf_counter()
    packages = parse_packages(data, what="sid main/binary-amd64")
    elapsed = time.perf_counter() - start
    print(f"parsed {len(packages)} stanzas ({len(data) >> 20} MiB) of sid in {elapsed:.2f} s")
    assert len(packages) > 70_000
