#!/usr/bin/env python3
"""Time `ocistrap build --push` against the rootless pipeline people use today, side by side.

Usage: bench-build.py [--runs N] [--cases minbase,large] [--foreign] [--output BENCHMARKS.md] [--root-runner SOCKET]

The pipeline: `mmdebstrap --mode=unshare --variant=minbase SUITE rootfs.tar`,
`podman import rootfs.tar`, `podman push --tls-verify=false`. Against it,
`ocistrap build SUITE --variant minbase --push` with a warm package cache (one
untimed build fills it first) and with an empty one (cold). Every run pushes
to a fresh `docker-registry` on 127.0.0.1, so every run uploads every blob.
Runs alternate (pipeline, warm, cold, single-uid, chrootless, root, with the
order rotated each round; single-uid is the warm build in `--mode single-uid`,
as for an account without subordinate ids; chrootless and root are the warm
build in the modes without a user namespace, natively only: root's runs are
made as root by scripts/bench-root.py, which `make bench` puts around this
script when started as root and which passes --root-runner; without it the
report says why root mode is missing);
each ratio is ocistrap's wall time over the pipeline's wall time in the same
round, and the summary is the median of those ratios. Every command runs
under `/usr/bin/time`, whose maximum RSS is that of the largest process of
its tree (the kernel keeps the largest of the waited-for descendants).

Cases: minbase; large (`--include build-essential`); arm64 (foreign, under
qemu-user; about 80 s per pipeline run, so only with --foreign). Run it as an
unprivileged account with subuids (`make bench` arranges that as root); the
cold runs and the pipeline need the network (deb.debian.org).
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE / "tests"))

from benchlib import (  # noqa: E402
    CASES,
    PHASES,
    BenchFailure,
    Case,
    git_revision,
    ocistrap_argv,
    phases,
    root_request,
    rotated,
    timed,
)
from e2e_helpers import podman_environment  # noqa: E402
from registry_fixture import RealRegistry, free_port  # noqa: E402

TOOLS = ("pipeline", "warm", "cold", "single-uid", "chrootless", "root")
LABELS = {"pipeline": "mmdebstrap + podman import + push", "warm": "ocistrap, warm cache",
          "cold": "ocistrap, cold cache", "single-uid": "ocistrap --mode single-uid, warm",
          "chrootless": "ocistrap --mode chrootless, warm", "root": "ocistrap --mode root (as root), warm"}
# the modes without a user namespace (native cases only), each held to the ratio of the mode it stands in for
BOUNDS = {"chrootless": "single-uid", "root": "warm"}
# the runs on the account's warm cache; fill is the untimed one that fills it
WARM = ("fill", "warm", "single-uid", "chrootless")
PIPELINE_STEPS = ("mmdebstrap", "podman import", "podman push")
TARGETS = {"warm": 0.40, "cold": 0.50}
FOREIGN_TARGET = 0.50
MEMORY_TARGET_MIB = 150
ROOT_MISSING = ("root mode needs root, and this bench was not started as root (`make bench` as root "
                "times it through scripts/bench-root.py)")


@dataclass
class Run:
    wall: float
    peak_kib: int
    phases: dict[str, float] = field(default_factory=dict)


@dataclass
class Result:
    case: Case
    tools: tuple[str, ...]
    runs: dict[str, list[Run]] = field(init=False)

    def __post_init__(self) -> None:
        self.runs = {t: [] for t in self.tools}

    def ratios(self, tool: str) -> list[float]:
        return [r.wall / p.wall for r, p in zip(self.runs[tool], self.runs["pipeline"])]

    def median(self, tool: str) -> float:
        return statistics.median(r.wall for r in self.runs[tool])

    def peak_mib(self, tool: str) -> float:
        return max(r.peak_kib for r in self.runs[tool]) / 1024

    def phase_median(self, tool: str, phase: str) -> float:
        return statistics.median(r.phases.get(phase, 0.0) for r in self.runs[tool])


# ---- running commands ----

def run_pipeline(case: Case, registry: RealRegistry, work: Path, env: dict[str, str]) -> Run:
    rootfs = work / "rootfs.tar"
    name = f"{registry.host}/bench/mmdebstrap:{case.name}"
    podman = ["podman", "--log-level=error"]
    commands = [
        ["mmdebstrap", "--quiet", "--mode=unshare", "--variant=minbase", *case.mmdebstrap, "bookworm", str(rootfs)],
        [*podman, "import", "--quiet", *(["--arch", case.arch] if case.arch else []), str(rootfs), name],
        [*podman, "push", "--quiet", "--tls-verify=false", name],
    ]
    measured = {PIPELINE_STEPS[n]: timed(argv, work, env)[:2] for n, argv in enumerate(commands)}
    subprocess.run([*podman, "rmi", "--force", name], env=env, capture_output=True, check=False)
    rootfs.unlink(missing_ok=True)
    return Run(sum(w for w, _ in measured.values()), max(p for _, p in measured.values()),
               {step: w for step, (w, _) in measured.items()})


def run_ocistrap(case: Case, cache: Path, registry: RealRegistry, work: Path, env: dict[str, str],
                 tool: str) -> Run:
    target = f"{registry.host}/bench/ocistrap-{tool}:{case.name}"
    wall, peak, stderr = timed(ocistrap_argv(case, cache, target, tool), work, env)
    return Run(wall, peak, phases(stderr))


def run_root(case: Case, registry: RealRegistry, runner: Path) -> Run:
    """Root mode's run, which root's runner (scripts/bench-root.py) times as this script times the others."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(str(runner))
            connection.sendall(root_request(case.name, f"{registry.host}/bench/ocistrap-root:{case.name}"))
            answer = json.loads(connection.makefile("rb").readline() or b'{"error": "no answer"}')
    except OSError as e:
        raise BenchFailure(f"root's runner at {runner}: {e}") from None
    if "error" in answer:
        raise BenchFailure(f"root's runner: {answer['error']}")
    return Run(answer["wall"], answer["peak_kib"], answer["phases"])


