import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
from host_helpers import FakeHost
from image_helpers import layer_tar, lockfile

from ocistrap import log, pipeline
from ocistrap.debian.lock import LockedArchive
from ocistrap.errors import BuildError, OcistrapError
from ocistrap.rootfs import bootplan, bootstrap, buildmode, idmaps, innerboot, innerlog
from ocistrap.rootfs.bootplan import Deb, Plan


def deb(name: str, pre: str = "", provides: str = "", auto: bool = False) -> Deb:
    return Deb(name=name, path=f"/cache/{name}", pre_depends=pre, provides=provides, arch="amd64", auto=auto)


def names(batches: list[list[Deb]]) -> list[list[str]]:
    return [[d.name for d in batch] for batch in batches]


def test_batches_without_pre_depends_are_one_dpkg_call() -> None:
    assert names(bootplan.install_batches([deb("a"), deb("b")], [deb("libc6")])) == [["a", "b"]]


def test_pre_depends_on_a_later_package_waits_for_it() -> None:
    rest = [deb("e2fsprogs", pre="libext2fs2 (>= 1.47), libc6"), deb("libext2fs2", pre="libc6")]
    assert names(bootplan.install_batches(rest, [deb("libc6")])) == [["libext2fs2"], ["e2fsprogs"]]


def test_pre_depends_through_provides_and_alternatives() -> None:
    rest = [deb("tool", pre="awk | gawk"), deb("mawk", provides="awk")]
    assert names(bootplan.install_batches(rest, [])) == [["mawk"], ["tool"]]


def test_unsatisfiable_pre_depends_is_an_error_naming_the_packages() -> None:
    with pytest.raises(BuildError, match="tool"):
        bootplan.install_batches([deb("tool", pre="missing")], [deb("libc6")])


def test_extended_states_lists_only_auto_installed_sorted() -> None:
    text = bootplan.extended_states([deb("zlib", auto=True), deb("apt"), deb("libapt", auto=True)])
    assert text == ("Package: libapt\nArchitecture: amd64\nAuto-Installed: 1\n\n"
                    "Package: zlib\nArchitecture: amd64\nAuto-Installed: 1\n\n")


def test_sources_group_suites_by_mirror() -> None:
    archives = [LockedArchive("http://deb.debian.org/debian", "bookworm"),
                LockedArchive("http://deb.debian.org/debian", "bookworm-updates"),
                LockedArchive("http://deb.debian.org/debian-security", "bookworm-security")]
    text = bootplan.sources_text(archives, ["main", "contrib"], ["/usr/share/keyrings/k.gpg"])
    stanzas = text.split("\n\n")
    assert stanzas[0] == ("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
                          "Components: main contrib\nSigned-By: /usr/share/keyrings/k.gpg")
    assert "URIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n" in stanzas[1]


def test_plan_crosses_the_namespace_boundary_unchanged() -> None:
    plan = Plan(arch="arm64", essential=[deb("libc6")], rest=[deb("apt", pre="libc6", auto=True)],
                sources="Types: deb\n", staging="/tmp/x/root", tmpfs=True, epoch=1700000000,
                debs_dir="/cache/blobs/sha256", keyrings={"ocistrap-0.gpg": "00ff"})
    assert Plan.loads(plan.dumps()) == plan


def test_the_tree_is_merged_up_front_only_when_usrmerge_would_merge_it() -> None:
    def plan(*rest: str) -> Plan:
        return Plan(arch="amd64", essential=[deb("base-files"), deb("libc6")], rest=[deb(n) for n in rest],
                    sources="", staging="/x/root", tmpfs=True, epoch=0, debs_dir="/cache")
    assert bootplan.merged_usr_aliases(plan("apt", "usrmerge")) == \
        ("bin", "sbin", "lib", "lib32", "lib64", "libo32", "libx32")
    assert bootplan.merged_usr_aliases(plan("apt", "usr-is-merged")) == ()
    assert bootplan.merged_usr_aliases(plan()) == ()


def test_count_configured_counts_whole_setting_up_lines() -> None:
    lines, rest = bootstrap.complete_lines(b"Unpacking x (1) ...\nSetting up x (1) ...\nSetting up y (2) ...\nSett")
    assert (bootstrap.count_configured(lines), rest) == (2, b"Sett")
    lines, rest = bootstrap.complete_lines(rest + b"ing up z (3) ...\nProcessing triggers for z\n")
    assert (bootstrap.count_configured(lines), rest) == (1, b"")


def test_count_configured_ignores_setting_up_inside_a_line() -> None:
    lines, rest = bootstrap.complete_lines(b"debconf: Setting up frontend\n  Setting up x\n")
    assert (bootstrap.count_configured(lines), rest) == (0, b"")


