"""ocistrap.inroot and the host-side code that uses it: a package's symlinks never lead out of the tree."""

import os
from pathlib import Path

import pytest

from ocistrap.rootfs import bootplan, innerboot, inroot, slim

BOTH = pytest.mark.parametrize("use_openat2", [
    pytest.param(True, marks=pytest.mark.skipif(not inroot.openat2_works(), reason="no openat2 here")),
    False])


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """The user's files, next to the tree: nothing may change them."""
    home = tmp_path / "home"
    for rel in ("doc/pkg/README", "man/man1/x.1", "lists/secret", "dpkg.log", "policy-rc.d"):
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text("mine\n")
    return home


def _snapshot(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() if p.is_file() else "" for p in sorted(path.rglob("*"))}


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    return root


@BOTH
def test_absolute_and_dotdot_symlinks_resolve_inside_the_root(tmp_path: Path, outside: Path,
                                                              use_openat2: bool) -> None:
    root = _root(tmp_path)
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("in the tree\n")
    (root / "abs").symlink_to(outside)
    (root / "up").symlink_to("../../../..")
    (root / "file").symlink_to("/etc/passwd")
    with inroot.Tree(root, use_openat2=use_openat2) as tree:
        assert tree.read_text("up/etc/passwd") == "in the tree\n"
        assert tree.read_text("file") == "in the tree\n"
        with pytest.raises(FileNotFoundError):
            tree.read_text("abs/dpkg.log")
        tree.write("abs/dpkg.log", b"written\n")
        tree.write("file", b"replaced the link\n")
        tree.mkdir("up/var/lib/apt/lists", 0o700)
    assert (root / str(outside).lstrip("/") / "dpkg.log").read_text() == "written\n"
    assert not (root / "file").is_symlink() and (root / "etc/passwd").read_text() == "in the tree\n"
    assert oct((root / "var/lib/apt/lists").stat().st_mode & 0o777) == "0o700"
    assert (outside / "dpkg.log").read_text() == "mine\n"


