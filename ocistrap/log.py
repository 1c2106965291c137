"""Progress output: a nested, timed ``step()`` log on stderr, per-phase timings and live progress.

Everything the log says is an ``Event``; a renderer turns events into text for
a person (plain lines, or a live status line on a terminal), into one JSON
object per line for CI systems, or into nothing (``--quiet``). The formatting
is pure, so it is tested without clocks or terminals.
"""

import json
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import BinaryIO, Protocol, TextIO

FORMATS = ("text", "json")


@dataclass(frozen=True)
class Event:
    """One thing the log says: a step starting or done, a message, progress within a step, an error."""

    kind: str
    text: str
    depth: int = 0
    seconds: float | None = None
    done: int | None = None
    total: int | None = None
    nbytes: int | None = None
    at: float = 0.0


@dataclass(frozen=True)
class StepTime:
    """How long a step took, where it sat in the nesting, in the order steps started."""

    name: str
    depth: int
    seconds: float


# ---- pure formatting ----

def human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    raise AssertionError("unreachable")


def format_text(event: Event) -> str | None:
    """The plain line for EVENT (what a log file or a pipe gets), or None for live-only events."""
    indent = "  " * event.depth
    if event.kind == "start":
        return f"{indent}{event.text}..."
    if event.kind == "done":
        return f"{indent}{event.text}: done in {event.seconds:.1f}s"
    if event.kind == "info":
        return f"{indent}{event.text}"
    if event.kind == "detail":
        return f"{indent}. {event.text}"
    if event.kind == "error":
        return f"ocistrap: {event.text}"
    return None


def format_progress(event: Event) -> str:
    """What a step has done so far, e.g. ``fetching 96 packages: 40/96, 12.3 MB``."""
    parts = []
    if event.done is not None:
        parts.append(f"{event.done}/{event.total}" if event.total is not None else str(event.done))
    if event.nbytes is not None:
        parts.append(human_bytes(event.nbytes))
    return f"{event.text}: {', '.join(parts)}" if parts else f"{event.text}..."


def format_json(event: Event) -> str:
    """One JSON object per event, with only the fields that event has."""
    fields = {k: v for k, v in asdict(event).items() if v is not None}
    fields["event"] = fields.pop("kind")
    if "seconds" in fields:
        fields["seconds"] = round(fields["seconds"], 3)
    fields["at"] = round(fields["at"], 3)
    return json.dumps(fields, sort_keys=True)


def format_timings(steps: list[StepTime], total: float) -> str:
    """The per-phase breakdown `--timings` prints: each step, nested as it ran, then the total."""
    width = max([len("  " * s.depth + s.name) for s in steps] + [len("total")])
    lines = ["timings:"]
    lines += [f"  {('  ' * s.depth + s.name).ljust(width)}  {s.seconds:7.2f}s" for s in steps]
    lines.append(f"  {'total'.ljust(width)}  {total:7.2f}s")
    return "\n".join(lines)


def timings_json(steps: list[StepTime], total: float) -> str:
    return json.dumps({"event": "timings", "total": round(total, 3),
                       "steps": [{"name": s.name, "depth": s.depth, "seconds": round(s.seconds, 3)}
                                 for s in steps]}, sort_keys=True)


# ---- renderers: events to a stream ----

