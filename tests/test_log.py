"""The log's formats and renderers, with a fake clock: no sleeping, no terminal."""

import io
import json

import pytest

from ocistrap import cli, log
from ocistrap.log import Event, StepTime


class Ticks:
    """A clock that advances only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_log(renderer: log.Renderer | None = None, **kwargs) -> tuple[log.Log, io.StringIO, Ticks]:
    stream, ticks = io.StringIO(), Ticks()
    return log.Log(stream=stream, clock=ticks, wall=ticks, renderer=renderer, **kwargs), stream, ticks


def test_human_bytes():
    assert [log.human_bytes(n) for n in (0, 999, 1000, 38_200_000, 5 * 10**12)] == [
        "0 B", "999 B", "1.0 kB", "38.2 MB", "5000.0 GB"]


def test_plain_lines_keep_the_step_format_scripts_parse():
    out, stream, ticks = make_log()
    with out.step("fetching 3 packages"):
        ticks.now += 1.25
        out.info("inner")
        out.detail("hidden without --debug")
        out.meter(total=3).add(1, 100)
    assert stream.getvalue().splitlines() == [
        "fetching 3 packages...", "  inner", "fetching 3 packages: done in 1.2s"]


def test_steps_record_timings_in_start_order_with_depth():
    out, _, ticks = make_log()
    with out.step("outer"):
        ticks.now += 1
        with out.step("inner"):
            ticks.now += 2
    assert out.steps == [StepTime("outer", 0, 3.0), StepTime("inner", 1, 2.0)]
    assert out.timings == [("inner", 2.0), ("outer", 3.0)]


def test_a_failed_step_is_not_reported_done_but_restores_depth():
    out, stream, _ = make_log()
    with pytest.raises(RuntimeError), out.step("doomed"):
        raise RuntimeError
    out.info("after")
    assert stream.getvalue().splitlines() == ["doomed...", "after"]


def test_format_timings_nests_and_totals():
    text = log.format_timings([StepTime("fetching", 0, 0.5), StepTime("installing", 0, 20.0),
                               StepTime("writing layer", 1, 4.25)], total=21.0)
    assert text.splitlines() == [
        "timings:",
        "  fetching" + " " * 12 + "0.50s",
        "  installing" + " " * 9 + "20.00s",
        "    writing layer" + " " * 5 + "4.25s",
        "  total" + " " * 14 + "21.00s"]


def test_timings_report_as_json():
    out, _, ticks = make_log(log_format="json")
    with out.step("a"):
        ticks.now += 1.5
    report = json.loads(out.timings_report())
    assert report == {"event": "timings", "total": 1.5, "steps": [{"name": "a", "depth": 0, "seconds": 1.5}]}


def test_work_done_alongside_is_recorded_at_the_depth_where_it_is_reported():
    out, _, ticks = make_log(log_format="json")
    with out.step("installing"):
        ticks.now += 4
    out.record("expanding (alongside)", 1.25)
    report = json.loads(out.timings_report())
    assert report["steps"] == [{"name": "installing", "depth": 0, "seconds": 4},
                               {"name": "expanding (alongside)", "depth": 0, "seconds": 1.25}]
    assert report["total"] == 4


def test_progress_text():
    assert log.format_progress(Event("progress", "fetching", done=40, total=96, nbytes=12_300_000)) == \
        "fetching: 40/96, 12.3 MB"
    assert log.format_progress(Event("progress", "writing layer", nbytes=2000)) == "writing layer: 2.0 kB"
    assert log.format_progress(Event("start", "resolving")) == "resolving..."


def test_json_lines_one_object_per_event_with_its_fields_only():
    stream = io.StringIO()
    out, _, ticks = make_log(renderer=log.JsonLines(stream))
    with out.step("fetching"):
        ticks.now += 2
        out.info("note")
    out.error("error: bad")
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert events == [
        {"event": "start", "text": "fetching", "depth": 0, "at": 100.0},
        {"event": "info", "text": "note", "depth": 1, "at": 102.0},
        {"event": "done", "text": "fetching", "depth": 0, "seconds": 2.0, "at": 102.0},
        {"event": "error", "text": "error: bad", "depth": 0, "at": 102.0}]


class _Writes(io.StringIO):
    """A stream that keeps each write() call apart."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


@pytest.mark.parametrize("renderer", [log.JsonLines, log.Plain, log.Silent])
def test_a_line_is_one_write_so_an_interrupt_cannot_split_it(renderer) -> None:
    """Ctrl-C raises KeyboardInterrupt between Python-level calls: with the newline written apart
    (print), the error line the interrupt ends with was once glued to the line it cut."""
    stream = _Writes()
    out, _, _ = make_log(renderer=renderer(stream))
    with out.step("installing"):
        out.info("note")
    out.error("interrupted")
    assert stream.calls and all(call.endswith("\n") and call.count("\n") == 1 for call in stream.calls)


