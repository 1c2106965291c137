"""Signing keys: an ECDSA P-256 key pair in PEM, used through the openssl command.

The private key is read only by openssl, straight from its file, for the one
call that needs it; a passphrase reaches openssl through an inherited pipe
(``-passin fd:N``), never through its argv or environment, and the key is never
copied anywhere. ECDSA P-256 with SHA-256 is what cosign and containers/image
verify ``sigstoreSigned`` signatures with.
"""

import base64
import getpass
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ocistrap.errors import OcistrapError

PASSPHRASE_ENV = "OCISTRAP_PASSWORD"
GENERATE_HINT = "make one with `ocistrap key generate`"
TIMEOUT_SECONDS = 60
MAX_PASSPHRASE = 1024

_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_P256_SPKI_SIZE = len(_P256_SPKI_PREFIX) + 65
_KEY_KINDS = (  # DER of the algorithm (and curve) OIDs in a SubjectPublicKeyInfo, and what to call them
    ("06092a864886f70d010101", "an RSA key"),
    ("06032b6570", "an Ed25519 key"),
    ("06032b6571", "an Ed448 key"),
    ("06052b81040022", "an ECDSA P-384 key"),
    ("06052b81040023", "an ECDSA P-521 key"),
    ("06052b8104000a", "an ECDSA secp256k1 key"),
    ("06072a8648ce3d0201", "an elliptic-curve key on another curve"),
)
_UNENCRYPTED_PRIVATE = frozenset({"PRIVATE KEY", "EC PRIVATE KEY"})
_COSIGN_PRIVATE = frozenset({"ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY"})


class KeyFileError(OcistrapError):
    """A key file is missing, unreadable, of the wrong kind, or its passphrase is wrong."""

    exit_code = 2


@dataclass(frozen=True)
class PublicKey:
    """An ECDSA P-256 public key as PEM (SubjectPublicKeyInfo), the form cosign and podman read."""

    pem: bytes

    @classmethod
    def from_pem(cls, data: bytes, *, what: str) -> "PublicKey":
        """Check that DATA holds exactly one P-256 public key; KeyFileError naming WHAT otherwise."""
        label, der = _pem_block(data, what=what)
        if label != "PUBLIC KEY":
            raise KeyFileError(f"{what} is not a PEM public key (it holds a {label})",
                               hint="give the .pub file `ocistrap key generate` wrote")
        _require_p256(der, what=what)
        return cls(pem=_armor("PUBLIC KEY", der))

    @property
    def der(self) -> bytes:
        return _pem_block(self.pem, what="public key")[1]

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether SIGNATURE (ASN.1 DER ECDSA) is this key's over SHA-256 of DATA."""
        with ExitStack() as stack:
            key_fd = stack.enter_context(_pipe_with(self.pem))
            sig_fd = stack.enter_context(_pipe_with(signature))
            result = _openssl(["dgst", "-sha256", "-verify", f"/dev/fd/{key_fd}", "-signature", f"/dev/fd/{sig_fd}"],
                              data, pass_fds=(key_fd, sig_fd))
        return result.returncode == 0 and result.stdout.strip() == b"Verified OK"


@dataclass(frozen=True)
class PrivateKey:
    """Where a checked private key lives and how to unlock it; its bytes stay in the file."""

    path: Path
    passphrase: str
    public: PublicKey

    def sign(self, data: bytes) -> bytes:
        """The ASN.1 DER ECDSA signature over SHA-256 of DATA, checked against the public key.

        The check catches a key file replaced since it was loaded: a signature
        that the loaded public key would not accept is never handed out.
        """
        with _pipe_with(self.passphrase.encode() + b"\n") as fd:
            result = _openssl(["dgst", "-sha256", "-sign", str(self.path), "-passin", f"fd:{fd}"], data, pass_fds=(fd,))
        if result.returncode != 0 or not self.public.verify(data, result.stdout):
            raise KeyFileError(f"cannot sign with {self.path}: {_last_line(result.stderr)}",
                               hint="the key file changed since it was read; check it and try again")
        return result.stdout

    def __repr__(self) -> str:
        return f"PrivateKey(path={str(self.path)!r})"


