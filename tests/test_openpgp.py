import shutil
import urllib.request
from pathlib import Path

import pytest
from repo_factory import EXPIRED_KEY_TIME, SigningKey

from ocistrap.debian import openpgp
from ocistrap.debian.openpgp import judge_gpgv, split_clearsigned, verify_clearsigned, verify_detached
from ocistrap.errors import ArchiveError

WHAT = "http://mirror.example/debian/dists/testing/InRelease"
TEXT = b"Origin: Test\nSuite: testing\n- a line with a dash\ntrailing blanks  \t\n\nSHA256:\n 00 1 x\n"
SIGNED_TEXT = b"Origin: Test\nSuite: testing\n- a line with a dash\ntrailing blanks\n\nSHA256:\n 00 1 x\n"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BOOKWORM_STABLE_KEYRING = Path("/usr/share/keyrings/debian-archive-bookworm-stable.gpg")


@pytest.fixture(params=["gpgv", "sqv"])
def verifier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test once through gpgv and once through the sqv fallback."""
    executable = shutil.which(request.param)
    if executable is None:
        pytest.skip(f"{request.param} is not installed")
    monkeypatch.setattr(openpgp, "find_verifier", lambda: (request.param, executable))
    return request.param


@pytest.fixture(scope="module")
def inrelease(signing_key: SigningKey) -> bytes:
    return signing_key.clearsign(TEXT)


@pytest.fixture(scope="module")
def detached(signing_key: SigningKey) -> bytes:
    return signing_key.detach_sign(TEXT)


def test_good_clearsigned_returns_exactly_the_signed_text(verifier: str, inrelease: bytes,
                                                          signing_key: SigningKey) -> None:
    assert verify_clearsigned(inrelease, [signing_key.keyring], what=WHAT) == SIGNED_TEXT


def test_changed_byte_in_inrelease_is_a_bad_signature(verifier: str, inrelease: bytes,
                                                      signing_key: SigningKey) -> None:
    tampered = inrelease.replace(b"Suite: testing", b"Suite: testinG")
    with pytest.raises(ArchiveError, match="BAD signature") as caught:
        verify_clearsigned(tampered, [signing_key.keyring], what=WHAT)
    assert WHAT in str(caught.value)


@pytest.mark.parametrize("where", ["before", "after"])
def test_unsigned_text_around_the_signed_block_is_refused(verifier: str, inrelease: bytes,
                                                          signing_key: SigningKey, where: str) -> None:
    extra = b"Suite: evil\nSHA256:\n " + b"f" * 64 + b" 1 main/binary-amd64/Packages\n"
    data = extra + inrelease if where == "before" else inrelease + extra
    with pytest.raises(ArchiveError, match=WHAT):
        verify_clearsigned(data, [signing_key.keyring], what=WHAT)


def test_signature_by_unknown_key_names_the_key_and_the_remedy(verifier: str, inrelease: bytes,
                                                              other_key: SigningKey,
                                                              signing_key: SigningKey) -> None:
    with pytest.raises(ArchiveError, match="no given keyring holds") as caught:
        verify_clearsigned(inrelease, [other_key.keyring], what=WHAT)
    assert WHAT in str(caught.value)
    assert "--keyring FILE" in str(caught.value)
    assert signing_key.fingerprint[-16:] in str(caught.value)


def test_missing_keyring_is_named(verifier: str, inrelease: bytes, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gpg"
    with pytest.raises(ArchiveError, match="cannot be read") as caught:
        verify_clearsigned(inrelease, [missing], what=WHAT)
    assert str(missing) in str(caught.value) and WHAT in str(caught.value)
    assert "--keyring FILE" in str(caught.value)


def test_unreadable_or_empty_keyring_or_none_at_all(inrelease: bytes, tmp_path: Path) -> None:
    empty = tmp_path / "empty.gpg"
    empty.write_bytes(b"")
    with pytest.raises(ArchiveError, match="is empty"):
        verify_clearsigned(inrelease, [empty], what=WHAT)
    with pytest.raises(ArchiveError, match="cannot be read"):
        verify_clearsigned(inrelease, [tmp_path], what=WHAT)
    with pytest.raises(ArchiveError, match="no keyring"):
        verify_clearsigned(inrelease, [], what=WHAT)


def test_unsigned_file_is_refused(verifier: str, signing_key: SigningKey) -> None:
    with pytest.raises(ArchiveError, match="not a clearsigned"):
        verify_clearsigned(TEXT, [signing_key.keyring], what=WHAT)


def test_signature_by_expired_key_is_refused(inrelease: bytes, expired_key: SigningKey) -> None:
    """gpgv judges key expiry now (sqv judges it at signing time, so this is gpgv's case)."""
    if shutil.which("gpgv") is None:
        pytest.skip("gpgv is not installed")
    data = expired_key.clearsign(TEXT, faked_time=EXPIRED_KEY_TIME)
    with pytest.raises(ArchiveError, match="expired key") as caught:
        verify_clearsigned(data, [expired_key.keyring], what=WHAT)
    assert WHAT in str(caught.value)


def test_armored_keyring_and_relative_path_work(verifier: str, inrelease: bytes, signing_key: SigningKey,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "archive.asc").write_bytes(signing_key.gpg("--armor", "--export", signing_key.fingerprint))
    monkeypatch.chdir(tmp_path)
    assert verify_clearsigned(inrelease, [Path("archive.asc")], what=WHAT) == SIGNED_TEXT


def test_no_verifier_installed(monkeypatch: pytest.MonkeyPatch, inrelease: bytes, signing_key: SigningKey) -> None:
    monkeypatch.setattr(openpgp.shutil, "which", lambda name: None)
    with pytest.raises(ArchiveError, match="neither gpgv nor sqv"):
        verify_clearsigned(inrelease, [signing_key.keyring], what=WHAT)


def test_good_detached_signature(verifier: str, detached: bytes, signing_key: SigningKey) -> None:
    verify_detached(TEXT, detached, [signing_key.keyring], what=WHAT)


def test_detached_signature_over_changed_data(verifier: str, detached: bytes, signing_key: SigningKey) -> None:
    with pytest.raises(ArchiveError, match="BAD signature"):
        verify_detached(TEXT.replace(b"testing", b"unstable"), detached, [signing_key.keyring], what=WHAT)


def test_detached_signature_by_unknown_key(verifier: str, detached: bytes, other_key: SigningKey) -> None:
    with pytest.raises(ArchiveError, match="no given keyring holds"):
        verify_detached(TEXT, detached, [other_key.keyring], what=WHAT)


def test_detached_missing_keyring(verifier: str, detached: bytes, tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="cannot be read"):
        verify_detached(TEXT, detached, [tmp_path / "none.gpg"], what=WHAT)


@pytest.mark.parametrize("signature", [b"", b"not a signature at all\n"])
def test_detached_garbage_signature(verifier: str, signing_key: SigningKey, signature: bytes) -> None:
    with pytest.raises(ArchiveError, match=WHAT):
        verify_detached(TEXT, signature, [signing_key.keyring], what=WHAT)


def test_a_signed_message_is_no_detached_signature(verifier: str, signing_key: SigningKey) -> None:
    """An inline-signed blob must not vouch for different data passed beside it."""
    inline = signing_key.gpg("--sign", data=TEXT)
    with pytest.raises(ArchiveError, match=WHAT):
        verify_detached(b"Suite: evil\n", inline, [signing_key.keyring], what=WHAT)


def test_split_clearsigned_handles_crlf(inrelease: bytes) -> None:
    text, signature = split_clearsigned(inrelease.replace(b"\n", b"\r\n"), what=WHAT)
    assert text == SIGNED_TEXT
    assert signature.startswith(b"-----BEGIN PGP SIGNATURE-----\n")
    assert signature.endswith(b"-----END PGP SIGNATURE-----\n")


@pytest.mark.parametrize("data", [
    b"",
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\ntext\n",
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\ntext\n-----BEGIN PGP SIGNATURE-----\nabc\n",
    b"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n--not escaped\n-----BEGIN PGP SIGNATURE-----\n"
    b"-----END PGP SIGNATURE-----\n",
])
def test_split_clearsigned_refuses_malformed_messages(data: bytes) -> None:
    with pytest.raises(ArchiveError, match=WHAT):
        split_clearsigned(data, what=WHAT)


FPR_A = "A" * 40
FPR_B = "B" * 40


def status(*lines: str) -> str:
    return "".join(f"[GNUPG:] {line}\n" for line in lines)


GOOD_A = ("NEWSIG", "GOODSIG AAAAAAAAAAAAAAAA A", f"VALIDSIG {FPR_A} 2026-01-01 1 0 4 0 22 8 01 {FPR_A}")
UNKNOWN_B = ("NEWSIG", "ERRSIG BBBBBBBBBBBBBBBB 1 8 01 1 9 " + FPR_B, "NO_PUBKEY BBBBBBBBBBBBBBBB")


def test_judge_gpgv_accepts_one_good_signature_among_unknown_keys() -> None:
    """Debian signs with several keys; holding one of them is enough, as for apt."""
    assert judge_gpgv(2, status("PLAINTEXT 74 0", *UNKNOWN_B, *GOOD_A), "", what=WHAT, plaintexts=1) == [FPR_A]


def test_judge_gpgv_names_the_primary_key_of_a_signing_subkey() -> None:
    """A keyring is known by its primary key; VALIDSIG's last field names it when a subkey signed."""
    subkey_signed = ("NEWSIG", "GOODSIG BBBBBBBBBBBBBBBB A", f"VALIDSIG {FPR_B} 2026-01-01 1 0 4 0 22 8 01 {FPR_A}")
    assert judge_gpgv(0, status("PLAINTEXT 74 0", *subkey_signed), "", what=WHAT, plaintexts=1) == [FPR_A]


@pytest.mark.parametrize(("returncode", "lines", "message"), [
    (0, ("PLAINTEXT 74 0",), "holds no OpenPGP signature"),
    (1, ("PLAINTEXT 74 0", *GOOD_A, "NEWSIG", "BADSIG BBBBBBBBBBBBBBBB B"), "BAD signature"),
    (2, ("PLAINTEXT 74 0", *UNKNOWN_B), "no given keyring holds"),
    (0, ("PLAINTEXT 74 0", "PLAINTEXT 74 0", *GOOD_A), "exactly one signed message"),
    (0, ("PLAINTEXT 74 0", *GOOD_A), "a detached signature"),
    (2, ("PLAINTEXT 74 0", *GOOD_A, "ERROR proc_pkt.plaintext 89_BAD_DATA"), "could not verify"),
    (0, ("PLAINTEXT 74 0", "NEWSIG", "GOODSIG AAAAAAAAAAAAAAAA A",
         f"VALIDSIG {FPR_A} 2026-01-01 1 0 4 0 22 2 01 {FPR_A}"), "weak digest SHA1"),
    (0, ("PLAINTEXT 74 0", "NEWSIG", "EXPKEYSIG AAAAAAAAAAAAAAAA A",
         f"VALIDSIG {FPR_A} 2020-01-01 1 0 4 0 22 8 01 {FPR_A}"), "expired key"),
    (0, ("PLAINTEXT 74 0", "NEWSIG", "REVKEYSIG AAAAAAAAAAAAAAAA A",
         f"VALIDSIG {FPR_A} 2020-01-01 1 0 4 0 22 8 01 {FPR_A}"), "revoked key"),
    (0, ("PLAINTEXT 74 0", "NEWSIG", "GOODSIG AAAAAAAAAAAAAAAA A"), "could not verify"),
    (3, ("PLAINTEXT 74 0", *GOOD_A), "could not verify"),
])
def test_judge_gpgv_refuses(returncode: int, lines: tuple[str, ...], message: str) -> None:
    plaintexts = 0 if message == "a detached signature" else 1
    with pytest.raises(ArchiveError, match=message) as caught:
        judge_gpgv(returncode, status(*lines), "gpgv: some detail", what=WHAT, plaintexts=plaintexts)
    assert WHAT in str(caught.value)


@pytest.mark.network
@pytest.mark.parametrize("keyring", [DEBIAN_KEYRING, BOOKWORM_STABLE_KEYRING])
def test_real_bookworm_inrelease(verifier: str, keyring: Path) -> None:
    """Debian's archive, signed by three keys; the stable release key alone must do."""
    if not keyring.exists():
        pytest.skip(f"{keyring} is not installed (package debian-archive-keyring)")
    url = "http://deb.debian.org/debian/dists/bookworm/InRelease"
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    text = verify_clearsigned(data, [keyring], what=url)
    assert b"Codename: bookworm\n" in text
    assert not text.startswith(b"-----BEGIN")
    with pytest.raises(ArchiveError, match="BAD signature"):
        verify_clearsigned(data.replace(b"Codename: bookworm", b"Codename: bookwurm"), [keyring], what=url)