@pytest.mark.parametrize("debug", [False, True])
def test_inner_log_counts_packages_and_echoes_lines_only_with_debug(tmp_path, debug: bool) -> None:
    """With --debug the inside's output still goes to the log file (whose last error line the
    outer half raises) and reaches stderr as the log's own detail lines, the unfinished last
    line included; without it, only the count. The inside's own notices are messages either way."""
    stream = io.StringIO()
    previous = log.get()
    out = log.configure(debug=debug, log_format="json", stream=stream)
    try:
        with open(tmp_path / "inner.log", "w+b") as inner:
            follower = bootstrap._InnerLog(inner, total=2)
            follower.INTERVAL = 0.01
            follower.start()
            inner.write(b"Setting up x (1) ...\nocistrap: arm64: the host's dpkg unpacks\n")
            inner.flush()
            inner.write(b"Setting up y (2) ...\nocistrap-inner: error: dpkg failed")
            inner.flush()
            follower.stop()
            assert follower.meter.done == 2
    finally:
        log._current = previous
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    details = [e["text"] for e in events if e["event"] == "detail"]
    assert details == (["Setting up x (1) ...", "Setting up y (2) ...", "ocistrap-inner: error: dpkg failed"]
                       if debug else [])
    assert [e["text"] for e in events if e["event"] == "info"] == ["arm64: the host's dpkg unpacks"]
    assert out.debug is debug


def test_what_the_inside_notices_is_a_message_of_the_log(tmp_path, capsys) -> None:
    """innerlog.notice, as the inside calls it, prints what the outer half's follower shows as a
    message (not a detail for --debug only)."""
    innerlog.notice("leaving /sys empty")
    printed = capsys.readouterr().err.encode()
    stream = io.StringIO()
    previous = log.get()
    log.configure(log_format="json", stream=stream)
    try:
        lines, _ = bootstrap.complete_lines(printed)
        with open(tmp_path / "inner.log", "w+b") as inner:
            bootstrap._InnerLog(inner, total=1)._show(lines)
    finally:
        log._current = previous
    assert [(e["event"], e["text"]) for e in map(json.loads, stream.getvalue().splitlines())] == [
        ("info", "leaving /sys empty")]


def refusing_runner(tried: list[tuple[bool, bool]], stream=lambda plan: f"layer of {plan.arch}"):
    """A runner for the namespace kinds whose newuidmap refuses every full map; it passes
    STREAM(plan) to the sink as the one layer."""
    def run(plan: Plan, sink, *, maps: idmaps.IdMaps, remove_on_exit, ready) -> list:
        tried.append((maps.is_single, plan.record_owners))
        if not maps.is_single:
            raise idmaps.MapRefused("newuidmap refused the uid map 0 1000 1: write failed")
        return [sink(stream(plan))]
    return run


PLAN = Plan(arch="amd64", essential=[], rest=[], sources="", staging="/x/root", tmpfs=True, epoch=0, debs_dir="/d")


def test_auto_mode_falls_back_to_single_uid_when_newuidmap_refuses(monkeypatch) -> None:
    tried: list[tuple[bool, bool]] = []
    monkeypatch.setitem(bootstrap.RUNNERS, "namespace", refusing_runner(tried))
    installed = bootstrap.bootstrap(PLAN, lambda stream: stream, mode=buildmode.decide_mode("auto", FakeHost()))
    assert installed.layers == ["layer of amd64"]
    assert (installed.mode.name, installed.mode.fell_back_from) == ("single-uid", "unshare")
    assert tried == [(False, False), (True, True)]
    tried.clear()
    with pytest.raises(idmaps.MapRefused):
        bootstrap.bootstrap(PLAN, lambda stream: stream, mode=buildmode.decide_mode("unshare", FakeHost()))
    assert tried == [(False, False)]


def test_every_kind_of_mode_has_a_runner() -> None:
    assert {k.runner for k in buildmode.KINDS.values()} <= set(bootstrap.RUNNERS)


def test_the_inner_half_waits_for_each_package_the_host_announces() -> None:
    made = []

    def ready():
        for n in range(1, 4):
            made.append(n)
            yield n
    announcer = bootstrap._Announcer(ready)
    waiting = innerboot._Ready(announcer.inner_fd)
    announcer.start()
    waiting.wait(2)
    assert waiting.count >= 2
    waiting.wait(3)
    assert made == [1, 2, 3]
    with pytest.raises(BuildError, match="not all made ready on the host"):
        waiting.wait(4)
    os.close(announcer.inner_fd)
    announcer.raise_failure()


def test_a_package_that_could_not_be_made_ready_is_the_error_raised() -> None:
    from ocistrap.debian.expand import ArchiveError

    def ready():
        yield 1
        raise ArchiveError("junk is not a .deb (an ar archive)")
    announcer = bootstrap._Announcer(ready)
    waiting = innerboot._Ready(announcer.inner_fd)
    announcer.start()
    with pytest.raises(BuildError):
        waiting.wait(2)
    os.close(announcer.inner_fd)
    with pytest.raises(ArchiveError, match="junk is not a .deb"):
        announcer.raise_failure()


