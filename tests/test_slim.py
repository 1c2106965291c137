import shutil
import subprocess
from pathlib import Path

import pytest

from ocistrap.rootfs import slim
from ocistrap.rootfs.slim import Rule


@pytest.mark.parametrize("path,directory,skipped", [
    ("/usr/share/doc/bash/changelog.Debian.gz", False, True),
    ("/usr/share/doc/bash/copyright", False, False),
    ("/usr/share/doc/bash", True, False),               # may hold a copyright file
    ("/usr/share/doc/bash/examples/x", False, True),
    ("/usr/share/doc/bash/link", True, False),          # symlinks follow the directory rule
    ("/usr/share/man/man1/bash.1.gz", False, True),
    ("/usr/share/man/man1", True, True),
    ("/usr/share/man", True, False),                    # the pattern needs something below it
    ("/usr/share/locale/de/LC_MESSAGES/bash.mo", False, True),
    ("/usr/share/locale/de", True, True),
    ("/usr/share/locale/locale.alias", False, False),
    ("/usr/share/info/dir", False, True),
    ("/usr/share/lintian/overrides/bash", False, True),
    ("/usr/bin/bash", False, False),
    ("/usr/share/zoneinfo/UTC", False, False),
])
def test_slim_rules_decide_like_dpkg(path: str, directory: bool, skipped: bool) -> None:
    assert slim.skips(path, directory=directory) is skipped


def test_the_last_matching_rule_wins() -> None:
    rules = [Rule(False, "/a/*"), Rule(True, "/a/b*"), Rule(False, "/a/bad")]
    assert [slim.skips(p, directory=False, rules=rules) for p in ("/a/x", "/a/bee", "/a/bad")] == [True, False, True]


def test_config_file_lists_every_rule_in_order() -> None:
    lines = [line for line in slim.config_text().splitlines() if not line.startswith("#")]
    assert lines == [rule.line() for rule in slim.RULES]
    assert lines[:2] == ["path-exclude /usr/share/doc/*", "path-include /usr/share/doc/*/copyright"]


def _tree(root: Path) -> list[str]:
    return sorted("/" + p.relative_to(root).as_posix() + ("/" if p.is_dir() and not p.is_symlink() else "")
                  for p in root.rglob("*"))


def _make_deb(tmp: Path) -> Path:
    pkg = tmp / "pkg"
    files = {"usr/bin/foo": "b", "usr/share/doc/foo/copyright": "c", "usr/share/doc/foo/changelog.gz": "c",
             "usr/share/doc/foo/examples/ex": "e", "usr/share/man/man1/foo.1.gz": "m",
             "usr/share/man/de/man1/foo.1.gz": "m", "usr/share/info/foo.info.gz": "i",
             "usr/share/locale/de/LC_MESSAGES/foo.mo": "l", "usr/share/locale/locale.alias": "a",
             "usr/share/lintian/overrides/foo": "o", "usr/share/foo/data": "d",
             "DEBIAN/control": "Package: foo\nVersion: 1\nArchitecture: all\nMaintainer: x <x@example.org>\n"
                               "Description: test\n"}
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    (pkg / "usr/share/doc/foo/link").symlink_to("../../../bin/foo")
    (pkg / "usr/share/doc/bar").symlink_to("foo")
    deb = tmp / "foo.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
def test_prune_leaves_exactly_what_dpkg_installs_with_the_rules(tmp_path: Path) -> None:
    deb = _make_deb(tmp_path)
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-C", str(unpacked), "-x"], input=data, check=True)
    removed = slim.prune(unpacked)

    installed = tmp_path / "installed"
    for d in ("var/lib/dpkg/updates", "var/lib/dpkg/info"):
        (installed / d).mkdir(parents=True)
    (installed / "var/lib/dpkg/status").touch()
    options = ["--" + rule.line().replace(" ", "=", 1) for rule in slim.RULES]
    subprocess.run(["dpkg", "--force-not-root", "--force-script-chrootless", f"--root={installed}",
                    "--log=/dev/null", *options, "--install", str(deb)], check=True, capture_output=True)
    shutil.rmtree(installed / "var")

    assert _tree(unpacked) == _tree(installed)
    assert "/usr/share/doc/foo/copyright" in _tree(unpacked) and removed >= 8


def test_prune_of_a_tree_without_excluded_directories_removes_nothing(tmp_path: Path) -> None:
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/x").write_text("x")
    assert slim.prune(tmp_path) == 0
    assert _tree(tmp_path) == ["/usr/", "/usr/bin/", "/usr/bin/x"]
