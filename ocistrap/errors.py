"""The root of every error a user can cause; each domain module subclasses it.

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
