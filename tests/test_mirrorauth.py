"""Mirror logins: read as apt reads auth.conf, sent only where they apply, written nowhere."""

import base64
import json
import urllib.parse
from pathlib import Path

import pytest
from lockfetch_support import SUITE, Archive, archive, assert_one_error, fast_fetcher, template  # noqa: F401  (fixtures)
from repo_factory import serving

from ocistrap import pipeline
from ocistrap.cli import main
from ocistrap.debian import lock
from ocistrap.debian.mirrorauth import MirrorLogins, parse, read, split_userinfo, without_userinfo
from ocistrap.errors import ArchiveError, UsageError
from ocistrap.oci import sbom
from ocistrap.rootfs import bootplan

URI = "https://example.org/debian/dists/bookworm/InRelease"


@pytest.mark.parametrize("machine, applies", [
    ("example.org", True),
    ("example.org/deb", True),
    ("example.org/debian", True),
    ("example.org/debian/", True),
    ("https://example.org", True),
    ("example.org:443", False),
    ("example.org/deb/", False),
    ("example.org/ubuntu", False),
    ("example.orga", False),
    ("example.net", False),
    ("http://example.org", False),
])
def test_an_entry_applies_where_apt_auth_conf_says(machine: str, applies: bool) -> None:
    logins = parse(f"machine {machine} login apt password debian\n", what="auth.conf")
    assert logins.for_url(URI) == (("apt", "debian") if applies else None)


def test_an_entry_without_a_scheme_is_never_sent_over_http() -> None:
    logins = parse("machine example.org login apt password debian", what="auth.conf")
    assert logins.for_url(URI.replace("https:", "http:")) is None
    assert parse("machine http://example.org login apt password debian",
                 what="auth.conf").for_url(URI.replace("https:", "http:")) == ("apt", "debian")


def test_entries_span_lines_skip_unknown_words_and_the_first_match_wins() -> None:
    text = ("# a comment, ignored\nmachine example.org/debian\n  login first\n  account x\n  password one\n"
            "machine example.org login second password two\n")
    logins = parse(text, what="auth.conf")
    assert logins.for_url(URI) == ("first", "one")
    assert logins.for_url("https://example.org/ubuntu/x") == ("second", "two")


@pytest.mark.parametrize("text, words", [
    ("machine example.org password s3cret", "example.org lacks a login"),
    ("login apt password s3cret", "no machine"),
    ("machine example.org:port login a password s3cret", "not a port"),
])
def test_a_broken_entry_is_named_without_its_secret(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words) as caught:
        parse(text, what="auth.conf")
    assert "s3cret" not in str(caught.value)


def test_a_password_never_shows_in_a_repr() -> None:
    logins = parse("machine example.org login apt password hunter2", what="auth.conf")
    assert "hunter2" not in repr(logins)


def test_apt_files_this_user_cannot_read_are_skipped_but_a_named_one_is_not(tmp_path: Path) -> None:
    readable = tmp_path / "auth.conf"
    readable.write_text("machine example.org login apt password debian\n")
    logins = read([], apt_files=[tmp_path / "absent.conf", readable])
    assert logins.for_url(URI) == ("apt", "debian")
    with pytest.raises(UsageError, match="absent.conf"):
        read([tmp_path / "absent.conf"], apt_files=[])


def test_a_login_in_a_url_is_taken_out_for_that_mirror_only() -> None:
    plain, logins = split_userinfo("https://us%40er:p%3Ass@example.org:8443/debian/")
    assert plain == "https://example.org:8443/debian/"
    assert logins.for_url("https://example.org:8443/debian/dists/x/InRelease") == ("us@er", "p:ss")
    for elsewhere in ("https://example.org:8443/debian-security/x", "https://example.org/debian/x",
                      "http://example.org:8443/debian/x", "https://mirror.example.org:8443/debian/x"):
        assert logins.for_url(elsewhere) is None, elsewhere
    assert split_userinfo("https://example.org/debian") == ("https://example.org/debian", MirrorLogins())
    assert without_userinfo("http://token@example.org/x") == "http://example.org/x"


def test_a_lockfile_with_a_login_in_a_mirror_url_is_refused_without_showing_it(archive: Archive) -> None:
    rc, _, err = archive.lock()
    assert rc == 0, err
    text = archive.lockfile.read_text().replace("http://", "http://mirroruser:tok3n@")
    with pytest.raises(ArchiveError, match="auth file") as caught:
        lock.loads(text.encode(), what="x.lock")
    assert "tok3n" not in str(caught.value) and "mirroruser" not in str(caught.value)
    archive.lockfile.write_text(text)
    rc, _, err = archive.fetch()
    line = assert_one_error(rc, err, str(archive.lockfile), archive.mirror.url)
    assert "tok3n" not in line


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def test_a_login_in_the_mirror_url_is_sent_to_it_and_written_nowhere(
        archive: Archive, capsys: pytest.CaptureFixture[str]) -> None:
    host = archive.mirror.url.removeprefix("http://")
    capsys.readouterr()
    rc = main(["--log-format", "json", "lock", SUITE, "--mirror", f"http://mirroruser:tok3n%2Fx@{host}",
               *archive.common(), "--arch", "amd64", "--variant", "essential", "-o", str(archive.lockfile)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert archive.mirror.authorizations
    assert {auth for _, auth in archive.mirror.authorizations} == {basic("mirroruser", "tok3n/x")}
    locked = lock.read(archive.lockfile)
    written = {
        "lockfile": archive.lockfile.read_text(),
        "stdout": out,
        "log": err,
        "apt sources": bootplan.sources_text(locked.archives, locked.components, ["/k.gpg"]),
        "SBOM": json.dumps(sbom.spdx(locked, "amd64", created="2024-01-01T00:00:00Z")),
        "annotations": json.dumps(pipeline.provenance_of(locked).annotations("2024-01-01T00:00:00Z")),
    }
    assert archive.mirror.url in written["apt sources"] and archive.mirror.url in written["SBOM"]
    for where, text in written.items():
        assert "mirroruser" not in text and "tok3n" not in text, where


def test_an_auth_file_login_goes_to_its_host_only(archive: Archive, tmp_path: Path) -> None:
    port = urllib.parse.urlsplit(archive.mirror.url).port
    auth = tmp_path / "auth.conf"
    auth.write_text(f"machine http://127.0.0.1:{port}\n  login mirroruser\n  password tok3n\n")
    index = archive.dist("main/binary-amd64/Packages.xz")
    with serving(archive.repo.root) as other:
        elsewhere = other.url.replace("127.0.0.1", "localhost")
        archive.mirror.tamper(index, redirect=f"{elsewhere}/{index}")
        archive.mirror.tamper(archive.deb("dash"), redirect=f"{elsewhere}/{archive.deb('dash')}")
        rc, _, err = archive.lock("--auth-file", str(auth))
        assert rc == 0, err
        rc, _, err = archive.fetch("--auth-file", str(auth))
        assert rc == 0, err
    assert {auth for _, auth in archive.mirror.authorizations} == {basic("mirroruser", "tok3n")}
    assert sorted(path for path, _ in other.authorizations) == sorted([index, archive.deb("dash")])
    assert {auth for _, auth in other.authorizations} == {None}
