"""OpenPGP verification of archive metadata through gpgv, or sqv where gpgv is absent.

python-debian's gpgv wrapper reports what gpgv printed without acting on it, so
the verdict here comes from the exit status together with the status-fd lines:
only a signature that is both GOODSIG and VALIDSIG, by a key in a keyring the
user gave, over a strong digest, lets data through.
"""

import base64
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ocistrap.errors import ArchiveError

KEYRING_HINT = "pass the archive's public key with --keyring FILE"
MIRROR_HINT = "the file was changed after signing: the mirror may be broken or hostile; try another mirror"
CLEARSIGN_BEGIN = b"-----BEGIN PGP SIGNED MESSAGE-----"
SIGNATURE_BEGIN = b"-----BEGIN PGP SIGNATURE-----"
SIGNATURE_END = b"-----END PGP SIGNATURE-----"
ARMORED_KEY_RE = re.compile(
    rb"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----", re.DOTALL
)
WEAK_DIGESTS = {"1": "MD5", "2": "SHA1", "3": "RIPEMD160"}
TIMEOUT_SECONDS = 300


def verify_clearsigned(data: bytes, keyrings: Sequence[Path], *, what: str) -> bytes:
    """Check a clearsigned file (InRelease) and return only the text under the signature.

    Whatever surrounds the signed block is never returned: only the text the
    signature covers can be trusted.
    """
    return verify_clearsigned_by(data, keyrings, what=what)[0]


def verify_clearsigned_by(data: bytes, keyrings: Sequence[Path], *, what: str) -> tuple[bytes, list[str]]:
    """``verify_clearsigned``, and the primary-key fingerprints of the good signatures."""
    text, signature = split_clearsigned(data, what=what)
    paths = readable_keyrings(keyrings, what=what)
    tool, executable = find_verifier()
    if tool == "gpgv":
        return _gpgv_clearsigned(executable, data, paths, what=what)
    return text, _run_sqv(executable, text.removesuffix(b"\n"), signature, paths, what=what)


def verify_detached(data: bytes, signature: bytes, keyrings: Sequence[Path], *, what: str) -> list[str]:
    """Check a detached signature (Release.gpg) over ``data``; the primary-key fingerprints of the good ones."""
    if not signature.strip():
        raise ArchiveError(f"{what}: the signature is empty", hint=MIRROR_HINT)
    paths = readable_keyrings(keyrings, what=what)
    tool, executable = find_verifier()
    if tool == "gpgv":
        return _gpgv_detached(executable, data, signature, paths, what=what)
    return _run_sqv(executable, data, signature, paths, what=what)


def find_verifier() -> tuple[str, str]:
    """Return ("gpgv" or "sqv", its path), preferring gpgv."""
    for tool in ("gpgv", "sqv"):
        executable = shutil.which(tool)
        if executable:
            return tool, executable
    raise ArchiveError(
        "cannot verify signatures: neither gpgv nor sqv is installed",
        hint="install gpgv (Debian package gpgv)",
    )


def readable_keyrings(keyrings: Sequence[Path], *, what: str) -> list[Path]:
    """Return the keyrings as absolute paths, refusing none, missing, unreadable or empty ones.

    Absolute because gpgv looks a bare file name up in its home directory.
    """
    if not keyrings:
        raise ArchiveError(f"no keyring to verify {what} with", hint=KEYRING_HINT)
    paths = []
    for keyring in keyrings:
        path = Path(keyring).absolute()
        try:
            with path.open("rb") as handle:
                empty = not handle.read(1)
        except OSError as error:
            raise ArchiveError(
                f"keyring {path} (needed for {what}) cannot be read: {error.strerror}", hint=KEYRING_HINT
            ) from error
        if empty:
            raise ArchiveError(f"keyring {path} (needed for {what}) is empty", hint=KEYRING_HINT)
        paths.append(path)
    return paths


