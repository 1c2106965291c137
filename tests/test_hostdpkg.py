"""When the host's dpkg may unpack a foreign architecture's packages (ocistrap.hostdpkg)."""

import subprocess
from pathlib import Path

import pytest

from ocistrap.rootfs import hostdpkg

BOOKWORM_HOST = ("1.21.23", "amd64")


def test_version_output_gives_version_and_architecture() -> None:
    text = ("Debian 'dpkg' package management program version 1.21.23 (amd64).\n"
            "This is free software; see the GNU General Public License version 2 or\n")
    assert hostdpkg.parse_version_output(text) == ("1.21.23", "amd64")


@pytest.mark.parametrize("text", ["", "dpkg: command not found\n", "version\n"])
def test_unexpected_version_output_is_no_dpkg(text: str) -> None:
    assert hostdpkg.parse_version_output(text) is None


@pytest.mark.parametrize("version, expected", [
    ("1.21.22", (1, 21)), ("1.22.11", (1, 22)), ("1:1.21.22+b1", (1, 21)), ("1.21.1-2~bpo11+1", (1, 21)),
    ("1.21", (1, 21)), ("snapshot", None), ("1", None)])
def test_series_is_major_and_minor_of_the_upstream_version(version: str, expected: tuple[int, int] | None) -> None:
    assert hostdpkg.series(version) == expected


def test_same_series_foreign_target_is_accepted() -> None:
    assert hostdpkg.refusal(BOOKWORM_HOST, "arm64", "1.21.22") is None


@pytest.mark.parametrize("host, arch, target, reason", [
    (None, "arm64", "1.21.22", "dpkg is missing or does not run with the target's /etc"),
    (BOOKWORM_HOST, "amd64", "1.21.22", "amd64 is the host's own architecture"),
    (BOOKWORM_HOST, "arm64", None, "version is unknown"),
    (BOOKWORM_HOST, "arm64", "1.22.11", "dpkg 1.21.23 is not of the target's release series (dpkg 1.22.11)"),
    (("1.22.11", "amd64"), "arm64", "1.21.22", "dpkg 1.22.11 is not of the target's release series"),
    (("git", "amd64"), "arm64", "1.21.22", "not of the target's release series"),
])
def test_refusals_name_the_reason(host: tuple[str, str] | None, arch: str, target: str | None, reason: str) -> None:
    assert reason in (hostdpkg.refusal(host, arch, target) or "")


STATUS = """Package: dpkg-dev
Status: install ok installed
Version: 1.21.22

Package: dpkg
Status: install ok installed
Priority: required
Description: Debian package management system
 Version: 9.9 (a continuation line, not a field)
Version: 1.21.22

"""


def test_installed_version_reads_the_named_stanza_only() -> None:
    assert hostdpkg.installed_version(STATUS, "dpkg") == "1.21.22"
    assert hostdpkg.installed_version(STATUS.replace("Version: 1.21.22\n\n", "\n", 1), "dpkg-dev") is None
    assert hostdpkg.installed_version(STATUS, "apt") is None
    assert hostdpkg.installed_version("", "dpkg") is None


def test_target_version_without_its_deb_comes_from_the_database(tmp_path: Path) -> None:
    assert hostdpkg.target_version(tmp_path, None) is None
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / hostdpkg.STATUS).write_text(STATUS)
    assert hostdpkg.target_version(tmp_path, None) == "1.21.22"


def test_target_version_of_an_unreadable_deb_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "dpkg.deb").write_bytes(b"not an ar archive")
    assert hostdpkg.target_version(tmp_path, str(tmp_path / "dpkg.deb")) is None


def test_target_version_of_the_deb_being_installed(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN/control").write_text("Package: dpkg\nVersion: 1.21.22\nArchitecture: arm64\n"
                                            "Maintainer: Test <test@example.org>\nDescription: test\n")
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(package), str(tmp_path / "dpkg.deb")],
                   check=True, capture_output=True)
    assert hostdpkg.target_version(tmp_path, str(tmp_path / "dpkg.deb")) == "1.21.22"


