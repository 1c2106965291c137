import pytest

from ocistrap import bootstrap
from ocistrap.bootstrap import BootstrapError, Deb, Plan
from ocistrap.lock import LockedArchive


def deb(name: str, pre: str = "", provides: str = "", auto: bool = False) -> Deb:
    return Deb(name=name, path=f"/cache/{name}", pre_depends=pre, provides=provides, arch="amd64", auto=auto)


def names(batches: list[list[Deb]]) -> list[list[str]]:
    return [[d.name for d in batch] for batch in batches]


def test_batches_without_pre_depends_are_one_dpkg_call() -> None:
    assert names(bootstrap.install_batches([deb("a"), deb("b")], [deb("libc6")])) == [["a", "b"]]


def test_pre_depends_on_a_later_package_waits_for_it() -> None:
    rest = [deb("e2fsprogs", pre="libext2fs2 (>= 1.47), libc6"), deb("libext2fs2", pre="libc6")]
    assert names(bootstrap.install_batches(rest, [deb("libc6")])) == [["libext2fs2"], ["e2fsprogs"]]


def test_pre_depends_through_provides_and_alternatives() -> None:
    rest = [deb("tool", pre="awk | gawk"), deb("mawk", provides="awk")]
    assert names(bootstrap.install_batches(rest, [])) == [["mawk"], ["tool"]]


def test_unsatisfiable_pre_depends_is_an_error_naming_the_packages() -> None:
    with pytest.raises(BootstrapError, match="tool"):
        bootstrap.install_batches([deb("tool", pre="missing")], [deb("libc6")])


def test_extended_states_lists_only_auto_installed_sorted() -> None:
    text = bootstrap.extended_states([deb("zlib", auto=True), deb("apt"), deb("libapt", auto=True)])
    assert text == ("Package: libapt\nArchitecture: amd64\nAuto-Installed: 1\n\n"
                    "Package: zlib\nArchitecture: amd64\nAuto-Installed: 1\n\n")


def test_sources_group_suites_by_mirror() -> None:
    archives = [LockedArchive("http://deb.debian.org/debian", "bookworm"),
                LockedArchive("http://deb.debian.org/debian", "bookworm-updates"),
                LockedArchive("http://deb.debian.org/debian-security", "bookworm-security")]
    text = bootstrap.sources_text(archives, ["main", "contrib"], ["/usr/share/keyrings/k.gpg"])
    stanzas = text.split("\n\n")
    assert stanzas[0] == ("Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n"
                          "Components: main contrib\nSigned-By: /usr/share/keyrings/k.gpg")
    assert "URIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n" in stanzas[1]


def test_plan_crosses_the_namespace_boundary_unchanged() -> None:
    plan = Plan(arch="arm64", essential=[deb("libc6")], rest=[deb("apt", pre="libc6", auto=True)],
                sources="Types: deb\n", staging="/tmp/x/root", tmpfs=True, epoch=1700000000,
                debs_dir="/cache/blobs/sha256", keyrings={"ocistrap-0.gpg": "00ff"})
    assert Plan.loads(plan.dumps()) == plan