@BOTH
def test_a_magic_link_is_not_followed(tmp_path: Path, outside: Path, use_openat2: bool,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root(tmp_path)
    (root / "usr").mkdir()
    (root / "usr/share").symlink_to("/proc/self/cwd")
    monkeypatch.chdir(outside)
    with inroot.Tree(root, use_openat2=use_openat2) as tree:
        with pytest.raises(OSError):
            tree.read_text("usr/share/dpkg.log")
        tree.remove("usr/share")
    assert not (root / "usr/share").exists() and (outside / "dpkg.log").exists()


@BOTH
def test_remove_and_empty_never_follow_a_symlink(tmp_path: Path, outside: Path, use_openat2: bool) -> None:
    root = _root(tmp_path)
    lists = root / "var/lib/apt/lists"
    lists.mkdir(parents=True)
    (lists / "partial").mkdir()
    (lists / "home").symlink_to(outside)
    (lists / "dir").mkdir()
    (lists / "dir/link").symlink_to(outside / "lists")
    (lists / "x_Packages").write_text("index\n")
    before = _snapshot(outside)
    with inroot.Tree(root, use_openat2=use_openat2) as tree:
        tree.empty("var/lib/apt/lists", keep={"partial"})
        tree.unlink("var/lib/apt/lists/nothing")
    assert sorted(os.listdir(lists)) == ["partial"]
    assert _snapshot(outside) == before


@BOTH
def test_emptying_a_directory_that_is_a_symlink_out_empties_the_tree_s_own(tmp_path: Path, outside: Path,
                                                                            use_openat2: bool) -> None:
    root = _root(tmp_path)
    (root / "var/lib/apt").mkdir(parents=True)
    (root / "var/lib/apt/lists").symlink_to(outside / "lists")
    (root / str(outside / "lists").lstrip("/")).mkdir(parents=True)
    (root / str(outside / "lists/Packages").lstrip("/")).write_text("in the tree\n")
    before = _snapshot(outside)
    with inroot.Tree(root, use_openat2=use_openat2) as tree:
        tree.empty("var/lib/apt/lists")
    assert _snapshot(outside) == before
    assert not (root / str(outside / "lists/Packages").lstrip("/")).exists()


@pytest.mark.parametrize("target", ["/proc/self/cwd", "HOME"])
def test_slim_prune_touches_nothing_outside(tmp_path: Path, outside: Path, target: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root(tmp_path)
    (root / "usr").mkdir()
    (root / "usr/share").symlink_to(str(outside) if target == "HOME" else target)
    (root / "usr/lib/x").mkdir(parents=True)
    monkeypatch.chdir(outside)
    before = _snapshot(outside)
    assert slim.prune(root) == 0
    assert _snapshot(outside) == before


def test_slim_prune_does_not_follow_a_planted_link_below_a_top(tmp_path: Path, outside: Path) -> None:
    root = _root(tmp_path)
    (root / "usr/share/doc/pkg").mkdir(parents=True)
    (root / "usr/share/doc/pkg/copyright").write_text("kept\n")
    (root / "usr/share/doc/pkg/changelog").write_text("pruned\n")
    (root / "usr/share/doc/evil").symlink_to(outside / "doc")
    (root / "usr/share/man").symlink_to(outside / "man")
    before = _snapshot(outside)
    assert slim.prune(root) == 1  # the changelog; dpkg keeps the link (copyright may be below it)
    assert _snapshot(outside) == before
    assert (root / "usr/share/doc/pkg/copyright").exists() and (root / "usr/share/doc/evil").is_symlink()
    assert (root / "usr/share/man").is_symlink()


def test_finishing_the_tree_follows_no_package_symlink(tmp_path: Path, outside: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = _root(tmp_path)
    (root / "var/lib/apt").mkdir(parents=True)
    (root / "var/lib/apt/lists").symlink_to(outside / "lists")
    (root / "var/log").symlink_to("/proc/self/cwd")
    (root / "etc/apt").mkdir(parents=True)
    (root / "etc/apt/sources.list.d").symlink_to(outside)
    (root / "etc/machine-id").symlink_to(outside / "dpkg.log")
    monkeypatch.chdir(outside)
    before = _snapshot(outside)
    plan = bootplan.Plan(arch="amd64", essential=[], rest=[], sources="Types: deb\n", staging=str(root),
                          tmpfs=False, epoch=0, debs_dir=str(tmp_path))
    innerboot._finish(root, plan, [])
    assert _snapshot(outside) == before
    assert (root / str(outside).lstrip("/") / "debian.sources").read_text() == "Types: deb\n"


def test_the_policy_rc_d_diversion_writes_only_into_the_tree(tmp_path: Path, outside: Path) -> None:
    root = _root(tmp_path)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/policy-rc.d").symlink_to(outside / "policy-rc.d")
    (root / "sbin").symlink_to(outside)
    before = _snapshot(outside)
    innerboot._divert_daemons(root, move=True)
    assert (root / "usr/sbin/policy-rc.d").read_text() == innerboot.POLICY_RC_D
    innerboot._undivert_daemons(root)
    assert _snapshot(outside) == before
    assert not (root / "usr/sbin/policy-rc.d").exists()


def test_finishing_the_tree_removes_generated_keys_and_says_so(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = _root(tmp_path)
    kept = ("etc/ssh/sshd_config", "etc/ssh/moduli", "etc/ssh/ssh_host_keys_readme", "etc/ssl/certs/ca.pem",
            "etc/ssl/private/mine.key")
    generated = ("etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_rsa_key.pub", "etc/ssh/ssh_host_ed25519_key",
                 "etc/ssh/ssh_host_ed25519_key.pub", "etc/ssh/ssh_host_ecdsa_key", "etc/ssh/ssh_host_ecdsa_key.pub",
                 "etc/ssl/private/ssl-cert-snakeoil.key", "etc/ssl/certs/ssl-cert-snakeoil.pem")
    for rel in (*kept, *generated):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)
    plan = bootplan.Plan(arch="amd64", essential=[], rest=[], sources="Types: deb\n", staging=str(root),
                          tmpfs=False, epoch=0, debs_dir=str(tmp_path))
    innerboot._finish(root, plan, [])
    assert all((root / rel).exists() for rel in kept) and not any((root / rel).exists() for rel in generated)
    said = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in said] == [
        "ocistrap: removed the SSH host keys openssh-server's postinst made",
        "ocistrap: removed the snakeoil key and certificate ssl-cert's postinst made"]
    assert "`make-ssl-cert generate-default-snakeoil` makes a container its own" in said[1]
    innerboot._finish(root, plan, [])
    assert capsys.readouterr().err == ""


def test_identity_notes_say_what_the_scripts_get_instead() -> None:
    assert innerboot.identity_notes("localhost", True) == []
    named, down = innerboot.identity_notes("buildah-1234", False)
    assert named.startswith("maintainer scripts see the host name buildah-1234, not localhost: the kernel refused")
    assert down.startswith("the sandbox's loopback interface is down")