def _host(tmp_path: Path, links: dict[str, str], dirs: tuple[str, ...] = ()) -> Path:
    for name in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", *dirs):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
    return tmp_path


MERGED_HOST = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}


def test_a_merged_host_without_biarch_directories_is_safe_for_usrmerges_postinst(tmp_path: Path) -> None:
    assert hostdpkg.host_layout_problem(_host(tmp_path, MERGED_HOST), uid=1000) is None


def test_root_is_refused_whatever_the_host(tmp_path: Path) -> None:
    assert "does not run as root" in (hostdpkg.host_layout_problem(_host(tmp_path, MERGED_HOST), uid=0) or "")


def test_an_unmerged_host_is_refused(tmp_path: Path) -> None:
    problem = hostdpkg.host_layout_problem(_host(tmp_path, {"lib": "usr/lib"}, dirs=("bin", "sbin")), uid=1000)
    assert problem is not None and "/bin, /sbin are not merged" in problem


def test_a_host_with_lib32_is_refused(tmp_path: Path) -> None:
    problem = hostdpkg.host_layout_problem(_host(tmp_path, {**MERGED_HOST, "lib32": "usr/lib32"}), uid=1000)
    assert problem is not None and "/lib32" in problem


def test_path_filters_in_the_hosts_dpkg_configuration_are_found() -> None:
    texts = {"/etc/dpkg/dpkg.cfg": "# comment\nlog /var/log/dpkg.log\n",
             "/etc/dpkg/dpkg.cfg.d/docker": "path-exclude /usr/share/doc/*\n",
             "/etc/dpkg/dpkg.cfg.d/speed": "force-unsafe-io\n"}
    assert hostdpkg.config_filters(texts) == ["/etc/dpkg/dpkg.cfg.d/docker"]


BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n' \
           'VERSION_CODENAME=bookworm\nID=debian\n'
TESTING = 'PRETTY_NAME="Debian GNU/Linux forky/sid"\nNAME="Debian GNU/Linux"\nVERSION_CODENAME=forky\nID=debian\n'
NOBLE = 'PRETTY_NAME="Ubuntu 24.04.1 LTS"\nVERSION_CODENAME=noble\nID=ubuntu\nUBUNTU_CODENAME=noble\n'


def test_host_release_names() -> None:
    assert hostdpkg.host_release_names(BOOKWORM) == {"bookworm"}
    assert hostdpkg.host_release_names(TESTING) == {"forky", "sid"}
    assert hostdpkg.host_release_names(NOBLE) == {"noble"}
    assert hostdpkg.host_release_names("") == set()
    assert hostdpkg.host_release_names("VERSION_CODENAME=''\n# a comment\n") == set()


def test_chrootless_builds_only_the_host_s_own_release() -> None:
    assert hostdpkg.release_problem(BOOKWORM, ("bookworm", "oldstable", "bookworm"), "bookworm") is None
    assert hostdpkg.release_problem(BOOKWORM, ("oldstable", "oldstable", "bookworm"), "bookworm") is None
    assert hostdpkg.release_problem(TESTING, ("sid", "unstable", "sid"), "sid") is None
    assert hostdpkg.release_problem(TESTING, ("testing", "testing", "forky"), "forky") is None
    trixie = hostdpkg.release_problem(BOOKWORM, ("trixie", "stable", "trixie"), "trixie")
    assert trixie is not None and "bookworm's" in trixie and "a trixie tree" in trixie
    assert "bookworm" in (hostdpkg.release_problem(NOBLE, ("bookworm",), "bookworm") or "")
    assert "noble's" in (hostdpkg.release_problem(NOBLE, ("bookworm",), "bookworm") or "")
    unknown = hostdpkg.release_problem(None, ("bookworm",), "bookworm")
    assert unknown is not None and "unknown" in unknown