def test_without_announcements_everything_is_ready() -> None:
    announcer = bootstrap._Announcer(None)
    assert announcer.inner_fds == [] and announcer.inner_fd == -1
    announcer.start()
    innerboot._Ready(-1).wait(10**6)


def test_phases_cross_to_the_outer_half_one_line_per_layer() -> None:
    r, w = os.pipe()
    phases = innerboot.Phases(w)
    assert not os.get_inheritable(w), "a maintainer script's daemon could hold the pipe open"
    with phases.timed(innerboot.UNPACKING_ESSENTIAL):
        pass
    phases.add(innerboot.DPKG_CONFIGURING, 2.0)
    phases.add(innerboot.DPKG_UNPACKING, 1.0)
    phases.add(innerboot.DPKG_CONFIGURING, 0.5)
    phases.report()
    phases.add(innerboot.DPKG_UNPACKING, 3.0)
    phases.report()
    os.close(w)
    with os.fdopen(r, "rb") as reader:
        first, second = innerboot.read_phases(reader.readline()), innerboot.read_phases(reader.readline())
        assert innerboot.read_phases(reader.readline()) == []
    assert [name for name, _ in first] == [innerboot.UNPACKING_ESSENTIAL, innerboot.DPKG_UNPACKING,
                                           innerboot.DPKG_CONFIGURING]
    assert first[1:] == [(innerboot.DPKG_UNPACKING, 1.0), (innerboot.DPKG_CONFIGURING, 2.5)]
    assert second == [(innerboot.DPKG_UNPACKING, 3.0)]


@pytest.mark.parametrize("line", [b"", b"not json\n", b"[1, 2]\n", b'{"dpkg unpacking": "x"}\n'])
def test_a_phase_report_that_is_not_one_gives_no_phases(line: bytes) -> None:
    assert innerboot.read_phases(line) == []


def test_a_second_architecture_does_not_retry_unshare_after_a_fallback(monkeypatch, tmp_path) -> None:
    locked = lockfile(("amd64", "arm64"))
    tried: list[tuple[bool, bool]] = []
    monkeypatch.setitem(bootstrap.RUNNERS, "namespace", refusing_runner(
        tried, lambda plan: io.BytesIO(layer_tar({"etc/arch": plan.arch.encode()}))))
    pending = SimpleNamespace(ready=lambda: iter(()), paths=[], seconds=lambda: 0.0)
    fetched = SimpleNamespace(pending={"amd64": pending, "arm64": pending}, close=lambda: None)
    monkeypatch.setattr(pipeline, "fetch", lambda *args, **kw: fetched)
    monkeypatch.setattr(pipeline, "make_plan", lambda lock, arch, *args, **kw: replace(PLAN, arch=arch))
    (tmp_path / "partial").mkdir()
    mode = buildmode.decide_mode("auto", FakeHost())
    request = pipeline.BuildRequest(outputs=(), staging=pipeline.Staging(mode, tmp_path), epoch=0)
    built = pipeline.build(locked, (), None, SimpleNamespace(root=tmp_path), request)  # type: ignore[arg-type]
    assert tried == [(False, False), (True, True), (True, True)]
    assert built.digest.startswith("sha256:")


def failing_inside(message: str):
    """A launch for _bootstrap whose inner half reads the plan, prints MESSAGE as the inside's
    error (INNER_ERROR) and exits with status 1 without streaming a layer."""
    code = ("import sys; sys.stdin.buffer.read(); "
            f"print({innerlog.INNER_ERROR + message!r}, file=sys.stderr); sys.exit(1)")

    def launch(argv, *, stdin, stdout, stderr, pass_fds, **_ignored):
        return subprocess.Popen([sys.executable, "-c", code], stdin=stdin, stdout=stdout, stderr=stderr,
                                pass_fds=pass_fds)
    return launch


def empty_layer_refused(stream) -> None:
    if not stream.read(1):
        raise OcistrapError("the layer tar stream ended early after 0 bytes")


@pytest.mark.parametrize("debug", [False, True])
def test_the_inside_error_is_what_a_failed_install_says_also_with_debug(debug: bool) -> None:
    """The layer stream ends early because the inside gave up: the user is told the inside's
    reason, with --debug too (whose output once went to the terminal only, leaving the outer
    half nothing to quote but the early end)."""
    previous = log.get()
    log.configure(debug=debug, stream=io.StringIO())
    try:
        with pytest.raises(BuildError, match="installing the packages failed: .*dpkg: error processing x"):
            bootstrap._bootstrap(PLAN, empty_layer_refused, maps=None,
                                 remove_on_exit=None, ready=None,
                                 launch=failing_inside("dpkg: error processing x"))
    finally:
        log._current = previous
