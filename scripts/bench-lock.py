#!/usr/bin/env python3
"""Time `ocistrap lock` from a cold and from a warm cache, as the current user.

Usage: bench-lock.py [--runs N] [--suite SUITE]... [--variant VARIANT] [--mirror URL] [--check]

For each suite, N cold runs (each with an empty cache: fetch InRelease and the
Packages index, verify, parse, resolve) and then N warm runs (the cache of the
first cold run: verify and resolve only). Each run is a whole `python -m
ocistrap lock` process, so imports count, as they do for a user. Prints the
median, min and max wall time, the median CPU time (user + system), the
median of each step the CLI logs (`NAME: done in Xs` on stderr, summed by its
first word), and the issue's budget: sid minbase under 5 s cold and under
1 s warm on a 2-core machine.
Step times come from `--log-format json` where the CLI has it (ms), else from
its text lines (0.1 s). The load average is printed with the table: other work
on the machine slows every number. The cold runs need the network
(deb.debian.org by default).
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from benchlib import git_revision

BUDGETS = {("sid", "minbase", "cold"): 5.0, ("sid", "minbase", "warm"): 1.0}
STEP_DONE = re.compile(r"^\s*(?P<name>\S.*): done in (?P<seconds>[0-9.]+)s$")


@dataclass
class Run:
    wall: float
    cpu: float
    steps: dict[str, float]


@dataclass
class Series:
    suite: str
    variant: str
    cache: str
    runs: list[Run] = field(default_factory=list)

    @property
    def budget(self) -> float | None:
        return BUDGETS.get((self.suite, self.variant, self.cache))

    def median(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    def step_median(self, name: str) -> float | None:
        values = [r.steps[name] for r in self.runs if name in r.steps]
        return statistics.median(values) if values else None


def step_times(stderr: str) -> dict[str, float]:
    """The CLI's step log, summed by the step's first word (e.g. all `verifying ...` steps)."""
    totals: dict[str, float] = {}
    for line in stderr.splitlines():
        done = step_done(line)
        if done is not None:
            key = done[0].split()[0]
            totals[key] = totals.get(key, 0.0) + done[1]
    return totals


def step_done(line: str) -> tuple[str, float] | None:
    """A finished step's name and seconds from a JSON or a text log line."""
    if line.startswith("{"):
        event = json.loads(line)
        return (event["text"], event["seconds"]) if event.get("event") == "done" else None
    match = STEP_DONE.match(line)
    return (match["name"], float(match["seconds"])) if match else None


@cache
def log_options() -> list[str]:
    """``--log-format json`` if this ocistrap has it."""
    done = subprocess.run([sys.executable, "-m", "ocistrap", "--help"], capture_output=True, text=True, check=True)
    return ["--log-format", "json"] if "--log-format" in done.stdout else []


def load_average() -> str:
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def lock_once(suite: str, variant: str, cache: Path, output: Path, options: list[str]) -> Run:
    argv = [sys.executable, "-m", "ocistrap", *log_options(), "lock", suite, "--variant", variant,
            "--no-check-valid-until", "--cache-dir", str(cache), "-o", str(output), *options]
    cpu_before = child_cpu()
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench-lock: `{' '.join(argv)}` failed (exit {done.returncode}):\n{done.stderr}")
    return Run(wall=wall, cpu=child_cpu() - cpu_before, steps=step_times(done.stderr))


def child_cpu() -> float:
    """User + system seconds of the finished children: less swayed by other load than wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_suite(suite: str, variant: str, runs: int, work: Path, options: list[str]) -> list[Series]:
    cold, warm = Series(suite, variant, "cold"), Series(suite, variant, "warm")
    kept = work / f"{suite}-cache"
    for number in range(runs):
        cache = kept if number == 0 else work / f"{suite}-cold-{number}"
        cold.runs.append(lock_once(suite, variant, cache, work / f"{suite}.lock", options))
        progress(cold, number)
        if cache != kept:
            shutil.rmtree(cache)
    for number in range(runs):
        warm.runs.append(lock_once(suite, variant, kept, work / f"{suite}.lock", options))
        progress(warm, number)
    return [cold, warm]


def progress(series: Series, number: int) -> None:
    run = series.runs[-1]
    steps = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in run.steps.items())
    print(f"  {series.suite} {series.variant} {series.cache} #{number + 1}: {run.wall:.2f}s, cpu {run.cpu:.2f}s ({steps})",
          file=sys.stderr, flush=True)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: list[Series]) -> str:
    """The results as a markdown table: wall times, budget verdict, step medians."""
    steps = list(dict.fromkeys(name for s in results for r in s.runs for name in r.steps))
    head = ["suite", "variant", "cache", "runs", "median s", "min s", "max s", "budget s", "cpu s", *steps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in results:
        walls = [r.wall for r in s.runs]
        budget = "-" if s.budget is None else f"{s.budget:.0f} ({'ok' if s.median() < s.budget else 'OVER'})"
        cells = [s.suite, s.variant, s.cache, str(len(walls)), seconds(s.median()), seconds(min(walls)),
                 seconds(max(walls)), budget, seconds(statistics.median(r.cpu for r in s.runs)),
                 *(seconds(s.step_median(name)) for name in steps)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per suite and cache state (default 5)")
    parser.add_argument("--suite", action="append", default=None, help="suite to lock (default: sid and bookworm)")
    parser.add_argument("--variant", default="minbase")
    parser.add_argument("--mirror", default=None, help="archive URL (default: ocistrap's)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a median is over its budget")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    options = ["--mirror", args.mirror] if args.mirror else []
    load_before = load_average()
    results: list[Series] = []
    with tempfile.TemporaryDirectory(prefix="ocistrap-bench-") as tmp:
        for suite in args.suite or ["sid", "bookworm"]:
            print(f"{suite}: {args.runs} cold, then {args.runs} warm runs", file=sys.stderr, flush=True)
            results += bench_suite(suite, args.variant, args.runs, Path(tmp), options)
    print(f"`ocistrap lock` as uid {os.getuid()}, whole process; commit {git_revision()}, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average {load_before} before and "
          f"{load_average()} after; step columns are medians of the CLI's step log\n")
    print(table(results))
    over = [s for s in results if s.budget is not None and s.median() >= s.budget]
    return 1 if args.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
