"""What the bench scripts share."""

import subprocess
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def git_revision() -> str:
    """The checkout's short commit, for the report; "unknown" outside git."""
    done = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"
