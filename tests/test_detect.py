"""ocistrap.rootfs.detect and the build mode it leads to: every host case told apart from probe
results alone (root with and without user namespaces, namespaces refused by a seccomp filter,
by a sysctl or a limit, made but without capabilities under AppArmor), as pure functions."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from host_helpers import CONTAINER_CAPS, HOST_MAP, FakeHost

from ocistrap import cli, doctor
from ocistrap.errors import BuildError
from ocistrap.rootfs import buildmode, detect, hostdpkg
from ocistrap.rootfs.detect import UsernsProbe
from ocistrap.rootfs.idmaps import IdMaps, IdRange, writes_own_maps

SECCOMP_REFUSAL = detect.userns_verdict(UsernsProbe("unshare", errno.EPERM, seccomp=True, root=True))
IDENTITY = IdMaps(uid=(IdRange(0, 0, 1), IdRange(1, 1, 65535)), gid=(IdRange(0, 0, 1), IdRange(1, 1, 65535)))
ROOTLESS_PODMAN_MAP = "0 1000 1\n1 100000 65536\n"


def root_host(**kwargs: object) -> FakeHost:
    """Root of a container: Docker's default capabilities, no subordinate ranges (root needs none)."""
    return FakeHost(**{"user": "root", "ids": (0, 0), "caps": CONTAINER_CAPS, "subuid": "", "subgid": "",
                       **kwargs})


# ---- user namespace verdicts ----

def test_a_namespace_that_works_has_no_verdict() -> None:
    assert detect.userns_verdict(UsernsProbe()) is None