class Renderer(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


def write_line(stream: TextIO, line: str) -> None:
    """LINE and its newline in one write: a signal (Ctrl-C raising KeyboardInterrupt) can fall
    between two lines, never inside one, so the error line after it stays a line of its own."""
    stream.write(line + "\n")
    stream.flush()


class Silent:
    """``--quiet``: only errors."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def emit(self, event: Event) -> None:
        line = format_text(event) if event.kind == "error" else None
        if line is not None:
            write_line(self.stream, line)

    def close(self) -> None:
        pass


class Plain:
    """One line per step start, step end and message: for pipes, files and CI logs."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def emit(self, event: Event) -> None:
        line = format_text(event)
        if line is not None:
            write_line(self.stream, line)

    def close(self) -> None:
        pass


class Live:
    """A terminal: finished steps and messages scroll, the running step and its progress stay on one line."""

    def __init__(self, stream: TextIO, *, interval: float = 0.1,
                 columns: Callable[[], int] = lambda: shutil.get_terminal_size().columns) -> None:
        self.stream = stream
        self.interval = interval
        self.columns = columns
        self.running: list[str] = []
        self.shown_at = float("-inf")

    def emit(self, event: Event) -> None:
        if event.kind == "start":
            self.running.append(format_progress(event))
            self.shown_at = event.at
            self._redraw()
        elif event.kind == "progress":
            if self.running:
                self.running[-1] = format_progress(event)
            if event.at - self.shown_at >= self.interval:
                self.shown_at = event.at
                self._redraw()
        elif (line := format_text(event)) is not None:
            if event.kind == "done" and self.running:
                self.running.pop()
            if event.kind == "error":
                self.running.clear()
            self.stream.write(f"\r\x1b[K{line}\n")
            self._redraw()

    def _redraw(self) -> None:
        if self.running:
            self.stream.write("\r\x1b[K" + self.running[-1][:max(self.columns() - 1, 10)])
        self.stream.flush()

    def close(self) -> None:
        if self.running:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self.running.clear()


class JsonLines:
    """One JSON object per line; progress at most once per INTERVAL per step, and always at its end."""

    def __init__(self, stream: TextIO, *, quiet: bool = False, interval: float = 1.0) -> None:
        self.stream = stream
        self.quiet = quiet
        self.interval = interval
        self.last: dict[str, float] = {}

    def emit(self, event: Event) -> None:
        if self.quiet and event.kind != "error":
            return
        if event.kind == "progress":
            complete = event.total is not None and event.done == event.total
            if not complete and event.at - self.last.get(event.text, float("-inf")) < self.interval:
                return
            self.last[event.text] = event.at
        write_line(self.stream, format_json(event))

    def close(self) -> None:
        pass


def renderer_for(stream: TextIO, *, quiet: bool, log_format: str) -> Renderer:
    if log_format == "json":
        return JsonLines(stream, quiet=quiet)
    if quiet:
        return Silent(stream)
    return Live(stream) if stream.isatty() else Plain(stream)


class _Stderr:
    """Whatever ``sys.stderr`` is when written to (tests and embedders replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


STDERR: TextIO = _Stderr()  # type: ignore[assignment]


# ---- the log ----

@dataclass
class Log:
    """Where progress goes; one instance per command, passed down or reached via ``get()``."""

    quiet: bool = False
    debug: bool = False
    stream: TextIO = STDERR
    timings: list[tuple[str, float]] = field(default_factory=list)
    log_format: str = "text"
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    renderer: Renderer | None = None
    steps: list[StepTime] = field(default_factory=list)
    _depth: int = 0
    _names: list[str] = field(default_factory=list)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        if self.renderer is None:
            self.renderer = renderer_for(self.stream, quiet=self.quiet, log_format=self.log_format)
        self.started = self.clock()

    def emit(self, kind: str, text: str, **fields: object) -> None:
        with self._lock:
            assert self.renderer is not None
            self.renderer.emit(Event(kind, text, depth=self._depth, at=self.wall(), **fields))  # type: ignore[arg-type]

    def info(self, message: str) -> None:
        self.emit("info", message)

    def detail(self, message: str) -> None:
        if self.debug:
            self.emit("detail", message)

    def error(self, message: str) -> None:
        self.emit("error", message)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Announce NAME, run the block one level deeper, then record how long it took."""
        self.emit("start", name)
        start = self.clock()
        record = len(self.steps)
        self.steps.append(StepTime(name, self._depth, 0.0))
        self._depth += 1
        self._names.append(name)
        try:
            yield
        finally:
            self._depth -= 1
            self._names.pop()
        elapsed = self.clock() - start
        self.steps[record] = StepTime(name, self._depth, elapsed)
        self.timings.append((name, elapsed))
        self.emit("done", name, seconds=elapsed)

    def record(self, name: str, seconds: float) -> None:
        """Report work that ran alongside the steps (in background threads) as a step of its own."""
        self.steps.append(StepTime(name, self._depth, seconds))
        self.timings.append((name, seconds))
        self.emit("done", name, seconds=seconds)

    def meter(self, total: int | None = None) -> "Meter":
        """Count work done in the running step (items of TOTAL, bytes) and show it as it grows."""
        return Meter(self, self._names[-1] if self._names else "working", total)

    def timings_report(self) -> str:
        """``--timings``: the step tree with seconds (a JSON line with ``--log-format json``)."""
        total = self.clock() - self.started
        if self.log_format == "json":
            return timings_json(self.steps, total)
        return format_timings(self.steps, total)

    def close(self) -> None:
        assert self.renderer is not None
        self.renderer.close()


class Meter:
    """Thread-safe counters of one step's progress; each change becomes a progress event."""

    def __init__(self, log: Log, name: str, total: int | None) -> None:
        self.log = log
        self.name = name
        self.total = total
        self.done = 0
        self.nbytes = 0
        self._lock = threading.Lock()

    def add(self, items: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.done += items
            self.nbytes += nbytes
            done, count = self.done, self.nbytes
        self.log.emit("progress", self.name, done=done if self.total is not None or done else None,
                      total=self.total, nbytes=count if count else None)

    def reader(self, stream: BinaryIO) -> "CountingReader":
        """STREAM, reporting the bytes read from it."""
        return CountingReader(stream, self)


class CountingReader:
    """A binary stream that tells a meter how many bytes went through ``read``/``readinto``."""

    def __init__(self, stream: BinaryIO, meter: Meter) -> None:
        self.stream = stream
        self.meter = meter

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if data:
            self.meter.add(nbytes=len(data))
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:
        n = self.stream.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.meter.add(nbytes=n)
        return n

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


_current = Log()


def get() -> Log:
    """The log of the running command."""
    return _current


def configure(*, quiet: bool = False, debug: bool = False, log_format: str = "text",
              stream: TextIO | None = None) -> Log:
    """Replace the running command's log; the CLI calls this once."""
    global _current
    _current = Log(quiet=quiet, debug=debug, log_format=log_format, stream=stream or STDERR)
    return _current
