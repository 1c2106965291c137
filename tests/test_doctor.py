import pytest
from host_helpers import ARM64_ENTRY, FakeHost

from ocistrap import doctor, hostarch
from ocistrap.errors import BuildError
from ocistrap.hostarch import Check
from ocistrap.rootfs import buildmode


def _by_name(results: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in results}


def test_a_healthy_host_passes_every_check() -> None:
    results = doctor.checks(["amd64", "arm64", "i386"], host=FakeHost())
    assert [c.name for c in results] == [
        "native architecture", "user namespaces", "subuid", "subgid", "newuidmap", "newgidmap",
        "build mode", "chrootless mode", "signature verifier", "archive keyring", "binfmt amd64", "binfmt arm64", "binfmt i386"]
    assert all(c.ok for c in results), doctor.format_checks(results)
    found = _by_name(results)
    assert found["native architecture"].detail == "amd64"
    assert found["subuid"].detail == "alice has 65536 subordinate uids (100000-165535) in /etc/subuid"
    assert "runs natively on amd64" in found["binfmt i386"].detail


def test_missing_subuid_entry_says_what_to_add() -> None:
    host = FakeHost(subuid="bob:100000:65536\n", subgid="alice:5:3\n")
    found = _by_name(doctor.checks([], mode="unshare", host=host))
    assert not found["subuid"].ok
    assert "sudo usermod --add-subuids 165536-231071 alice" in found["subuid"].detail
    assert not found["subgid"].ok
    assert "only 3 subordinate gids" in found["subgid"].detail


def test_problems_of_namespaces_mappers_verifier_and_keyring_are_reported() -> None:
    host = FakeHost(userns="enable it", tools={}, keyring_readable=False,
                    mappers={"newuidmap": (None, "install uidmap"),
                             "newgidmap": ("/usr/bin/newgidmap", None)})
    found = _by_name(doctor.checks([], mode="unshare", host=host))
    assert found["user namespaces"] == Check("user namespaces", False, "enable it")
    assert found["newuidmap"] == Check("newuidmap", False, "install uidmap")
    assert found["newgidmap"].ok
    assert "sudo apt install gpgv" in found["signature verifier"].detail
    assert "sudo apt install debian-archive-keyring" in found["archive keyring"].detail


def test_sqv_is_an_accepted_verifier() -> None:
    found = _by_name(doctor.checks([], host=FakeHost(tools={"sqv": "/usr/bin/sqv"})))
    assert found["signature verifier"] == Check("signature verifier", True, "sqv at /usr/bin/sqv")


@pytest.mark.parametrize("entry, mounted, expected", [
    (None, False, "binfmt_misc is not mounted: run `sudo mount -t binfmt_misc"),
    (None, True, "no qemu-aarch64 binfmt handler: run `sudo apt install qemu-user-static binfmt-support`"),
    (ARM64_ENTRY.replace("enabled", "disabled"), True, "sudo update-binfmts --enable qemu-aarch64"),
    (ARM64_ENTRY.replace("POCF", "POC"), True, "lacks the F flag"),
])
def test_binfmt_problems(entry: str | None, mounted: bool, expected: str) -> None:
    check = hostarch.binfmt_verdict("arm64", "amd64", entry, mounted)
    assert not check.ok and expected in check.detail


def test_binfmt_that_cannot_be_read_is_tried_with_a_program() -> None:
    """In a container /proc has no binfmt_misc, yet the host's handlers run its programs."""
    hidden = FakeHost(files={}, runs=True)
    check = doctor.check_binfmt(hidden, "arm64", "amd64")
    assert check.ok and "an arm64 program ran" in check.detail
    refused = doctor.check_binfmt(FakeHost(files={}, runs=False), "arm64", "amd64")
    assert not refused.ok and "binfmt_misc is not mounted" in refused.detail
    assert not doctor.check_binfmt(FakeHost(files={}, runs=None), "arm64", "amd64").ok


def test_the_arm64_program_runs_exactly_where_binfmt_misc_says_arm64_runs() -> None:
    """The program tried where binfmt_misc cannot be read: on this host, whose binfmt_misc can be
    read, it must run exactly when the handler's entry says arm64 runs."""
    host = doctor.SystemHost()
    if host.read_text(hostarch.BINFMT_DIR / "status") is None or hostarch.native_arch() != "amd64":
        pytest.skip("needs an amd64 host whose binfmt_misc is mounted")
    assert hostarch.runs_here("arm64") == doctor.check_binfmt(host, "arm64", "amd64").ok
    assert hostarch.runs_here("vax") is None


def test_binfmt_of_an_unknown_architecture() -> None:
    assert not hostarch.binfmt_verdict("vax", "amd64", None, True).ok


