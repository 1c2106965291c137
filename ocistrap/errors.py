"""The root of every error a user can cause, and one error type per domain.

A subclass exists only where a caller acts on it (``fetch.NotFound`` tries
the next file, ``unpack.UnpackError`` says whether a member was refused) or
where it has its own exit code; the README's table lists every exit code.

The CLI prints ``str(error)`` as one line on stderr and exits with
``error.exit_code``; anything else escaping is a bug and shows a traceback
only under ``--debug``.
"""


class OcistrapError(Exception):
    """An error with a message a person can act on."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(OcistrapError):
    """The command line or a spec file is wrong."""

    exit_code = 2


class ArchiveError(OcistrapError):
    """The Debian side: archive metadata, its signatures, downloads, the cache, resolution
    and lockfiles are missing, malformed, expired or do not match what was signed."""


class BuildError(OcistrapError):
    """The root file system side: the sandbox, the bootstrap, unpacking, recording owners or
    writing the tree as a layer failed."""


class ImageError(OcistrapError):
    """The OCI side: an image, index, blob, SBOM or signature is malformed, unsupported or
    does not verify."""


class TransportError(OcistrapError):
    """An image cannot be read or written at a reference (a layout, an archive, a registry)."""


class CredentialsError(TransportError):
    """Registry credentials cannot be found, read or stored, or the registry refused them."""

    exit_code = 3


class BadReference(UsageError, TransportError):
    """A reference the user typed is malformed or names a transport that cannot do what was asked."""
