"""Resolution on synthetic universes.

Where a test pins a choice that depends on apt's order (which or-group
alternative, which provider), the expected set was confirmed by running
``apt-get -s install '?essential'`` (apt 2.6.1, ``pkgCacheGen::ForceEssential ","``,
empty dpkg status) on the same stanzas written as a Packages file.
"""

import re
import shutil
import subprocess

import pytest
from debian.deb822 import PkgRelation
from debian.debian_support import version_compare
from hypothesis import given, settings
from hypothesis import strategies as st

from ocistrap.debian.archive import Package
from ocistrap.debian.resolve import VARIANTS, Alternative, ArchiveError, Universe, parse_relations, resolve
from ocistrap.debian.versions import _version_compare, version_satisfies


def pkg(name: str, version: str = "1", **fields: object) -> Package:
    fields.setdefault("architecture", "amd64")
    return Package(name=name, version=version, **fields)  # type: ignore[arg-type]


def ess(name: str, version: str = "1", **fields: object) -> Package:
    return pkg(name, version, essential=True, priority="required", **fields)


def names(packages: list[Package]) -> list[str]:
    return [p.name for p in packages]


def essential_set(*packages: Package, include: tuple[str, ...] = ()) -> list[str]:
    return names(resolve(Universe(packages, "amd64"), variant="essential", include=include).all)


# --- relationship parsing -------------------------------------------------

RELATION_SAMPLES = [
    "libc6 (>= 2.34), libgcc-s1",
    "debconf (>= 0.5) | debconf-2.0",
    "perl:any, python3:any (>= 3.11~), foo:native",
    "a (<< 1:2.0~rc1-3), b (>> 0), c (= 1.0+dfsg-1~bpo12+1), d (<= 2)",
    "old (< 1), older (> 2)",
    "libfoo-dev <!nocheck> | libbar-dev <stage1 cross>",
    "  spaced   (  >=  1.0 ) ,tight(>=2)|other  ",
]


@pytest.mark.parametrize("text", RELATION_SAMPLES)
def test_parse_relations_agrees_with_python_debian(text: str) -> None:
    obsolete = {"<": "<=", ">": ">="}
    expected = []
    for group in PkgRelation.parse_relations(text):
        alts = []
        for alt in group:
            version = alt["version"]
            op, ver = (obsolete.get(version[0], version[0]), version[1]) if version else (None, None)
            alts.append(Alternative(alt["name"], alt["archqual"], op, ver))
        if alts:
            expected.append(tuple(alts))
    assert list(parse_relations(text, arch="amd64")) == expected


def test_parse_relations_drops_other_architectures() -> None:
    groups = parse_relations("x [amd64] | y [!amd64], z [i386 arm64], w", arch="amd64")
    assert groups == ((Alternative("x"),), (Alternative("w"),))


def test_parse_relations_rejects_garbage() -> None:
    with pytest.raises(ArchiveError, match="Depends of p 1"):
        resolve(Universe([ess("p", depends="ok, (>= 1)")], "amd64"), variant="essential")


@pytest.mark.parametrize(
    ("version", "op", "wanted", "result"),
    [
        ("1:1.0", ">>", "9.9", True),
        ("1.0~rc1", "<<", "1.0", True),
        ("1.0~~", "<<", "1.0~", True),
        ("1.0", ">=", "1.0-0", True),
        ("2.36-9+deb12u4", ">=", "2.36-9+deb12u10", False),
        ("1.0", "=", "1.0", True),
        ("1.0", "<=", "0:1.0", True),
        (None, ">=", "1", False),
        (None, None, None, True),
    ],
)
def test_version_satisfies(version: str | None, op: str | None, wanted: str | None, result: bool) -> None:
    assert version_satisfies(version, op, wanted) is result


# --- variants and stages --------------------------------------------------


def small_archive() -> list[Package]:
    return [
        ess("base", depends="libc"),
        pkg("libc", priority="optional"),
        pkg("apt", priority="required", depends="libapt, libc"),
        pkg("libapt", priority="important"),
        pkg("tool", priority="important", depends="libc"),
        pkg("extra", priority="standard"),
        pkg("build-essential", priority="optional", depends="make"),
        pkg("make", priority="optional"),
        pkg("i386-only", architecture="i386", essential=True),
        pkg("hello", architecture="all"),
    ]