def split_clearsigned(data: bytes, *, what: str) -> tuple[bytes, bytes]:
    """Split a clearsigned message into (signed text, armored signature), strictly.

    Only whitespace may lie outside the signed block, so nothing unsigned can
    ride along. The text is dash-unescaped and stripped of trailing blanks, as
    the signature covers it (RFC 4880 section 7), and ends in a newline, which
    the signature does not cover.
    """
    lines = data.split(b"\n")
    start = _skip_blank(lines, 0)
    if start == len(lines) or lines[start].rstrip() != CLEARSIGN_BEGIN:
        raise ArchiveError(f"{what} is not a clearsigned OpenPGP message", hint=MIRROR_HINT)
    index = start + 1
    while index < len(lines) and lines[index].strip():
        index += 1
    text_lines = []
    index += 1
    while index < len(lines) and lines[index].rstrip() != SIGNATURE_BEGIN:
        line = lines[index].rstrip(b" \t\r")
        if line.startswith(b"-"):
            if not line.startswith(b"- "):
                raise ArchiveError(f"{what}: malformed clearsigned text at line {index + 1}", hint=MIRROR_HINT)
            line = line[2:]
        text_lines.append(line)
        index += 1
    end = index
    while end < len(lines) and lines[end].rstrip() != SIGNATURE_END:
        end += 1
    if index >= len(lines) or end == len(lines):
        raise ArchiveError(f"{what}: the clearsigned message has no complete signature", hint=MIRROR_HINT)
    if _skip_blank(lines, end + 1) != len(lines):
        raise ArchiveError(f"{what}: unsigned data follows the signature", hint=MIRROR_HINT)
    signature = b"\n".join(line.rstrip(b"\r") for line in lines[index : end + 1]) + b"\n"
    return b"\n".join(text_lines) + b"\n", signature


def _skip_blank(lines: list[bytes], index: int) -> int:
    while index < len(lines) and not lines[index].strip():
        index += 1
    return index


def dearmor(data: bytes, *, name: str) -> bytes:
    """Turn ASCII-armored public keys into the binary form gpgv reads."""
    blocks = ARMORED_KEY_RE.findall(data)
    if not blocks:
        raise ArchiveError(f"keyring {name} is neither a binary keyring nor an armored key", hint=KEYRING_HINT)
    binary = b""
    for block in blocks:
        lines = block.replace(b"\r", b"").split(b"\n")
        body = lines[lines.index(b"") + 1 :] if b"" in lines else lines
        payload = b"".join(line for line in body if line and not line.startswith(b"="))
        try:
            binary += base64.b64decode(payload, validate=True)
        except ValueError as error:
            raise ArchiveError(f"keyring {name}: broken ASCII armor", hint=KEYRING_HINT) from error
    return binary


def check_keyrings(keyrings: Sequence[Path], *, what: str) -> list[Path]:
    """``readable_keyrings``, each also a binary keyring or armored keys: what --keyring must name."""
    paths = readable_keyrings(keyrings, what=what)
    for path in paths:
        _dearmored(path.read_bytes(), path)
    return paths