def one_run(tool: str, case: Case, warm_cache: Path, work: Path, env: dict[str, str],
            runner: Path | None) -> Run:
    """TOOL's run of CASE, pushing to a registry of its own (started and stopped untimed)."""
    registry = RealRegistry(Path(tempfile.mkdtemp(prefix="registry-", dir=work)), free_port())
    registry.start()
    try:
        if tool == "pipeline":
            return run_pipeline(case, registry, work, env)
        if tool == "root" and runner is not None:
            return run_root(case, registry, runner)
        if tool in WARM:
            return run_ocistrap(case, warm_cache, registry, work, env, tool)
        cold = Path(tempfile.mkdtemp(prefix="cold-cache-", dir=work))
        try:
            return run_ocistrap(case, cold, registry, work, env, tool)
        finally:
            shutil.rmtree(cold, ignore_errors=True)
    finally:
        registry.kill()
        shutil.rmtree(registry.root, ignore_errors=True)


def case_tools(case: Case, runner: Path | None) -> tuple[str, ...]:
    """What CASE is timed with: the modes without a user namespace only natively, root mode only with root's runner."""
    return tuple(t for t in TOOLS if not (t in BOUNDS and case.arch) and not (t == "root" and runner is None))


def bench_case(case: Case, runs: int, work: Path, env: dict[str, str], runner: Path | None) -> Result:
    warm = work / f"warm-cache-{case.name}"
    result = Result(case, case_tools(case, runner))
    fills = ("fill", "root") if "root" in result.tools else ("fill",)
    whose = "the account's and root's warm caches" if len(fills) > 1 else "the warm cache"
    print(f"{case.title}: filling {whose} (untimed)", flush=True)
    for tool in fills:
        one_run(tool, case, warm, work, env, runner)
    for number in range(runs):
        for tool in rotated(result.tools, number):
            run = one_run(tool, case, warm, work, env, runner)
            result.runs[tool].append(run)
            print(f"  {case.name} run {number + 1}/{runs}: {LABELS[tool]:38} {run.wall:6.1f} s, "
                  f"peak {run.peak_kib / 1024:5.0f} MiB", flush=True)
        print(f"  {case.name} run {number + 1}/{runs}: ratios "
              + ", ".join(f"{t} {result.ratios(t)[-1]:.2f}" for t in result.tools[1:]), flush=True)
    return result


# ---- the report ----

