"""Progress output: a nested, timed ``step()`` log on stderr, and per-phase timings."""

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Log:
    """Where progress goes; one instance per command, passed down or reached via ``get()``."""

    quiet: bool = False
    debug: bool = False
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    timings: list[tuple[str, float]] = field(default_factory=list)
    _depth: int = 0

    def info(self, message: str) -> None:
        if not self.quiet:
            print(f"{'  ' * self._depth}{message}", file=self.stream, flush=True)

    def detail(self, message: str) -> None:
        if self.debug:
            print(f"{'  ' * self._depth}. {message}", file=self.stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Announce NAME, run the block one level deeper, then record how long it took."""
        self.info(f"{name}...")
        start = time.monotonic()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        elapsed = time.monotonic() - start
        self.timings.append((name, elapsed))
        self.info(f"{name}: done in {elapsed:.1f}s")


_current = Log()


def get() -> Log:
    """The log of the running command."""
    return _current


def configure(*, quiet: bool = False, debug: bool = False) -> Log:
    """Replace the running command's log; the CLI calls this once."""
    global _current
    _current = Log(quiet=quiet, debug=debug)
    return _current