def _dearmored(data: bytes, path: Path) -> bytes | None:
    """The binary form of armored keys in DATA, None if DATA is a binary keyring already."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return dearmor(data, name=str(path))
    if not _binary_keyring(data):
        raise ArchiveError(f"keyring {path} is neither a binary keyring nor an armored key",
                             hint=KEYRING_HINT)
    return None


def _gpgv_keyrings(paths: list[Path], home: Path) -> list[Path]:
    """Dearmored copies of armored keyrings, since gpgv reads only binary ones."""
    result = []
    for number, path in enumerate(paths):
        binary = _dearmored(path.read_bytes(), path)
        if binary is not None:
            path = home / f"keyring-{number}.gpg"
            path.write_bytes(binary)
        result.append(path)
    return result


def _binary_keyring(data: bytes) -> bool:
    """An OpenPGP packet stream (first byte has bit 7 set) or a GnuPG keybox ("KBXf" at offset 8)."""
    return bool(data) and (data[0] & 0x80 != 0 or data[8:12] == b"KBXf")


def _run_gpgv(executable: str, args: list[str], paths: list[Path], home: Path) -> tuple[int, str, str]:
    keyring_args = [f"--keyring={path}" for path in _gpgv_keyrings(paths, home)]
    command = [executable, "--homedir", str(home), "--status-fd", "1", *keyring_args, *args]
    result = subprocess.run(command, capture_output=True, timeout=TIMEOUT_SECONDS, check=False)
    return result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")


def _gpgv_clearsigned(executable: str, data: bytes, paths: list[Path], *, what: str) -> tuple[bytes, list[str]]:
    with tempfile.TemporaryDirectory(prefix="ocistrap-gpgv-") as tmp:
        home = Path(tmp)
        (home / "message").write_bytes(data)
        output = home / "signed-text"
        args = ["--output", str(output), str(home / "message")]
        returncode, status, stderr = _run_gpgv(executable, args, paths, home)
        keys = judge_gpgv(returncode, status, stderr, what=what, plaintexts=1)
        return output.read_bytes(), keys


def _gpgv_detached(executable: str, data: bytes, signature: bytes, paths: list[Path], *, what: str) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="ocistrap-gpgv-") as tmp:
        home = Path(tmp)
        (home / "data").write_bytes(data)
        (home / "data.sig").write_bytes(signature)
        returncode, status, stderr = _run_gpgv(executable, [str(home / "data.sig"), str(home / "data")], paths, home)
        return judge_gpgv(returncode, status, stderr, what=what, plaintexts=0)


@dataclass
class GpgvSignature:
    """What gpgv's status lines said about one signature."""

    key: str = ""
    good: bool = False
    fingerprint: str = ""
    primary: str = ""
    digest: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class GpgvStatus:
    """gpgv's status-fd output, grouped by signature."""

    signatures: list[GpgvSignature] = field(default_factory=list)
    plaintexts: int = 0
    errors: list[str] = field(default_factory=list)
    no_data: bool = False

    def current(self) -> GpgvSignature:
        if not self.signatures:
            self.signatures.append(GpgvSignature())
        return self.signatures[-1]


PROBLEM_KEYWORDS = {
    "BADSIG": "bad",
    "EXPKEYSIG": "expired key",
    "REVKEYSIG": "revoked key",
    "EXPSIG": "expired signature",
    "ERRSIG": "unchecked",
    "NO_PUBKEY": "unknown key",
}


def parse_gpgv_status(status: str) -> GpgvStatus:
    """Group ``[GNUPG:]`` status lines into per-signature facts."""
    result = GpgvStatus()
    for line in status.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        keyword, *args = line[len("[GNUPG:] ") :].split()
        if keyword == "NEWSIG":
            result.signatures.append(GpgvSignature())
        elif keyword == "PLAINTEXT":
            result.plaintexts += 1
        elif keyword == "NODATA":
            result.no_data = True
        elif keyword == "ERROR":
            result.errors.append(" ".join(args))
        elif keyword == "GOODSIG":
            result.current().good = True
            result.current().key = args[0] if args else ""
        elif keyword == "VALIDSIG" and len(args) >= 8:
            result.current().fingerprint = args[0]
            result.current().digest = args[7]
            result.current().primary = args[9] if len(args) >= 10 else args[0]
        elif keyword in PROBLEM_KEYWORDS:
            result.current().problems.append(PROBLEM_KEYWORDS[keyword])
            result.current().key = result.current().key or (args[0] if args else "")
    return result


def _is_good(signature: GpgvSignature) -> bool:
    return (
        signature.good
        and bool(signature.fingerprint)
        and signature.digest not in WEAK_DIGESTS
        and not signature.problems
    )