def test_essential_stage_and_rest_follow_mmdebstrap() -> None:
    universe = Universe(small_archive(), "amd64")
    minbase = resolve(universe, variant="minbase")
    assert names(minbase.essential) == ["base", "libc"]
    assert names(minbase.rest) == ["apt", "libapt"]
    assert names(minbase.all) == ["apt", "base", "libapt", "libc"]
    assert resolve(universe, variant="required") == minbase


@pytest.mark.parametrize(
    ("variant", "rest"),
    [
        ("essential", []),
        ("buildd", ["apt", "build-essential", "libapt", "make"]),
        ("important", ["apt", "libapt", "tool"]),
        ("standard", ["apt", "extra", "libapt", "tool"]),
    ],
)
def test_variants(variant: str, rest: list[str]) -> None:
    resolution = resolve(Universe(small_archive(), "amd64"), variant=variant)
    assert names(resolution.essential) == ["base", "libc"]
    assert names(resolution.rest) == rest


def test_custom_installs_only_the_includes_in_one_stage() -> None:
    resolution = resolve(Universe(small_archive(), "amd64"), variant="custom", include=["apt"])
    assert names(resolution.essential) == ["apt", "libapt", "libc"]
    assert resolution.rest == []


def test_includes_go_to_the_second_stage() -> None:
    resolution = resolve(Universe(small_archive(), "amd64"), variant="essential", include=["hello", "base"])
    assert names(resolution.rest) == ["hello"]


def test_unknown_variant() -> None:
    with pytest.raises(ArchiveError, match="unknown variant 'apt'"):
        resolve(Universe([], "amd64"), variant="apt")
    assert "minbase" in VARIANTS


def test_candidate_is_the_highest_version() -> None:
    universe = Universe([ess("a", "1.0"), ess("a", "1:0.1"), ess("a", "2.0~rc1")], "amd64")
    assert [(p.name, p.version) for p in resolve(universe, variant="essential").all] == [("a", "1:0.1")]


def test_include_with_version_pins_it() -> None:
    universe = Universe([ess("base"), pkg("hello", "2"), pkg("hello", "1")], "amd64")
    rest = resolve(universe, variant="essential", include=["hello=1"]).rest
    assert [(p.name, p.version) for p in rest] == [("hello", "1")]
    with pytest.raises(ArchiveError, match=r"version 3 of hello is not available \(only 2, 1\)"):
        resolve(universe, variant="essential", include=["hello=3"])


# --- apt's choices ----------------------------------------------------------


def test_first_satisfiable_alternative_wins() -> None:
    assert essential_set(ess("a", depends="missing | b (>= 2) | c | d"), pkg("b"), pkg("c"), pkg("d")) == ["a", "c"]


def test_satisfied_or_group_is_left_alone_in_apt_order() -> None:
    """apt marks requested packages in the order it first met their names."""
    y_first = [ess("b", depends="y"), ess("a", depends="x | y"), pkg("x"), pkg("y")]
    assert essential_set(*y_first) == ["a", "b", "y"]
    x_first = [ess("a", depends="x | y"), ess("b", depends="y"), pkg("x"), pkg("y")]
    assert essential_set(*x_first) == ["a", "b", "x", "y"]


def test_order_is_by_first_mention_not_by_name() -> None:
    """``mawk`` is mentioned first (confirmed against apt), though ``dash`` sorts first."""
    universe = [ess("mawk", depends="x | y"), ess("dash", depends="y"), pkg("x"), pkg("y")]
    assert essential_set(*universe) == ["dash", "mawk", "x", "y"]


def test_virtual_package_with_one_provider() -> None:
    assert essential_set(ess("a", depends="awk"), pkg("mawk", provides="awk"), pkg("other")) == ["a", "mawk"]


def test_several_providers_prefer_priority_then_the_later_package() -> None:
    providers = [pkg("p1", provides="v"), pkg("p2", provides="v"), pkg("p3", provides="v", priority="extra")]
    assert essential_set(ess("a", depends="v"), *providers) == ["a", "p2"]
    important = [pkg("p1", provides="v"), pkg("p2", provides="v"), pkg("p3", provides="v", priority="important")]
    assert essential_set(ess("a", depends="v"), *important) == ["a", "p3"]


def test_real_package_beats_providers() -> None:
    universe = [ess("a", depends="u"), pkg("u", architecture="all"), pkg("e", priority="required", provides="u")]
    assert essential_set(*universe) == ["a", "u"]