def test_json_progress_is_throttled_but_the_last_is_kept():
    stream = io.StringIO()
    out, _, ticks = make_log(renderer=log.JsonLines(stream, interval=1.0))
    with out.step("fetching"):
        meter = out.meter(total=4)
        for _ in range(4):
            meter.add(1, 10)
            ticks.now += 0.4
    progress = [json.loads(line) for line in stream.getvalue().splitlines()
                if json.loads(line)["event"] == "progress"]
    assert [(p["done"], p["nbytes"]) for p in progress] == [(1, 10), (4, 40)]


def test_json_quiet_keeps_only_errors():
    stream = io.StringIO()
    out, _, _ = make_log(renderer=log.JsonLines(stream, quiet=True))
    with out.step("x"):
        out.info("y")
    out.error("error: z")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["error"]


def test_silent_prints_errors_only():
    stream = io.StringIO()
    out, _, _ = make_log(renderer=log.Silent(stream))
    with out.step("x"):
        out.info("y")
    out.error("error: z")
    assert stream.getvalue() == "ocistrap: error: z\n"


def test_live_line_shows_the_running_step_and_scrolls_finished_ones():
    stream = io.StringIO()
    out, _, ticks = make_log(renderer=log.Live(stream, interval=0.1, columns=lambda: 30))
    with out.step("installing"):
        with out.step("writing layer"):
            meter = out.meter()
            meter.add(nbytes=1000)  # within the interval: not drawn
            ticks.now += 0.2
            meter.add(nbytes=5_000_000)
    screen = stream.getvalue()
    frames = screen.split("\r\x1b[K")
    assert frames[1:4] == ["installing...", "writing layer...", "writing layer: 5.0 MB"]
    assert frames[4:] == ["  writing layer: done in 0.2s\n", "installing...", "installing: done in 0.2s\n"]
    assert "writing layer: 1.0 kB" not in screen


def test_an_error_ends_the_live_line():
    stream = io.StringIO()
    out, _, _ = make_log(renderer=log.Live(stream, columns=lambda: 80))
    with pytest.raises(KeyboardInterrupt), out.step("installing"):
        raise KeyboardInterrupt
    out.error("interrupted")
    out.close()
    assert stream.getvalue().endswith("\r\x1b[Kinstalling...\r\x1b[Kocistrap: interrupted\n")


def test_live_line_is_cut_to_the_terminal_width():
    stream = io.StringIO()
    out, _, _ = make_log(renderer=log.Live(stream, columns=lambda: 21))
    with out.step("x" * 50):
        pass
    assert "\r\x1b[K" + "x" * 20 + "\r" in stream.getvalue()


def test_renderer_choice():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(log.renderer_for(Tty(), quiet=False, log_format="text"), log.Live)
    assert isinstance(log.renderer_for(io.StringIO(), quiet=False, log_format="text"), log.Plain)
    assert isinstance(log.renderer_for(Tty(), quiet=True, log_format="text"), log.Silent)
    assert isinstance(log.renderer_for(Tty(), quiet=True, log_format="json"), log.JsonLines)


def test_counting_reader_reports_bytes():
    out, _, _ = make_log()
    meter = out.meter()
    reader = meter.reader(io.BufferedReader(io.BytesIO(b"x" * 10)))
    buffer = bytearray(4)
    assert reader.readinto(buffer) == 4
    assert reader.read() == b"x" * 6
    assert reader.peek(1) == b""
    assert meter.nbytes == 10


@pytest.fixture
def restore_log(monkeypatch):
    monkeypatch.setattr(log, "_current", log.get())


def test_cli_errors_go_through_the_log(capsys, tmp_path, restore_log):
    code = cli.main(["--log-format", "json", "build", "--lock", str(tmp_path / "missing.lock")])
    err = capsys.readouterr().err.splitlines()
    assert code != 0
    assert json.loads(err[-1])["event"] == "error"


def test_cli_quiet_error_is_one_line(capsys, tmp_path, restore_log):
    code = cli.main(["--quiet", "build", "--lock", str(tmp_path / "missing.lock")])
    captured = capsys.readouterr()
    assert code != 0
    assert captured.err.startswith("ocistrap: error: ") and captured.err.count("\n") == 1
    assert captured.out == ""


def test_cli_timings_after_the_command(capsys, tmp_path, restore_log):
    cli.main(["--timings", "build", "--lock", str(tmp_path / "missing.lock")])
    assert capsys.readouterr().err.splitlines()[-1].lstrip().startswith("total")