def podman_env() -> dict[str, str]:
    """Rootless podman as this machine needs it (tests/e2e_helpers.py)."""
    try:
        return podman_environment()
    except RuntimeError as e:
        sys.exit(f"bench-build: {e}")


def version(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"


def machine() -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    memory = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    return [f"{os.cpu_count()} × {cpu}, {memory / 1024 / 1024:.0f} GiB RAM",
            f"{platform.system()} {platform.release()}, {platform.freedesktop_os_release().get('PRETTY_NAME', '?')}",
            f"Python {platform.python_version()}"]


def versions(revision: str) -> list[str]:
    from ocistrap import __version__
    return [f"ocistrap {__version__} ({revision})", version(["mmdebstrap", "--version"]),
            version(["podman", "--version"]), version(["docker-registry", "--version"]),
            version(["dpkg", "--version"])]


def summary_table(results: list[Result]) -> list[str]:
    lines = ["| case | pipeline median | ocistrap warm | ratio warm (median) | ocistrap cold | ratio cold (median) "
             "| single-uid warm | ratio single-uid | peak RSS pipeline | peak RSS warm | peak RSS cold |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        target = (FOREIGN_TARGET, FOREIGN_TARGET) if r.case.arch else (TARGETS["warm"], TARGETS["cold"])
        lines.append(
            f"| {r.case.title} | {r.median('pipeline'):.1f} s | {r.median('warm'):.1f} s "
            f"| **{statistics.median(r.ratios('warm')):.2f}×** (target ≤ {target[0]:.2f}) "
            f"| {r.median('cold'):.1f} s | **{statistics.median(r.ratios('cold')):.2f}×** (target ≤ {target[1]:.2f}) "
            f"| {r.median('single-uid'):.1f} s | {statistics.median(r.ratios('single-uid')):.2f}× "
            f"| {r.peak_mib('pipeline'):.0f} MiB | {r.peak_mib('warm'):.0f} MiB | {r.peak_mib('cold'):.0f} MiB |")
    return lines


def no_namespace_table(results: list[Result], root_missing: str) -> list[str]:
    """The modes without a user namespace, each against the ratio of the mode it stands in for (same rounds)."""
    lines = ["| case | mode | warm median | ratio (median) | held to | its ratio | within | peak RSS |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in results if not r.case.arch):
        for mode, bound in BOUNDS.items():
            held = f"{bound} | {statistics.median(r.ratios(bound)):.2f}×"
            if mode not in r.tools:
                lines.append(f"| {r.case.title} | {mode} | — | — | {held} | not timed: {root_missing} | — |")
                continue
            ratio, limit = statistics.median(r.ratios(mode)), statistics.median(r.ratios(bound))
            lines.append(f"| {r.case.title} | {mode} | {r.median(mode):.1f} s | **{ratio:.2f}×** | {held} "
                         f"| {'yes' if ratio <= limit else 'no'} | {r.peak_mib(mode):.0f} MiB |")
    return lines


def tools_of(results: list[Result]) -> tuple[str, ...]:
    """The tools any of RESULTS was timed with, in the order of TOOLS."""
    return tuple(t for t in TOOLS if any(t in r.tools for r in results))


def runs_table(results: list[Result]) -> list[str]:
    tools = tools_of(results)
    lines = ["| case | run | " + " | ".join(tools) + " | " + " | ".join(f"{t}/pipeline" for t in tools[1:]) + " |",
             "|---|---|" + "---|" * (2 * len(tools) - 1)]
    for r in results:
        for n in range(len(r.runs["pipeline"])):
            walls = [r.runs[t][n].wall if t in r.tools else None for t in tools]
            lines.append(f"| {r.case.name} | {n + 1} | "
                         + " | ".join("—" if w is None else f"{w:.1f} s" for w in walls) + " | "
                         + " | ".join("—" if w is None else f"{w / walls[0]:.2f}" for w in walls[1:]) + " |")
    return lines


def pipeline_table(results: list[Result]) -> list[str]:
    lines = ["| case | " + " | ".join(PIPELINE_STEPS) + " |", "|---|" + "---|" * len(PIPELINE_STEPS)]
    for r in results:
        lines.append(f"| {r.case.name} | " + " | ".join(f"{r.phase_median('pipeline', s):.1f} s"
                                                       for s in PIPELINE_STEPS) + " |")
    return lines


def phase_table(results: list[Result]) -> list[str]:
    names = [phase for phase, _ in PHASES]
    lines = ["| case | cache | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for r in results:
        for tool in r.tools[1:]:
            lines.append(f"| {r.case.name} | {tool} | "
                         + " | ".join(f"{r.phase_median(tool, p):.1f} s" for p in names) + " |")
    return lines


def commands(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        c = r.case
        mm = " ".join(("mmdebstrap --mode=unshare --variant=minbase", *c.mmdebstrap, "bookworm rootfs.tar"))
        arch = f" --arch {c.arch}" if c.arch else ""
        oc = " ".join(("ocistrap build bookworm --variant minbase", *c.ocistrap,
                       "--push 127.0.0.1:PORT/bench/ocistrap:" + c.name))
        modes = [] if c.arch else [f"{oc} --mode {m}" + (" (as root)" if m == "root" else "") for m in BOUNDS]
        lines += [f"{c.title}:", "", "```sh", mm, f"podman import{arch} rootfs.tar 127.0.0.1:PORT/bench/mmdebstrap:{c.name}",
                  f"podman push --tls-verify=false 127.0.0.1:PORT/bench/mmdebstrap:{c.name}", oc, *modes, "```", ""]
    return lines


def report(results: list[Result], runs: int, revision: str, load: str, root_missing: str) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Benchmarks", "",
             "Written by `make bench` (scripts/bench-build.py); the profile section is kept from the previous",
             "file. Wall times of whole commands as an unprivileged user (root mode's as root, run by",
             "scripts/bench-root.py at its place in each round), each run pushing to its own",
             "`docker-registry` on 127.0.0.1; runs alternate and each ratio compares runs of the same round.",
             "Peak RSS is `/usr/bin/time`'s maximum resident set size: that of the largest process of the",
             f"command's tree (target: ocistrap's under {MEMORY_TARGET_MIB} MiB).", "",
             f"- date: {when}; {runs} run(s) per tool and case; load average before/after: {load}"]
    lines += [f"- machine: {'; '.join(machine())}"]
    lines += [f"- {v}" for v in versions(revision)]
    lines += ["", "## Summary", "", *summary_table(results), "",
              "## Without a user namespace", "",
              "The warm build in the modes for where no user namespace can be made: chrootless (unprivileged;",
              "the host's dpkg installs from outside, owners recorded) is held to single-uid's ratio, root",
              "(`--mode root` run as root: a plain chroot, no namespace) to the default unshare mode's (warm).",
              "Both ratios of a row are medians over the same rounds.", "",
              *no_namespace_table(results, root_missing), "",
              "## Every run", "", *runs_table(results), "",
              "## Where ocistrap's time goes (median seconds per phase, from `--timings`)", "",
              "metadata: verifying Release files, reading indices, resolving, checking the lock; download:",
              "fetching (and re-hashing cached) .debs; unpack + configure: from the sandbox's start until the",
              "layer's tar stream begins, of which unpack is ocistrap unpacking the essential set plus dpkg",
              "until it starts configuring (preinst scripts included), and configure is dpkg from then on",
              "(postinst scripts, triggers); the rest is the sandbox starting and the tree being tidied;",
              "layer: tar stream, compression, digests;",
              "push: uploading to the registry; expand (alongside): dpkg-deb expanding the .debs into the",
              "cache (or re-hashing their expansions), in background threads from the end of download on,",
              "while the sandbox unpacks and configures (not part of the other phases' sum).", "",
              *phase_table(results), "",
              "The pipeline's commands (median seconds):", "", *pipeline_table(results), "",
              "## Commands", "", *commands(results)]
    return "\n".join(lines).rstrip() + "\n"


PROFILE_MARK = "\n## Profile"
FOREIGN_MARK = "\n## Foreign architecture"


def kept_profile(path: Path) -> str:
    """The hand-written profile section of an existing report, kept across runs."""
    if not path.exists():
        return ""
    text = path.read_text()
    return text[text.index(PROFILE_MARK):] if PROFILE_MARK in text else ""


def kept_parts(path: Path) -> tuple[str, str]:
    """An existing report's native part and its foreign section (without the profile): a run of only
    one kind rewrites only its own, as the foreign case takes ~10 minutes and runs only with --foreign."""
    text = path.read_text() if path.exists() else ""
    text = text[:text.index(PROFILE_MARK)] if PROFILE_MARK in text else text
    at = text.find(FOREIGN_MARK)
    return (text, "") if at < 0 else (text[:at].rstrip() + "\n", text[at:])


def qemu_version() -> str:
    """The qemu-user that binfmt_misc runs arm64 programs with."""
    handler = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    interpreter = next((line.split()[1] for line in handler.read_text().splitlines()
                        if line.startswith("interpreter ")), None) if handler.exists() else None
    # the handler's own name (…-binfmt-P) refuses to run outside binfmt_misc; the file it links to does not
    return version([str(Path(interpreter).resolve()), "--version"]) if interpreter else "no qemu-aarch64 binfmt handler"


def foreign_section(results: list[Result], runs: int, revision: str, load: str) -> str:
    """The foreign case's own section: arm64 built on amd64, target code under qemu-user."""
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [FOREIGN_MARK.strip() + ": arm64 on amd64 under qemu-user", "",
             "Written by `make bench BENCH_ARGS=--foreign` (`--cases '' --foreign` for this section alone);",
             "the same pipelines, commands and figures as above, for `--arch arm64`. ocistrap unpacks with the",
             "host's dpkg natively and runs under qemu only what is target code: maintainer scripts and the",
             "target's `dpkg --configure` (ocistrap/hostdpkg.py).", "",
             f"- date: {when}; {runs} run(s) per tool; load average before/after: {load}",
             f"- machine: {'; '.join(machine())}", *[f"- {v}" for v in versions(revision)],
             f"- {qemu_version()}", "", *summary_table(results), "", *runs_table(results), "",
             "Median seconds per phase of ocistrap (`--timings`):", "", *phase_table(results), "",
             "The pipeline's commands (median seconds):", "", *pipeline_table(results), "", *commands(results)]
    return "\n".join(lines).rstrip() + "\n"


def load_average() -> str:
    """The 1-minute load: other work on the machine skews both sides (the ratios less than the times)."""
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per tool and case (default 3)")
    parser.add_argument("--cases", default="minbase,large", help="comma-separated of: " + ", ".join(CASES))
    parser.add_argument("--foreign", action="store_true", help="add the arm64 case (slow: ~80 s per pipeline run)")
    parser.add_argument("--output", type=Path, default=HERE / "BENCHMARKS.md", help="report to write")
    parser.add_argument("--no-output", action="store_true", help="print only")
    parser.add_argument("--revision", default=None, help="source revision to name (default: git rev-parse)")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--root-runner", type=Path, default=None,
                        help="socket of root's runner timing root mode (scripts/bench-root.py; `make bench` as root)")
    args = parser.parse_args()
    names = [n.strip() for n in args.cases.split(",") if n.strip()] + (["arm64"] if args.foreign else [])
    unknown = [n for n in names if n not in CASES]
    if unknown or args.runs < 1:
        parser.error(f"unknown case {unknown}" if unknown else "--runs must be at least 1")
    if os.geteuid() == 0:
        sys.exit("bench-build: run as an unprivileged user with subuids (`make bench` does that as root)")
    env = podman_env()
    load_before = load_average()
    work = args.work or Path(tempfile.mkdtemp(prefix="ocistrap-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root_missing = "" if args.root_runner else ROOT_MISSING
    try:
        results = [bench_case(CASES[n], args.runs, work, env, args.root_runner) for n in dict.fromkeys(names)]
    except BenchFailure as e:
        sys.exit(f"bench-build: {e}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(["", *summary_table(results), "", *no_namespace_table(results, root_missing), "",
                      *phase_table(results)]))
    if not args.no_output:
        revision, load = args.revision or git_revision(), f"{load_before} / {load_average()}"
        native, foreign = [r for r in results if not r.case.arch], [r for r in results if r.case.arch]
        kept_native, kept_foreign = kept_parts(args.output)
        args.output.write_text(
            (report(native, args.runs, revision, load, root_missing) if native else kept_native)
            + ("\n" + foreign_section(foreign, args.runs, revision, load) if foreign else kept_foreign)
            + kept_profile(args.output))
        print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