def test_versioned_provides() -> None:
    universe = [
        ess("a", depends="v (>= 2)"),
        pkg("plain", provides="v"),
        pkg("old", provides="v (= 1)"),
        pkg("new", provides="v (= 2.0~beta), w"),
        pkg("newest", provides="v (=3)"),
    ]
    assert essential_set(*universe) == ["a", "newest"]
    assert essential_set(ess("a", depends="v (<< 2)"), *universe[1:]) == ["a", "old"]


def test_versioned_constraints_with_epochs_and_tildes() -> None:
    assert essential_set(ess("a", depends="b (>= 2)"), pkg("b", "1:1")) == ["a", "b"]
    assert essential_set(ess("a", depends="b (<< 2) | c"), pkg("b", "2~rc1"), pkg("c")) == ["a", "b"]
    with pytest.raises(ArchiveError, match=r"a 1 depends on b \(>= 2\) but only 2~rc1 of b is available"):
        essential_set(ess("a", depends="b (>= 2)"), pkg("b", "2~rc1"))


def test_pre_depends_are_installed() -> None:
    universe = [ess("a", pre_depends="b"), pkg("b", depends="c"), pkg("c")]
    assert essential_set(*universe) == ["a", "b", "c"]


def test_any_qualifier_needs_multi_arch_allowed() -> None:
    universe = [
        ess("a", depends="w:any | z, t:any, q:any | r"),
        pkg("w", multi_arch="foreign"),
        pkg("z"),
        pkg("t", multi_arch="allowed"),
        pkg("s", multi_arch="allowed", provides="q"),
        pkg("r"),
    ]
    assert essential_set(*universe) == ["a", "s", "t", "z"]


def test_native_qualifier_and_foreign_architectures() -> None:
    universe = [ess("a", depends="b:native, c:i386 | d"), pkg("b", multi_arch="same"), pkg("c"), pkg("d")]
    assert essential_set(*universe) == ["a", "b", "d"]


def test_recommends_only_when_asked() -> None:
    universe = Universe([ess("a", recommends="r | s, missing"), pkg("r", depends="d"), pkg("d"), pkg("s")], "amd64")
    assert names(resolve(universe, variant="essential").all) == ["a"]
    with_recommends = resolve(universe, variant="essential", install_recommends=True)
    assert names(with_recommends.all) == ["a", "d", "r"]


def test_dependency_cycles_terminate() -> None:
    universe = [ess("a", depends="b"), pkg("b", pre_depends="c"), pkg("c", depends="a, b")]
    assert essential_set(*universe) == ["a", "b", "c"]


def test_a_failing_alternative_falls_through_to_the_next() -> None:
    universe = [ess("a", depends="b | c"), pkg("b", depends="gone"), pkg("c")]
    assert essential_set(*universe) == ["a", "c"]


def test_stage_two_reuses_what_the_essential_stage_installed() -> None:
    universe = Universe(
        [ess("base", depends="x | y"), pkg("tool", priority="required", depends="y | x"), pkg("x"), pkg("y")],
        "amd64",
    )
    resolution = resolve(universe, variant="minbase")
    assert names(resolution.essential) == ["base", "x"]
    assert names(resolution.rest) == ["tool"]


# --- errors -----------------------------------------------------------------


def test_unknown_include_suggests_near_names() -> None:
    universe = Universe([ess("base"), pkg("hello"), pkg("help")], "amd64")
    with pytest.raises(ArchiveError, match="unknown package 'helo'") as caught:
        resolve(universe, variant="minbase", include=["helo"])
    assert "hello" in str(caught.value)


def test_virtual_include() -> None:
    universe = Universe([ess("base"), pkg("mawk", provides="awk"), pkg("gawk", provides="awk, x")], "amd64")
    assert names(resolve(universe, variant="essential", include=["x"]).rest) == ["gawk"]
    with pytest.raises(ArchiveError, match="awk is a virtual package provided by gawk, mawk"):
        resolve(universe, variant="essential", include=["awk"])


def test_patterns_are_not_includes() -> None:
    with pytest.raises(ArchiveError, match="cannot include"):
        resolve(Universe([ess("base")], "amd64"), variant="essential", include=["?priority(important)"])


def test_unsatisfiable_dependency_names_the_chain() -> None:
    universe = [ess("a", depends="b"), pkg("b", depends="c (>= 2)"), pkg("c", "1")]
    with pytest.raises(ArchiveError) as caught:
        essential_set(*universe)
    assert str(caught.value) == "b 1 depends on c (>= 2) but only 1 of c is available (needed by a)"


