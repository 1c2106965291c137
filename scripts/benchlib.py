"""What the bench scripts share: the cases, how ocistrap is run and timed, and what the
account's bench (scripts/bench-build.py) asks root's runner (scripts/bench-root.py)."""

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent

# ocistrap's modes the bench times besides its default (unshare): the warm build in each
MODES = {"single-uid": ("--mode", "single-uid"), "chrootless": ("--mode", "chrootless"), "root": ("--mode", "root")}
PHASES = (("metadata", ("verifying", "reading", "resolving", "checking")), ("download", ("fetching",)),
          ("unpack + configure", ("unpacking and configuring",)),
          ("of which unpack", ("unpacking the essential set", "dpkg unpacking")),
          ("of which configure", ("dpkg configuring",)), ("layer", ("writing layer",)),
          ("push", ("writing outputs",)), ("expand (alongside)", ("expanding",)))
# the only pushes root's runner makes: to a bench registry on the loopback address
ROOT_TARGET = re.compile(r"127\.0\.0\.1:[0-9]{1,5}/bench/[a-z0-9-]+:[a-z0-9]+")


class BenchFailure(Exception):
    """A command of the bench failed: the bench stops, saying which and why."""


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    mmdebstrap: tuple[str, ...]
    ocistrap: tuple[str, ...]
    arch: str | None = None


CASES = {
    "minbase": Case("minbase", "bookworm minbase", (), ()),
    "large": Case("large", "bookworm minbase + build-essential",
                  ("--include=build-essential",), ("--include", "build-essential")),
    "arm64": Case("arm64", "bookworm minbase, arm64 on amd64 (qemu-user)",
                  ("--architectures=arm64",), ("--arch", "arm64"), arch="arm64"),
}


@dataclass(frozen=True)
class RootRequest:
    """One build of root mode the account's bench asks for (the first of a case fills root's cache)."""
    case: Case
    target: str


def git_revision() -> str:
    """The checkout's short commit, for the report: $BENCH_REVISION (`make bench` names the commit
    of the tree it copies to the account, which has no .git), else git's; "unknown" outside git."""
    if os.environ.get("BENCH_REVISION"):
        return os.environ["BENCH_REVISION"]
    done = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def rotated(tools: tuple[str, ...], number: int) -> tuple[str, ...]:
    """The order of round NUMBER: each round starts one tool later, so no tool always runs after the same one."""
    at = number % len(tools)
    return tools[at:] + tools[:at]


def ocistrap_argv(case: Case, cache: Path, target: str, tool: str = "warm") -> list[str]:
    return [sys.executable, "-m", "ocistrap", "--log-format", "json", "--timings", "build", "bookworm",
            "--variant", "minbase", *case.ocistrap, *MODES.get(tool, ()), "--cache-dir", str(cache),
            "--push", target]


def phases(stderr: str) -> dict[str, float]:
    """Seconds per phase, from the `timings` event `--timings --log-format json` prints last."""
    steps = next(json.loads(line)["steps"] for line in reversed(stderr.splitlines())
                 if line.startswith("{") and json.loads(line).get("event") == "timings")
    totals = {}
    for phase, prefixes in PHASES:
        totals[phase] = sum(s["seconds"] for s in steps if s["name"].startswith(prefixes))
    return totals


def timed(argv: list[str], work: Path, env: dict[str, str]) -> tuple[float, int, str]:
    """Run ARGV under /usr/bin/time: its wall seconds, peak RSS in KiB and stderr; BenchFailure if it fails."""
    report = work / "time.out"
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), *argv], cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchFailure(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    wall = time.perf_counter() - started
    return wall, int(report.read_text().split()[-1]), done.stderr


def root_request(case: str, target: str) -> bytes:
    """The line the account's bench sends root's runner."""
    return json.dumps({"case": case, "target": target}).encode() + b"\n"


def parse_root_request(line: bytes) -> RootRequest:
    """What root's runner is asked to build, or ValueError: it builds only a known case and pushes
    only to a registry on the loopback address, whatever the account sends."""
    try:
        asked = json.loads(line)
        case, target = asked["case"], asked["target"]
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"not a request of the bench: {e}") from None
    if not isinstance(case, str) or case not in CASES or CASES[case].arch is not None:
        raise ValueError(f"not a native case of the bench: {case!r}")
    if not isinstance(target, str) or not ROOT_TARGET.fullmatch(target):
        raise ValueError(f"not a bench registry on 127.0.0.1: {target!r}")
    return RootRequest(CASES[case], target)