def test_armhf_looks_for_qemu_arm() -> None:
    host = FakeHost(files={"/proc/sys/fs/binfmt_misc/status": "enabled\n"})
    check = doctor.check_binfmt(host, "armhf", "amd64")
    assert "qemu-arm binfmt" in check.detail


def test_format_checks_aligns_names() -> None:
    text = doctor.format_checks([Check("a", True, "fine"), Check("longer", False, "do this")])
    assert text == "ok    a       fine\nFAIL  longer  do this"


@pytest.mark.userns
def test_this_host_is_ready_for_native_builds() -> None:
    results = doctor.checks([hostarch.native_arch()])
    assert all(c.ok for c in results), doctor.format_checks(results)


def test_auto_mode_uses_unshare_when_ranges_and_mappers_work() -> None:
    found = _by_name(doctor.checks([], host=FakeHost()))
    assert found["build mode"].ok and found["build mode"].detail.startswith("unshare: 65536 ids")
    assert "seccomp user notification" not in found


def test_auto_mode_falls_back_to_single_uid_and_says_why() -> None:
    host = FakeHost(subuid="", subgid="",
                    files={"/proc/sys/kernel/seccomp/actions_avail": "kill_process trap user_notif log allow"})
    results = doctor.checks([], host=host)
    found = _by_name(results)
    assert all(c.ok for c in results), doctor.format_checks(results)
    assert found["build mode"].detail.startswith(
        "single-uid, because unshare mode cannot build here: /etc/subuid has no range for alice")
    assert found["build mode"].detail.endswith("; single-uid mode: owners are recorded instead of applied")
    assert found["subuid"].detail.startswith("not needed in single-uid mode: ")
    assert found["seccomp user notification"].ok


def test_single_uid_needs_seccomp_user_notification() -> None:
    host = FakeHost(files={"/proc/sys/kernel/seccomp/actions_avail": "kill_process trap errno trace allow"})
    found = _by_name(doctor.checks([], mode="single-uid", host=host))
    assert found["build mode"].detail == "single-uid: requested with --mode single-uid"
    assert not found["seccomp user notification"].ok
    assert "Linux 5.5" in found["seccomp user notification"].detail


def test_unshare_mode_fails_without_a_range() -> None:
    host = FakeHost(mappers={"newuidmap": (None, "install uidmap"), "newgidmap": ("/usr/bin/newgidmap", None)})
    found = _by_name(doctor.checks([], mode="unshare", host=host))
    assert not found["build mode"].ok
    assert found["build mode"].detail == "unshare is not possible (install uidmap)"
    assert not found["newuidmap"].ok


def test_refused_user_namespaces_without_a_usable_host_dpkg_leave_no_mode() -> None:
    found = _by_name(doctor.checks([], host=FakeHost(userns="enable it", chrootless="the host has no dpkg")))
    assert found["build mode"] == Check(
        "build mode", False, "no mode can build here (enable it; chrootless mode cannot build here: the host has no dpkg)")
    assert found["chrootless mode"] == Check("chrootless mode", False, "the host has no dpkg")


def test_refused_user_namespaces_leave_chrootless_mode_and_say_what_it_trusts() -> None:
    found = _by_name(doctor.checks([], host=FakeHost(userns="enable it")))
    assert found["build mode"].ok
    assert found["build mode"].detail.startswith("chrootless, because unshare mode cannot build here: enable it; chrootless mode: ")
    assert "maintainer scripts run on this host as you" in found["build mode"].detail
    assert found["chrootless mode"].ok and "not needed" not in found["chrootless mode"].detail


def test_chrootless_problems_are_not_failures_when_another_mode_builds() -> None:
    found = _by_name(doctor.checks([], host=FakeHost(chrootless="Yama's kernel.yama.ptrace_scope is 3")))
    assert found["chrootless mode"].ok
    assert found["chrootless mode"].detail == "not needed in unshare mode: Yama's kernel.yama.ptrace_scope is 3"


HOSTS = {
    "ranges": FakeHost(),
    "no subuid": FakeHost(subuid=""),
    "no subgid": FakeHost(subgid="alice:5:3\n"),
    "no newuidmap": FakeHost(mappers={"newuidmap": (None, "install uidmap"),
                                      "newgidmap": ("/usr/bin/newgidmap", None)}),
    "userns refused": FakeHost(userns="enable it"),
    "userns refused, no host dpkg": FakeHost(userns="enable it", chrootless="the host has no dpkg"),
}


@pytest.mark.parametrize("requested", buildmode.MODES)
@pytest.mark.parametrize("host", HOSTS.values(), ids=HOSTS.keys())
def test_doctor_says_what_the_build_decides(host: FakeHost, requested: str) -> None:
    found = _by_name(doctor.checks([], mode=requested, host=host))["build mode"]
    try:
        mode = buildmode.decide_mode(requested, host)
    except BuildError as e:
        assert not found.ok and e.message in found.detail
    else:
        assert found == Check("build mode", True, mode.describe())