def load_public(path: Path) -> PublicKey:
    """The public key in the file PATH, for verifying."""
    return PublicKey.from_pem(_read(path), what=f"key {path}")


def load_private(path: Path, *, passphrase_file: Path | None = None) -> PrivateKey:
    """Check the private key at PATH (its kind, curve and passphrase) for signing.

    The passphrase is asked for only when the key is encrypted: from
    PASSPHRASE_FILE, else the environment variable OCISTRAP_PASSWORD, else the terminal.
    """
    what = f"key {path}"
    data = _read(path)
    label, _ = _pem_block(data, what=what)
    if label == "PUBLIC KEY":
        raise KeyFileError(f"{what} is a public key; signing needs the private key",
                           hint="give the file without .pub that `ocistrap key generate` wrote")
    if label in _COSIGN_PRIVATE:
        raise KeyFileError(f"{what} is in cosign's own format, which openssl cannot read", hint=GENERATE_HINT)
    encrypted = label == "ENCRYPTED PRIVATE KEY" or b"Proc-Type: 4,ENCRYPTED" in data
    if label not in _UNENCRYPTED_PRIVATE and label != "ENCRYPTED PRIVATE KEY":
        raise KeyFileError(f"{what} holds a {label}, not an ECDSA P-256 private key", hint=GENERATE_HINT)
    passphrase = read_passphrase(passphrase_file, prompt=f"Passphrase for {path}: ") if encrypted else ""
    with _pipe_with(passphrase.encode() + b"\n") as fd:
        result = _openssl(["pkey", "-in", str(path), "-passin", f"fd:{fd}", "-pubout"], b"", pass_fds=(fd,))
    if result.returncode != 0:
        if encrypted:
            raise KeyFileError(f"wrong passphrase for {what}",
                               hint=f"give it with --passphrase-file FILE or ${PASSPHRASE_ENV}")
        raise KeyFileError(f"openssl cannot read {what}: {_last_line(result.stderr)}", hint=GENERATE_HINT)
    return PrivateKey(path=path, passphrase=passphrase, public=PublicKey.from_pem(result.stdout, what=what))


def generate(private: Path, public: Path, passphrase: str) -> PublicKey:
    """Write a new key pair: PRIVATE (mode 0600) and PUBLIC, neither of which may exist yet.

    With a PASSPHRASE the private key is PKCS#8 encrypted with scrypt and
    AES-256; an empty one leaves it unencrypted. Nothing is left behind on failure.
    """
    _require_openssl()
    created: list[Path] = []
    try:
        with _exclusive(private, 0o600, created) as key_fd, _exclusive(public, 0o644, created) as pub_fd:
            _write_private(key_fd, passphrase)
            with _pipe_with(passphrase.encode() + b"\n") as fd:
                result = _openssl(["pkey", "-in", str(private), "-passin", f"fd:{fd}", "-pubout"], b"", pass_fds=(fd,))
            if result.returncode != 0:
                raise KeyFileError(f"openssl could not derive the public key: {_last_line(result.stderr)}")
            key = PublicKey.from_pem(result.stdout, what="the generated key")
            os.write(pub_fd, key.pem)
        return key
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise


def _write_private(fd: int, passphrase: str) -> None:
    """openssl genpkey into FD, through openssl pkcs8 (scrypt) when there is a passphrase."""
    genpkey = ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-pkeyopt", "ec_param_enc:named_curve"]
    if not passphrase:
        _check(subprocess.run([_require_openssl(), *genpkey], stdin=subprocess.DEVNULL, stdout=fd,
                              stderr=subprocess.PIPE, timeout=TIMEOUT_SECONDS, check=False), "genpkey")
        return
    with _pipe_with(passphrase.encode() + b"\n") as pass_fd:
        maker = subprocess.Popen([_require_openssl(), *genpkey], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            sealer = subprocess.run([_require_openssl(), "pkcs8", "-topk8", "-scrypt", "-passout", f"fd:{pass_fd}"],
                                    stdin=maker.stdout, stdout=fd, stderr=subprocess.PIPE, pass_fds=(pass_fd,),
                                    timeout=TIMEOUT_SECONDS, check=False)
        finally:
            maker.stdout.close()  # type: ignore[union-attr]
            maker.wait(TIMEOUT_SECONDS)
        _check(subprocess.CompletedProcess(maker.args, maker.returncode, b"", maker.stderr.read()), "genpkey")  # type: ignore[union-attr]
        maker.stderr.close()  # type: ignore[union-attr]
        _check(sealer, "pkcs8")


def _check(result: subprocess.CompletedProcess[bytes], step: str) -> None:
    if result.returncode != 0:
        raise KeyFileError(f"openssl {step} failed: {_last_line(result.stderr)}")


@contextmanager
def _exclusive(path: Path, mode: int, created: list[Path]) -> Iterator[int]:
    """A new file at PATH with MODE, refused if anything is there already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; a key is never overwritten",
                           hint="remove it first or choose another name") from None
    except OSError as e:
        raise KeyFileError(f"cannot create {path}: {e.strerror}") from None
    created.append(path)
    try:
        os.fchmod(fd, mode)
        yield fd
    finally:
        os.close(fd)


def read_passphrase(passphrase_file: Path | None, *, prompt: str, confirm: bool = False) -> str:
    """The passphrase from PASSPHRASE_FILE's first line, else $OCISTRAP_PASSWORD, else the terminal."""
    if passphrase_file is not None:
        try:
            text = passphrase_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise KeyFileError(f"cannot read the passphrase file {passphrase_file}: "
                               f"{getattr(e, 'strerror', None) or e}") from None
        return _checked_passphrase(text.split("\n", 1)[0].removesuffix("\r"))
    if PASSPHRASE_ENV in os.environ:
        return _checked_passphrase(os.environ[PASSPHRASE_ENV])
    if not sys.stdin.isatty():
        raise KeyFileError("no terminal to ask for the passphrase",
                           hint=f"give it with --passphrase-file FILE or ${PASSPHRASE_ENV}, empty for none")
    passphrase = getpass.getpass(prompt)
    if confirm and getpass.getpass("Again: ") != passphrase:
        raise KeyFileError("the passphrases differ")
    return _checked_passphrase(passphrase)


def _checked_passphrase(passphrase: str) -> str:
    if "\n" in passphrase or "\0" in passphrase or len(passphrase.encode()) > MAX_PASSPHRASE:
        raise KeyFileError(f"a passphrase must be one line of at most {MAX_PASSPHRASE} bytes")
    return passphrase


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read key {path}: {e.strerror}", hint=GENERATE_HINT) from None


def _pem_block(data: bytes, *, what: str) -> tuple[str, bytes]:
    """The label and DER body of the first PEM block in DATA."""
    match = _PEM.search(data)
    if match is None:
        raise KeyFileError(f"{what} is not a PEM key", hint=GENERATE_HINT)
    body = b"".join(line for line in match.group(2).splitlines() if b":" not in line)
    try:
        return match.group(1).decode(), base64.b64decode(body, validate=True)
    except ValueError:
        raise KeyFileError(f"{what}: broken PEM armor", hint=GENERATE_HINT) from None


def _require_p256(der: bytes, *, what: str) -> None:
    if der.startswith(_P256_SPKI_PREFIX) and len(der) == _P256_SPKI_SIZE:
        return
    kind = next((name for oid, name in _KEY_KINDS if bytes.fromhex(oid) in der), "an unknown kind of key")
    raise KeyFileError(f"{what} is {kind}; ocistrap signs with ECDSA P-256 keys", hint=GENERATE_HINT)


def _armor(label: str, der: bytes) -> bytes:
    text = base64.b64encode(der).decode()
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    return (f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n").encode()


@contextmanager
def _pipe_with(data: bytes) -> Iterator[int]:
    """The read end of a pipe holding DATA, for a child to inherit; small DATA never blocks the write."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        yield read_fd
    finally:
        os.close(read_fd)


def _require_openssl() -> str:
    executable = shutil.which("openssl")
    if executable is None:
        raise KeyFileError("cannot sign or verify: openssl is not installed", hint="install the Debian package openssl")
    return executable


def _openssl(args: Sequence[str], data: bytes, *, pass_fds: Sequence[int]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([_require_openssl(), *args], input=data, capture_output=True, pass_fds=tuple(pass_fds),
                          timeout=TIMEOUT_SECONDS, check=False)


def _last_line(stderr: bytes) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"