def test_failure_below_a_choice_is_explained() -> None:
    universe = [ess("a", depends="b | c"), pkg("b", depends="nothere"), pkg("c", depends="old (>= 2)"), pkg("old")]
    with pytest.raises(ArchiveError) as caught:
        essential_set(*universe)
    assert str(caught.value) == (
        "a 1 depends on b | c but b cannot be installed (b 1 depends on nothere but nothere is not available); "
        "c cannot be installed (c 1 depends on old (>= 2) but only 1 of old is available)"
    )


def test_missing_dependency() -> None:
    with pytest.raises(ArchiveError, match="a 1 pre-depends on nothere but nothere is not available"):
        essential_set(ess("a", pre_depends="nothere"))


def test_conflicting_includes() -> None:
    universe = Universe([ess("base"), pkg("a", conflicts="b"), pkg("b")], "amd64")
    with pytest.raises(ArchiveError, match="a 1 conflicts with b, but b 1 is selected too"):
        resolve(universe, variant="essential", include=["a", "b"])


def test_breaks_through_a_virtual_package() -> None:
    universe = Universe([ess("base", breaks="v (<< 2)"), pkg("p", provides="v (= 1)")], "amd64")
    with pytest.raises(ArchiveError, match="base 1 breaks v \\(<< 2\\), but p 1 is selected too"):
        resolve(universe, variant="essential", include=["p"])


def test_a_conflicting_alternative_is_skipped() -> None:
    universe = [ess("a", depends="b | c"), ess("z"), pkg("b", conflicts="z"), pkg("c")]
    assert essential_set(*universe) == ["a", "c", "z"]


def test_self_conflicts_through_provides_are_allowed() -> None:
    assert essential_set(ess("mawk", provides="awk", conflicts="awk")) == ["mawk"]


# --- properties -------------------------------------------------------------

NAMES = [f"p{i}" for i in range(6)]
VERSIONS = ["1", "2", "1:0.5", "2~rc1"]


@st.composite
def alternatives(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(NAMES + ["v1", "v2"]))
    if draw(st.booleans()):
        return name
    return f"{name} ({draw(st.sampled_from(['<<', '<=', '=', '>=', '>>']))} {draw(st.sampled_from(VERSIONS))})"


def relation_field() -> st.SearchStrategy[str]:
    groups = st.lists(st.lists(alternatives(), min_size=1, max_size=3).map(" | ".join), max_size=3)
    return groups.map(", ".join)


@st.composite
def universes(draw: st.DrawFn) -> list[Package]:
    packages = []
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True)):
        provides = draw(st.sampled_from(["", "v1", "v2 (= 1)", "v1 (= 2), v2"]))
        packages.append(
            Package(
                name=name,
                version=draw(st.sampled_from(VERSIONS)),
                architecture=draw(st.sampled_from(["amd64", "all", "i386"])),
                essential=draw(st.booleans()),
                priority=draw(st.sampled_from(["required", "important", "optional"])),
                depends=draw(relation_field()),
                pre_depends=draw(st.sampled_from(["", "p0", "v1 (>= 2)"])),
                provides=provides,
                breaks=draw(st.sampled_from(["", "", "p1", "v2"])),
            )
        )
    return packages


@settings(max_examples=300, deadline=None)
@given(universes(), st.sampled_from(VARIANTS), st.lists(st.sampled_from(NAMES), max_size=2))
def test_resolution_is_closed_or_an_error(packages: list[Package], variant: str, include: list[str]) -> None:
    universe = Universe(packages, "amd64")
    try:
        resolution = resolve(universe, variant=variant, include=include)
    except ArchiveError:
        return
    selected = {p.name: p for p in resolution.all}
    assert len(selected) == len(resolution.essential) + len(resolution.rest)
    for package in selected.values():
        assert package.architecture in ("amd64", "all")
        for kind in ("pre_depends", "depends"):
            for group in universe.relations(package, kind):
                assert any(selected.get(s.name) is s for alt in group for s in universe.solutions(alt)), (
                    package,
                    group,
                )


# --- fast paths against the plain algorithms ---------------------------------
# Names that are prefixes and suffixes of each other, odd spacing, qualifiers,
# parenthesised words and empty items: where a text search could go wrong.

