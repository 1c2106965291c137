"""`ocistrap key generate` and loading keys: mode 0600, no overwrite, passphrases, and every refusal in one line."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from ocistrap.cli import main
from ocistrap.oci import keys


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k.key", tmp_path / "k.pub"
    keys.generate(private, public, "correct horse")
    return private, public


def openssl_key(tmp_path: Path, name: str, *args: str) -> Path:
    path = tmp_path / name
    path.write_bytes(subprocess.run(["openssl", *args], capture_output=True, check=True).stdout)
    return path


def test_generate_writes_an_encrypted_p256_key_readable_by_its_owner_only(pair: tuple[Path, Path]) -> None:
    private, public = pair
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert keys.load_public(public).pem == public.read_bytes()


def test_generate_never_overwrites(pair: tuple[Path, Path], tmp_path: Path) -> None:
    private, _ = pair
    before = private.read_bytes()
    with pytest.raises(keys.KeyFileError, match="exists; a key is never overwritten"):
        keys.generate(private, tmp_path / "new.pub", "")
    assert private.read_bytes() == before
    assert not (tmp_path / "new.pub").exists()


def test_sign_and_verify_round_trip(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    private, public = pair
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "correct horse")
    signature = keys.load_private(private).sign(b"payload")
    assert signature[0] == 0x30  # ASN.1 DER SEQUENCE
    assert keys.load_public(public).verify(b"payload", signature)
    assert not keys.load_public(public).verify(b"payloaD", signature)


def test_another_key_does_not_verify(pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = keys.generate(tmp_path / "o.key", tmp_path / "o.pub", "")
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "correct horse")
    assert not other.verify(b"payload", keys.load_private(pair[0]).sign(b"payload"))


def test_an_unencrypted_key_needs_no_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    public = keys.generate(tmp_path / "u.key", tmp_path / "u.pub", "")
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    assert keys.load_private(tmp_path / "u.key").public == public


def test_passphrase_file(pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "wrong")
    (tmp_path / "pass").write_text("correct horse\n")
    assert keys.load_private(pair[0], passphrase_file=tmp_path / "pass").public == keys.load_public(pair[1])


def test_wrong_passphrase(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "incorrect horse")
    with pytest.raises(keys.KeyFileError, match="wrong passphrase for key") as caught:
        keys.load_private(pair[0])
    assert caught.value.exit_code == 2


def test_the_passphrase_travels_only_through_a_pipe(pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the argv nor the environment of an openssl child holds the passphrase."""
    seen: list[tuple[object, object]] = []
    real_run = subprocess.run

    def spy(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
        seen.append((args, kwargs.get("env")))
        return real_run(args, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(subprocess, "run", spy)
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "correct horse")
    keys.load_private(pair[0]).sign(b"x")
    monkeypatch.delenv(keys.PASSPHRASE_ENV)
    assert seen and all("correct horse" not in " ".join(args) and env is None for args, env in seen)  # type: ignore[arg-type]


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: openssl_key(d, "rsa.pem", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"),
     "is an RSA key; ocistrap signs with ECDSA P-256 keys"),
    (lambda d: openssl_key(d, "ed.pem", "genpkey", "-algorithm", "ed25519"), "is an Ed25519 key"),
    (lambda d: openssl_key(d, "p384.pem", "ecparam", "-name", "secp384r1", "-genkey", "-noout"),
     "is an ECDSA P-384 key"),
    (lambda d: d / "missing.key", "cannot read key"),
    (lambda d: d, "cannot read key"),
    (lambda d: openssl_key(d, "junk", "rand", "-hex", "16"), "is not a PEM key"),
])
def test_refused_private_keys(tmp_path: Path, make, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(keys.KeyFileError, match=message) as caught:
        keys.load_private(make(tmp_path))
    assert caught.value.exit_code == 2 and "\n" not in str(caught.value)


def test_a_public_key_where_a_private_one_is_needed(pair: tuple[Path, Path]) -> None:
    with pytest.raises(keys.KeyFileError, match="is a public key; signing needs the private key"):
        keys.load_private(pair[1])


def test_a_private_key_where_a_public_one_is_needed(pair: tuple[Path, Path]) -> None:
    with pytest.raises(keys.KeyFileError, match="is not a PEM public key"):
        keys.load_public(pair[0])


def test_another_curve_refused_as_public_key(tmp_path: Path) -> None:
    private = openssl_key(tmp_path, "p384.pem", "ecparam", "-name", "secp384r1", "-genkey", "-noout")
    public = openssl_key(tmp_path, "p384.pub", "pkey", "-in", str(private), "-pubout")
    with pytest.raises(keys.KeyFileError, match="is an ECDSA P-384 key"):
        keys.load_public(public)


def test_cli_key_generate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(keys.PASSPHRASE_ENV, "")
    name = str(tmp_path / "signer")
    assert main(["key", "generate", name]) == 0
    assert "written to" in capsys.readouterr().out
    assert stat.S_IMODE(os.stat(name + ".key").st_mode) == 0o600
    assert main(["key", "generate", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "never overwritten" in err


def test_cli_key_generate_without_a_terminal_or_passphrase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(keys.PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["key", "generate", str(tmp_path / "k")]) == 2
    assert "no terminal to ask for the passphrase" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
