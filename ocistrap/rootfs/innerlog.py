"""What the inside of the sandbox tells the caller: its lines the caller's log shows as messages
(bootstrap._InnerLog) and the error it gives up with. Imported by the sandbox's isolated helper
too (spawn), so it imports nothing."""

import sys

INNER_ERROR = "ocistrap (inside the sandbox): "
"""How the line of the error the inside gives up with starts (the caller raises it)."""
NOTICE = "ocistrap: "
"""How a line of the inside's log starts that the caller shows as a message."""


def notice(text: str) -> None:
    """Tell the user TEXT from inside the sandbox, with or without --debug."""
    print(f"{NOTICE}{text}", file=sys.stderr, flush=True)