MENTIONED = ["a", "ab", "ba", "a-b", "b", "a+", "a.b"]


@st.composite
def mention_item(draw: st.DrawFn) -> str:
    return "".join((
        draw(st.sampled_from(["", " ", "  ", "\t"])),
        draw(st.sampled_from([*MENTIONED, "(a)", ""])),
        draw(st.sampled_from(["", "", ":any", ":amd64", ":i386"])),
        draw(st.sampled_from(["", " (>= 1)", "(<< a)", " (= ab)"])),
        draw(st.sampled_from(["", " [amd64]", " [!a b]"])),
        draw(st.sampled_from(["", " "])),
    ))


@st.composite
def mention_field(draw: st.DrawFn) -> str:
    items = draw(st.lists(mention_item(), max_size=4))
    return "".join(item + draw(st.sampled_from([",", ", ", "|", " | "])) for item in items).rstrip(",| ")


@st.composite
def mention_stanza(draw: st.DrawFn) -> Package:
    kinds = ("pre_depends", "depends", "conflicts", "breaks", "recommends", "provides")
    name = draw(st.sampled_from([*MENTIONED, "c"] if draw(st.integers(0, 20)) else ["odd name", "x:y"]))
    return pkg(name, **{kind: draw(mention_field()) for kind in kinds})


@settings(max_examples=300, deadline=None)
@given(st.lists(mention_stanza(), min_size=1, max_size=8))
def test_creation_ranks_follow_the_counted_order(packages: list[Package]) -> None:
    universe = Universe(packages, "amd64")
    counted = [name for name in universe._creation_order if name]
    ranks = [universe.creation_rank(name) for name in counted]
    assert ranks == sorted(set(ranks))
    with pytest.raises(KeyError):
        universe.creation_rank("never-mentioned")


@st.composite
def provides_field(draw: st.DrawFn) -> str:
    items = draw(st.lists(st.tuples(
        st.sampled_from(["a", "a-b", "x+1"]),
        st.sampled_from(["", "", ":any", ":amd64", ":i386"]),
        st.sampled_from(["", " (= 1)", " (= 1)", " (= 1:2~a)", "(=2)", " (= 2)"]),
    ), min_size=1, max_size=4))
    separators = st.sampled_from([", ", ", ", ",", " ,  "])
    return "".join(f"{n}{q}{v}{draw(separators) if i < len(items) - 1 else ''}" for i, (n, q, v) in enumerate(items))


@settings(max_examples=300, deadline=None)
@given(provides_field())
def test_provides_fast_path_agrees_with_the_general_parser(text: str) -> None:
    package = pkg("p", provides=text)
    universe = Universe([package], "amd64")
    names: list[str] = []
    provides: list = []
    universe._add_provided(package, names, provides)
    assert list(zip(names, provides)) == universe._parse_provided(package)


def test_providers_keep_candidate_order_for_shared_names() -> None:
    universe = Universe([pkg("x", provides="v, w (= 1)"), pkg("y", provides="v (= 2), u"),
                         pkg("z", provides="v:amd64")], "amd64")
    assert [(p.owner.name, p.version) for p in universe.providers("v")] == [("x", None), ("y", "2"), ("z", None)]
    assert [p.owner.name for p in universe.providers("w")] == ["x"]
    assert universe.providers("nothing") == []


VERSION_TEXT = st.text(alphabet="0129.+~-:ab", min_size=1, max_size=9)


@settings(max_examples=500, deadline=None)
@given(st.one_of(VERSION_TEXT, st.sampled_from(VERSIONS)), st.one_of(VERSION_TEXT, st.sampled_from(VERSIONS)))
def test_version_comparison_is_python_debians(a: str, b: str) -> None:
    try:
        expected: object = version_compare(a, b)
    except ValueError as error:
        expected = str(error)
    try:
        got: object = _version_compare(a, b)
    except ValueError as error:
        got = str(error)
    assert got == expected


# --- against the real archive, and mmdebstrap on the same day ------------------