@pytest.mark.parametrize("probe, expected", [
    (UsernsProbe("unshare", errno.EPERM, seccomp=True), "a seccomp filter refuses to make user namespaces"),
    (UsernsProbe("unshare", errno.EPERM, sysctls={"kernel.unprivileged_userns_clone": "0"}),
     "sysctl -w kernel.unprivileged_userns_clone=1"),
    (UsernsProbe("unshare", errno.ENOSPC, sysctls={"user.max_user_namespaces": "0"}),
     "user namespaces are disabled (user.max_user_namespaces=0)"),
    (UsernsProbe("unshare", errno.ENOSPC, sysctls={"user.max_user_namespaces": "3"}), "limit of user namespaces"),
    (UsernsProbe("unshare", errno.EINVAL), "the kernel may lack CONFIG_USER_NS"),
    (UsernsProbe("map", errno.EPERM, sysctls={"kernel.apparmor_restrict_unprivileged_userns": "1"}),
     "ocistrap doctor --apparmor-profile FILE"),
    (UsernsProbe("mount", errno.EPERM, sysctls={"kernel.apparmor_restrict_unprivileged_userns": "1"}),
     "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
    (UsernsProbe("mount", errno.EPERM), "a user namespace was made but mounting in it failed"),
    (UsernsProbe("probe", detail="no python"), "the user namespace probe failed: no python"),
])
def test_each_refusal_is_told_apart_with_its_fix(probe: UsernsProbe, expected: str) -> None:
    verdict = detect.userns_verdict(probe)
    assert verdict is not None and expected in verdict and "\n" not in verdict


def test_seccomp_is_named_only_when_a_filter_confines_the_caller() -> None:
    plain = detect.userns_verdict(UsernsProbe("unshare", errno.EPERM))
    assert plain is not None and "a seccomp filter refuses" not in plain


def test_root_is_not_stopped_by_the_unprivileged_switch() -> None:
    probe = UsernsProbe("unshare", errno.EPERM, sysctls={"kernel.unprivileged_userns_clone": "0"}, root=True)
    assert "unprivileged_userns_clone" not in (detect.userns_verdict(probe) or "")


def test_apparmor_names_the_step_that_failed() -> None:
    verdict = detect.created_without_capabilities("map", errno.EPERM,
                                                  {"kernel.apparmor_restrict_unprivileged_userns": "1"})
    assert "writing its id map failed" in verdict and "Ubuntu 23.10" in verdict


def test_the_apparmor_profile_grants_userns_to_the_interpreter() -> None:
    profile = detect.apparmor_profile("/usr/bin/python3.12")
    assert "profile ocistrap /usr/bin/python3.12 flags=(unconfined) {" in profile
    assert "\n  userns,\n" in profile and profile.startswith("# ocistrap") and "abi <abi/4.0>," in profile


# ---- /proc/self facts ----

STATUS = "Name:\tpython3\nSeccomp:\t2\nSeccomp_filters:\t1\nCapEff:\t00000000a80425fb\n"


def test_status_fields() -> None:
    assert detect.seccomp_filtered(STATUS)
    assert not detect.seccomp_filtered(STATUS.replace("Seccomp:\t2", "Seccomp:\t0"))
    assert detect.effective_caps(STATUS) == CONTAINER_CAPS
    assert detect.effective_caps("") == 0


@pytest.mark.parametrize("text, expected", [
    (HOST_MAP, True),
    (ROOTLESS_PODMAN_MAP, True),
    ("0 1000 1\n1 100000 65534\n", False),  # one id short
    ("0 0 1\n", False),
    ("1 100000 65536\n", False),  # no root
    ("0 0 1000\n2000 5000 100000\n", False),  # a hole
    ("", False),
])
def test_all_image_ids_mapped(text: str, expected: bool) -> None:
    assert detect.all_image_ids_mapped(text) is expected


def test_root_maps_its_ids_to_themselves_or_says_what_the_container_lacks() -> None:
    assert detect.root_maps(HOST_MAP, ROOTLESS_PODMAN_MAP) == IDENTITY
    with pytest.raises(BuildError, match=re.escape("gid_map: 0 0 1; 1 5 10")):
        detect.root_maps(HOST_MAP, "0 0 1\n1 5 10\n")


@pytest.mark.parametrize("uid, caps, expected", [
    (0, CONTAINER_CAPS, None),
    (1000, CONTAINER_CAPS, "root mode needs uid 0, not 1000"),
    (0, CONTAINER_CAPS & ~(1 << 27), "CAP_MKNOD"),
    (0, CONTAINER_CAPS & ~(1 << 18) & ~(1 << 0), "--cap-add CHOWN,SYS_CHROOT"),
])
def test_root_problem(uid: int, caps: int, expected: str | None) -> None:
    problem = detect.root_problem(uid, caps, HOST_MAP, HOST_MAP)
    assert problem is None if expected is None else expected in problem


# ---- the mode decided from them ----

def test_root_with_user_namespaces_maps_its_own_ids_in_unshare_mode() -> None:
    mode = buildmode.decide_mode("auto", root_host())
    assert (mode.name, mode.maps) == ("unshare", IDENTITY)
    assert mode.reason == "root maps ids 0-65535 to themselves (its own map, no newuidmap)"
    assert [m.name for m in mode.fallbacks] == ["root", "single-uid"]
    assert writes_own_maps(mode.maps, 0) and not writes_own_maps(mode.maps, 1000)


def test_root_without_user_namespaces_builds_in_root_mode_and_says_why() -> None:
    mode = buildmode.decide_mode("auto", root_host(userns=SECCOMP_REFUSAL))
    assert (mode.name, mode.fell_back_from, mode.records_owners, mode.kind.namespace) == ("root", "unshare", False, False)
    line = mode.describe()
    assert line.startswith("root, because unshare mode cannot build here: a seccomp filter refuses to make user "
                           "namespaces")
    assert line.endswith("; root mode: a plain chroot with device nodes made by mknod, no /proc, /sys or devpts")


PODMAN_CAPS = CONTAINER_CAPS & ~(1 << 27) & ~(1 << 13) & ~(1 << 29)  # podman 4's default: no MKNOD


def test_root_without_its_capabilities_nor_namespaces_cannot_build_and_says_both() -> None:
    with pytest.raises(BuildError, match="lacks the capabilities CAP_MKNOD"):
        buildmode.decide_mode("root", root_host(caps=PODMAN_CAPS))
    with pytest.raises(BuildError) as raised:
        buildmode.decide_mode("auto", root_host(caps=PODMAN_CAPS, userns=SECCOMP_REFUSAL))
    assert raised.value.message.startswith(f"{SECCOMP_REFUSAL}; root mode cannot build either: root lacks the "
                                           "capabilities CAP_MKNOD that root mode needs")
    assert "`--cap-add MKNOD`" in raised.value.message and "\n" not in raised.value.message
    found = _by_name(root_host(caps=PODMAN_CAPS, userns=SECCOMP_REFUSAL))
    assert not found["build mode"].ok and "--cap-add MKNOD" in found["build mode"].detail
    assert found["subuid"].ok and found["newgidmap"].ok
    assert not found["chrootless mode"].ok and found["chrootless mode"].detail == hostdpkg.NOT_AS_ROOT


def test_doctor_tells_root_that_chrootless_mode_is_not_for_it_even_when_another_mode_builds() -> None:
    found = _by_name(root_host(userns=SECCOMP_REFUSAL))
    assert found["build mode"].detail.startswith("root, because")
    assert found["chrootless mode"].detail == f"not needed in root mode: {hostdpkg.NOT_AS_ROOT}"


def test_root_in_a_container_that_maps_too_few_ids_is_refused_both_ways() -> None:
    host = root_host(maps={"uid": "0 1000 1\n", "gid": "0 1000 1\n"})
    mode = buildmode.decide_mode("auto", host)
    assert mode.name == "single-uid" and "does not have all of the uids 0-65535" in mode.reason


def test_an_unprivileged_account_is_never_offered_root_mode() -> None:
    mode = buildmode.decide_mode("auto", FakeHost(caps=CONTAINER_CAPS))
    assert [m.name for m in mode.fallbacks] == ["single-uid"]
    with pytest.raises(BuildError, match="root mode needs uid 0, not 1000"):
        buildmode.decide_mode("root", FakeHost())


def test_requested_root_mode() -> None:
    mode = buildmode.decide_mode("root", root_host())
    assert (mode.name, mode.reason, mode.fallbacks) == ("root", "requested with --mode root", ())


MASKED_PROC = detect.own_proc_verdict(UsernsProbe(proc_errno=errno.EPERM))


def test_a_masked_proc_is_named_with_its_fix_only_where_namespaces_work() -> None:
    assert MASKED_PROC.startswith("parts of this container's /proc are masked")
    assert "--security-opt unmask=ALL (podman)" in MASKED_PROC and "systempaths=unconfined" in MASKED_PROC
    assert detect.own_proc_verdict(UsernsProbe()) is None
    assert detect.own_proc_verdict(UsernsProbe("unshare", errno.EPERM, proc_errno=errno.EPERM)) is None
    assert detect.own_proc_verdict(UsernsProbe(proc_errno=errno.ENOENT)).endswith("No such file or directory")


def test_an_account_in_a_podman_container_without_ranges_builds_chrootless() -> None:
    """Namespaces can be made, but single-uid mode's recorder needs a proc of its own, which podman's
    masks forbid: auto passes it over for chrootless mode and says why."""
    mode = buildmode.decide_mode("auto", FakeHost(subuid="", subgid="", own_proc=MASKED_PROC))
    assert mode.name == "chrootless"
    assert f"single-uid mode cannot build here either: {MASKED_PROC}" in mode.reason
    with_ranges = buildmode.decide_mode("auto", FakeHost(own_proc=MASKED_PROC))
    assert (with_ranges.name, with_ranges.fallbacks) == ("unshare", ())


# ---- doctor for root ----

def _by_name(host: FakeHost, mode: str = "auto") -> dict[str, doctor.Check]:
    return {c.name: c for c in doctor.checks([], mode=mode, host=host)}


def test_doctor_asks_root_for_no_subordinate_ranges() -> None:
    found = _by_name(root_host(mappers={"newuidmap": (None, "no"), "newgidmap": (None, "no")}))
    assert all(c.ok for c in found.values()), found
    assert found["subuid"].detail == found["newuidmap"].detail == "not needed: root writes its own id maps"
    assert found["build mode"].detail.startswith("unshare: root maps ids 0-65535 to themselves")


def test_doctor_in_a_container_says_root_mode_and_why_in_one_line() -> None:
    found = _by_name(root_host(userns=SECCOMP_REFUSAL))
    assert all(c.ok for c in found.values()), found
    assert found["user namespaces"].detail.startswith("not needed in root mode: a seccomp filter")
    assert found["build mode"].detail.startswith("root, because unshare mode cannot build here: a seccomp filter")
    assert "\n" not in found["build mode"].detail


# ---- the probe, for real ----

@pytest.mark.userns
def test_the_probe_names_a_seccomp_filter_that_refuses_namespaces() -> None:
    """Under the filter Docker's default profile applies (tests/docker_seccomp.py), as this account."""
    helper = Path(__file__).resolve().parent / "docker_seccomp.py"
    script = "from ocistrap.rootfs import buildmode; print(buildmode.SystemProbe().userns_problem())"
    result = subprocess.run([sys.executable, str(helper), sys.executable, "-c", script], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("a seccomp filter refuses to make user namespaces"), result.stdout
    assert buildmode.SystemProbe().userns_problem() is None


@pytest.mark.userns
def test_the_probe_mounts_a_proc_of_its_own_where_nothing_is_masked() -> None:
    probe = buildmode.userns_probe()
    assert (probe.step, probe.proc_errno) == (None, 0)
    assert detect.own_proc_verdict(probe) is None


def test_doctor_writes_the_apparmor_profile_and_says_how_to_load_it(tmp_path: Path, capsys) -> None:
    target = tmp_path / "ocistrap.profile"
    assert cli.main(["doctor", "--apparmor-profile", str(target)]) == 0
    assert f" {os.path.realpath(sys.executable)} flags=(unconfined)" in target.read_text()
    out = capsys.readouterr().out
    assert out.startswith(f"wrote {target}: ") and "sudo apparmor_parser -r /etc/apparmor.d/ocistrap" in out