def judge_gpgv(returncode: int, status: str, stderr: str, *, what: str, plaintexts: int) -> list[str]:
    """Return the primary-key fingerprints of the good signatures, or raise ArchiveError.

    The primary key, not a signing subkey, is what a keyring is known by.

    Exit status 2 with a good signature is accepted only when every other
    signature failed for want of its key, as apt does for archives signed by
    several keys of which the user holds one.
    """
    parsed = parse_gpgv_status(status)
    signatures = parsed.signatures
    if any("bad" in signature.problems for signature in signatures):
        keys = ", ".join(s.key for s in signatures if "bad" in s.problems)
        raise ArchiveError(f"{what}: BAD signature by key {keys}", hint=MIRROR_HINT)
    if parsed.plaintexts != plaintexts:
        expected = "exactly one signed message" if plaintexts else "a detached signature"
        raise ArchiveError(f"{what}: expected {expected}", hint=MIRROR_HINT)
    good = [signature.primary for signature in signatures if _is_good(signature)]
    tolerated = all(_is_good(s) or set(s.problems) <= {"unchecked", "unknown key"} for s in signatures)
    if good and not parsed.errors and (returncode == 0 or (returncode == 2 and tolerated)):
        return good
    raise _gpgv_failure(returncode, parsed, stderr, what=what)


def _gpgv_failure(returncode: int, parsed: GpgvStatus, stderr: str, *, what: str) -> ArchiveError:
    problems = {problem: s.key for s in parsed.signatures for problem in s.problems}
    if "expired key" in problems or "revoked key" in problems:
        kind = "an expired" if "expired key" in problems else "a revoked"
        key = problems.get("expired key") or problems["revoked key"]
        return ArchiveError(
            f"{what} is signed only by {kind} key ({key})",
            hint="update the keyring to the archive's current key and pass it with --keyring FILE",
        )
    if "expired signature" in problems:
        return ArchiveError(f"{what}: the signature has expired", hint=MIRROR_HINT)
    if "unknown key" in problems:
        keys = ", ".join(sorted({s.key for s in parsed.signatures if "unknown key" in s.problems}))
        return ArchiveError(f"{what} is signed by key {keys}, which no given keyring holds", hint=KEYRING_HINT)
    weak = [s for s in parsed.signatures if s.good and s.digest in WEAK_DIGESTS]
    if weak:
        return ArchiveError(
            f"{what} is signed with the weak digest {WEAK_DIGESTS[weak[0].digest]}",
            hint="the archive must be re-signed with SHA-256 or better",
        )
    if parsed.no_data or not parsed.signatures:
        return ArchiveError(f"{what} holds no OpenPGP signature", hint=MIRROR_HINT)
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {returncode}"
    return ArchiveError(f"{what}: gpgv could not verify the signature: {detail}", hint=KEYRING_HINT)


def _run_sqv(executable: str, data: bytes, signature: bytes, paths: list[Path], *, what: str) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="ocistrap-sqv-") as tmp:
        (Path(tmp) / "data").write_bytes(data)
        (Path(tmp) / "data.sig").write_bytes(signature)
        command = [executable, *(f"--keyring={path}" for path in paths), f"{tmp}/data.sig", f"{tmp}/data"]
        result = subprocess.run(command, capture_output=True, timeout=TIMEOUT_SECONDS, check=False)
    judge_sqv(result.returncode, result.stderr.decode(errors="replace"), what=what)
    return re.findall(r"^([0-9A-F]{40}|[0-9A-F]{64})$", result.stdout.decode(errors="replace"), re.MULTILINE)


def judge_sqv(returncode: int, stderr: str, *, what: str) -> None:
    """Turn sqv's exit status and message into a verdict; sqv has no status lines."""
    if returncode == 0:
        return
    if "manipulated" in stderr or "Bad signature" in stderr:
        raise ArchiveError(f"{what}: BAD signature", hint=MIRROR_HINT)
    missing = re.findall(r"Missing key (\w+)", stderr)
    if missing:
        keys = ", ".join(sorted(set(missing)))
        raise ArchiveError(f"{what} is signed by key {keys}, which no given keyring holds", hint=KEYRING_HINT)
    if "expired" in stderr.lower() or "revoked" in stderr.lower():
        raise ArchiveError(
            f"{what} is signed only by an expired or revoked key",
            hint="update the keyring to the archive's current key and pass it with --keyring FILE",
        )
    if "Malformed" in stderr or "No signature" in stderr:
        raise ArchiveError(f"{what} holds no OpenPGP signature", hint=MIRROR_HINT)
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {returncode}"
    raise ArchiveError(f"{what}: sqv could not verify the signature: {detail}", hint=KEYRING_HINT)