MIRROR = "http://deb.debian.org"
SUITE_INDICES = {
    # mmdebstrap adds -updates and -security for a stable suite; sid is alone.
    "bookworm": ["debian/dists/bookworm", "debian/dists/bookworm-updates", "debian-security/dists/bookworm-security"],
    "sid": ["debian/dists/sid"],
}
REFERENCE_RUNS = [
    ("bookworm", "minbase", ()),
    ("bookworm", "minbase", ("hello", "procps")),
    ("bookworm", "essential", ()),
    ("bookworm", "buildd", ()),
    ("sid", "minbase", ()),
    ("sid", "buildd", ()),
]
# sid's Release on the test mirror is past its Valid-Until; the indices are read the same way below
NO_VALID_UNTIL = 'Acquire::Check-Valid-Until "false"'
INST = re.compile(r"^Inst (\S+) \((\S+) .*\[([^\]]+)\]\)")

Installed = set[tuple[str, str, str]]


def live_universe(suite: str) -> Universe:
    import lzma
    import urllib.request

    from ocistrap.debian.archive import parse_packages

    packages: list[Package] = []
    for index in SUITE_INDICES[suite]:
        url = f"{MIRROR}/{index}/main/binary-amd64/Packages.xz"
        with urllib.request.urlopen(url, timeout=120) as response:
            packages += parse_packages(lzma.decompress(response.read()), what=url)
    return Universe(packages, "amd64")


def parse_simulation(output: str) -> tuple[Installed, Installed]:
    """The essential stage and everything mmdebstrap --simulate would install, from apt's Inst lines:
    the first batch is the essential set it downloads, the rest follows 'remaining packages'."""
    essential: Installed = set()
    everything: Installed = set()
    stage = essential
    for line in output.splitlines():
        if "remaining packages" in line:
            stage = everything
        elif found := INST.match(line):
            stage.add(found.groups())
    return essential, essential | everything


def test_parse_simulation_splits_the_stages() -> None:
    output = "\n".join([
        "I: simulate downloading packages with apt...",
        "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []",
        "Inst base-files (12.4+deb12u15 Debian:12.15/oldstable [amd64])",
        "I: simulate installing remaining packages inside the chroot...",
        "Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []",
        "Inst apt (2.6.1 Debian:12.15/oldstable [amd64])",
        "Conf apt (2.6.1 Debian:12.15/oldstable [amd64])",
    ])
    essential, everything = parse_simulation(output)
    assert essential == {("libc6", "2.36-9+deb12u14", "amd64"), ("base-files", "12.4+deb12u15", "amd64")}
    assert everything == essential | {("apt", "2.6.1", "amd64")}


def mmdebstrap_simulation(suite: str, variant: str, include: tuple[str, ...]) -> tuple[Installed, Installed]:
    """What mmdebstrap installs from the mirror as it is now: its own apt, run with --simulate."""
    if not shutil.which("mmdebstrap"):
        pytest.skip("mmdebstrap is not installed (make deps)")
    argv = ["mmdebstrap", "--mode=unshare", f"--variant={variant}", "--simulate", "--verbose",
            f"--aptopt={NO_VALID_UNTIL}", "--architectures=amd64"]
    argv += [f"--include={','.join(include)}"] if include else []
    done = subprocess.run([*argv, suite, "/dev/null"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return parse_simulation(done.stdout + done.stderr)


@pytest.fixture(scope="module")
def live_universes() -> dict[str, Universe]:
    return {suite: live_universe(suite) for suite in SUITE_INDICES}


@pytest.mark.network
@pytest.mark.parametrize(("suite", "variant", "include"), REFERENCE_RUNS)
def test_matches_mmdebstrap_on_the_live_mirror(
    live_universes: dict[str, Universe], suite: str, variant: str, include: tuple[str, ...]
) -> None:
    """The resolver installs what mmdebstrap's apt would install from the same mirror today, stage by stage.

    The archive moves (security and point-release updates), so the answer is never recorded: both
    sides read it now. Should it move between the two reads, the indices are read once more."""
    for attempt in range(2):
        theirs = mmdebstrap_simulation(suite, variant, include)
        resolution = resolve(live_universes[suite], variant=variant, include=include)
        ours = ({(p.name, p.version, p.architecture) for p in resolution.essential},
                {(p.name, p.version, p.architecture) for p in resolution.all})
        if ours == theirs or attempt:
            break
        live_universes[suite] = live_universe(suite)
    assert ours[1] == theirs[1], f"only ocistrap: {sorted(ours[1] - theirs[1])}; only mmdebstrap: {sorted(theirs[1] - ours[1])}"
    assert ours[0] == theirs[0], f"essential stage: only ocistrap: {sorted(ours[0] - theirs[0])}; " \
        f"only mmdebstrap: {sorted(theirs[0] - ours[0])}"
