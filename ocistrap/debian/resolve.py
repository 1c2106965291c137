"""Choose the packages of a variant exactly as rootless mmdebstrap 1.3.5 does.

mmdebstrap asks apt twice.  First, with an empty dpkg status and apt not forced
essential, ``apt-get install`` of every Essential:yes package of the native
architecture: what that downloads is unpacked and installed with dpkg (the
*essential* stage).  Then, on top of that, ``apt-get install`` of the includes,
``build-essential`` for buildd and the packages of the variant's priorities that
are not essential (the *rest*).

The set apt picks depends on the order it visits packages and alternatives, so
this module replays apt 2.6's ``pkgDepCache::MarkInstall`` rather than solving
the dependency problem its own way: requested packages are marked first, then
each gets its dependencies installed, depth first, in the order apt created
their packages (the first mention of each name in the indices, in sources.list
order); an or-group already satisfied is left alone; otherwise its solutions are
tried in ``CompareProviders`` order and the first that installs wins.  Where apt
would remove an already chosen package for a Conflicts/Breaks or call its
problem resolver, this module skips that solution or raises
:class:`ArchiveError` instead.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property
from itertools import chain
from operator import attrgetter
from typing import NamedTuple

from ocistrap.debian.archive import Package
from ocistrap.debian.versions import _version_compare, version_satisfies
from ocistrap.errors import ArchiveError

VARIANTS = ("essential", "minbase", "required", "buildd", "important", "standard", "custom")
"""mmdebstrap's variants that install packages (``minbase`` is ``required``)."""
_STAGE2_PRIORITIES = {
    "required": ("required",),
    "buildd": ("required",),
    "important": ("required", "important"),
    "standard": ("required", "important", "standard"),
}

# apt's pkgCache::State::VerPriority; a stanza without Priority stays 0.
_PRIORITY_RANK = {"": 0, "required": 1, "important": 2, "standard": 3, "optional": 4, "extra": 5}
_CRITICAL = ("pre_depends", "depends")
_ALTERNATIVE = re.compile(
    r"\s*(?P<name>[A-Za-z0-9][A-Za-z0-9+.\-]*)"
    r"(?::(?P<archqual>[A-Za-z0-9][A-Za-z0-9\-]*))?"
    r"\s*(?:\(\s*(?P<op><<|<=|>=|>>|=|<|>)\s*(?P<version>[^\s)]+)\s*\))?"
    r"\s*(?:\[(?P<arches>[^\]]*)\])?"
    r"\s*(?:<[^>]*>\s*)*$"
)
_OBSOLETE_OPS = {"<": "<=", ">": ">="}


@dataclass(frozen=True, slots=True)
class Alternative:
    """One ``name[:arch] (op version)`` of an or-group."""

    name: str
    archqual: str | None = None
    op: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        text = self.name if self.archqual is None else f"{self.name}:{self.archqual}"
        return text if self.op is None else f"{text} ({self.op} {self.version})"


Group = tuple[Alternative, ...]


def _arch_matches(native: str, spec: str) -> bool:
    return spec in (native, "any", "linux-any", f"any-{native}")


def _arch_allowed(native: str, arches: str | None) -> bool:
    """Whether an ``[arch ...]`` restriction keeps this alternative for ``native``."""
    if arches is None:
        return True
    specs = arches.split()
    if not specs:
        return True
    if specs[0].startswith("!"):
        return not any(_arch_matches(native, s[1:]) for s in specs)
    return any(_arch_matches(native, s) for s in specs)


def parse_relations(text: str, *, arch: str, what: str = "relationship field") -> tuple[Group, ...]:
    """Parse a Depends-style field into or-groups, dropping alternatives for other arches.

    Obsolete ``<`` and ``>`` mean ``<=`` and ``>=`` as in dpkg; build profiles
    are ignored (binary packages carry none).
    """
    groups: list[Group] = []
    for group_text in text.split(","):
        if not group_text.strip():
            continue
        alternatives = []
        for alt_text in group_text.split("|"):
            match = _ALTERNATIVE.match(alt_text)
            if match is None:
                raise ArchiveError(f"cannot parse {alt_text.strip()!r} in {what}")
            if not _arch_allowed(arch, match["arches"]):
                continue
            op = match["op"]
            alternatives.append(
                Alternative(match["name"], match["archqual"], _OBSOLETE_OPS.get(op, op), match["version"])
            )
        if alternatives:
            groups.append(tuple(alternatives))
    return tuple(groups)


# The fields apt's list parser reads, in the order it creates the packages they name.
_APT_FIELD_ORDER = ("pre_depends", "depends", "conflicts", "breaks", "recommends", "suggests", "replaces", "enhances")
_ORDER_FIELDS = tuple(f for f in _APT_FIELD_ORDER if f in {f.name for f in fields(Package)})


def _named(text: str, *, provides: bool = False) -> Iterable[str]:
    """The package names a relationship field creates in apt's cache, in order.

    ``name:any`` and other arch-qualified dependencies create a package of
    another name, so they are skipped; ``Provides: name:arch`` creates ``name``.
    """
    for item in text.replace("|", ",").split(","):
        words = item.split(None, 1)
        if not words:
            continue
        name = words[0].partition("(")[0]
        if ":" not in name:
            yield name
        elif provides and not name.endswith(":any"):
            yield name.partition(":")[0]


def _mentions(packages: Iterable[Package]) -> Iterable[str]:
    """Every name in the order apt's cache generator creates packages for these stanzas."""
    for package in packages:
        yield package.name
        for kind in _ORDER_FIELDS:
            text = getattr(package, kind)
            if text:
                yield from _named(text)
        if package.provides:
            yield from _named(package.provides, provides=True)


# A package name without these characters starts an item of the mention text only where it is mentioned.
_ODD_NAME_CHAR = re.compile(r"[\s,|(:]")
_ORDER_TEXTS = attrgetter("name", *_ORDER_FIELDS, "provides")


def _join_mentions(packages: Sequence[Package]) -> str:
    """Each stanza's name, order fields and Provides, in apt's order, as one comma-separated text.

    The items of this text start, in order, with exactly the names ``_mentions``
    yields (arch-qualified Provides are rewritten to the names they create), so
    where a name first starts an item is where apt first met it.
    """
    chunks = list(chain.from_iterable(map(_ORDER_TEXTS, packages)))
    width = len(_ORDER_FIELDS) + 2
    chunks[width - 1::width] = [
        ",".join(_named(text, provides=True)) if ":" in text else text for text in chunks[width - 1::width]
    ]
    return ",".join(chunks)


def _first_mention(text: str, name: str) -> int | None:
    """Where NAME first starts an item of a mention text as the whole name, or None."""
    start = 0
    while (at := text.find(name, start)) >= 0:
        end = at + len(name)
        if (end == len(text) or text[end] in ",|(" or text[end].isspace()) and _starts_item(text, at):
            return at
        start = at + 1
    return None


def _starts_item(text: str, at: int) -> bool:
    before = at - 1
    while before >= 0 and text[before].isspace():
        before -= 1
    return before < 0 or text[before] in ",|"


def _plain_names(names: Sequence[str]) -> bool:
    """Whether no name could be confused with another item's text (true of every valid name)."""
    return "" not in names and _ODD_NAME_CHAR.search("".join(names)) is None


# dak's spelling of Provides; its meaning under _parse_provides is plain to see.
_SIMPLE_PROVIDE = r"[^\s,():|]+(?: \(= [^\s(),|]+\))?"
_SIMPLE_PROVIDES = re.compile(rf"{_SIMPLE_PROVIDE}(?:, {_SIMPLE_PROVIDE})*")
_PROVIDED_NAME = re.compile(r"(?:^|, )([^\s,():|]+)")
_PROVIDED_VERSION = re.compile(r"(?:^|, )[^\s,():|]+(?: \(= ([^\s(),|]+)\))?")


def _parse_provides(text: str, package: Package) -> list[tuple[str, str | None]]:
    """Any spelling of Provides; ``Universe._add_provided`` reads dak's usual one faster."""
    provided = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if "(" not in item:
            provided.append((item, None))
            continue
        name, _, rest = item.partition("(")
        op, _, version = rest.rstrip(") ").strip().partition(" ")
        if op == "=" and version.strip():
            provided.append((name.strip(), version.strip()))
        elif op.startswith("=") and len(op) > 1:
            provided.append((name.strip(), op[1:]))
        else:
            raise ArchiveError(f"cannot parse {item!r} in Provides of {package.name} {package.version}")
    return provided


class _Provide(NamedTuple):
    owner: Package
    version: str | None


class Universe:
    """The candidates for one native architecture, indexed for resolution.

    Give it every index mmdebstrap's sources.list names (for a stable suite:
    SUITE, SUITE-updates and SUITE-security), in that order and each in file
    order, since apt's choices follow the order it first met each name.  Built
    once; relationship fields are parsed only for packages resolution visits.
    """

    def __init__(self, packages: Iterable[Package], arch: str) -> None:
        self.arch = arch
        accepted = (arch, "all")
        self._stream = [p for p in packages if p.architecture in accepted]
        names = list(map(attrgetter("name"), self._stream))
        # Names in order of first appearance; most have one version, so only repeats get lists.
        self._candidates: dict[str, Package] = dict(zip(names, self._stream))
        self._repeated: dict[str, list[Package]] = {}
        if len(self._candidates) < len(names):
            self._repeated = {name: [] for name, count in Counter(names).items() if count > 1}
            for package in self._stream:
                found = self._repeated.get(package.name)
                if found is not None:
                    found.append(package)
            for name, found in self._repeated.items():
                self._candidates[name] = max(found, key=_VersionKey)
        self._relations: dict[str, tuple[Group, ...]] = {}
        self._ranks: dict[str, int] = {}
        self._providers: dict[str, list[_Provide]] = {}

    def __len__(self) -> int:
        return len(self._candidates)

    def __contains__(self, name: object) -> bool:
        return name in self._candidates

    def versions(self, name: str) -> list[Package]:
        """Every package called ``name``, highest version first."""
        found = self._repeated.get(name)
        if found is None:
            candidate = self._candidates.get(name)
            return [] if candidate is None else [candidate]
        return sorted(found, key=_VersionKey, reverse=True)

    def candidate(self, name: str) -> Package | None:
        """The highest version of ``name``, as apt picks it with all sources at one pin."""
        return self._candidates.get(name)

    def candidates(self) -> Iterable[Package]:
        return self._candidates.values()

    @cached_property
    def _creation_order(self) -> dict[str, int]:
        """Every mentioned name with its place in apt's order, counted one by one (the slow, sure way)."""
        first_mentions = dict.fromkeys(_mentions(self._stream))
        return {name: rank for rank, name in enumerate(first_mentions)}

    @cached_property
    def _mention_text(self) -> str | None:
        """The mention text of the stream, unless a package name could be misread in it."""
        return _join_mentions(self._stream) if _plain_names(list(self._candidates)) else None

    def creation_rank(self, name: str) -> int:
        """apt's package ID: where ``name`` is first mentioned in the indices, in input order.

        ``apt-get install PATTERN`` auto-installs the matches in this order, and
        CompareProviders prefers the higher one on a tie; so this order decides
        or-groups and providers where nothing else does.  Ranks only compare:
        they are offsets in the mention text, found per name on demand, since
        resolution ranks a few hundred of the 100,000 names an index mentions.
        Raises KeyError for a name the indices never mention.
        """
        rank = self._ranks.get(name)
        if rank is None:
            rank = self._find_rank(name)
            self._ranks[name] = rank
        return rank

    def _find_rank(self, name: str) -> int:
        text = self._mention_text
        if text is None:
            return self._creation_order[name]
        at = _first_mention(text, name) if _plain_names([name]) else None
        if at is None:
            raise KeyError(name)
        return at

    @cached_property
    def essential_names(self) -> list[str]:
        """Essential:yes candidates in the order ``apt-get install ?essential`` visits them."""
        return self.in_apt_order(p.name for p in self.candidates() if p.essential)

    def in_apt_order(self, names: Iterable[str]) -> list[str]:
        return sorted(names, key=self.creation_rank)

    def relations(self, package: Package, kind: str) -> tuple[Group, ...]:
        """The parsed ``kind`` field (``depends``, ``breaks``, ...) of ``package``, cached by text."""
        text = getattr(package, kind)
        if not text:
            return ()
        parsed = self._relations.get(text)
        if parsed is None:
            what = f"{kind.replace('_', '-').title()} of {package.name} {package.version}"
            parsed = parse_relations(text, arch=self.arch, what=what)
            self._relations[text] = parsed
        return parsed

    @cached_property
    def _provider_index(self) -> tuple[dict[str, _Provide], dict[str, list[_Provide]]]:
        """Each provided name's provider, and all providers of the names with several.

        Built in one pass over about 100,000 Provides entries (most of them Rust
        crate features), so it makes one ``_Provide`` per package and version
        and lists only for the few names that several packages provide.
        """
        names: list[str] = []
        provides: list[_Provide] = []
        for package in self.candidates():
            if package.provides:
                self._add_provided(package, names, provides)
        one = dict(zip(names, provides))
        several: dict[str, list[_Provide]] = {}
        if len(one) < len(names):
            several = {name: [] for name, count in Counter(names).items() if count > 1}
            for name, provide in zip(names, provides):
                found = several.get(name)
                if found is not None:
                    found.append(provide)
        return one, several

    def _add_provided(self, package: Package, names: list[str], provides: list[_Provide]) -> None:
        """Append what PACKAGE provides on this architecture; dak's usual spelling takes a fast path."""
        text = package.provides
        if _SIMPLE_PROVIDES.fullmatch(text):
            if "(" not in text:
                provided = text.split(", ")
                names += provided
                provides += [_Provide(package, None)] * len(provided)
                return
            version = text.partition(" (= ")[2].partition(")")[0]
            suffix = f" (= {version})"
            if text.count(suffix) == text.count(", ") + 1:  # every entry has that version
                provided = text.replace(suffix, "").split(", ")
                names += provided
                provides += [_Provide(package, version)] * len(provided)
                return
            names += _PROVIDED_NAME.findall(text)
            versions = _PROVIDED_VERSION.findall(text)
            made = {version: _Provide(package, version or None) for version in set(versions)}
            provides += map(made.__getitem__, versions)
            return
        for name, provide in self._parse_provided(package):
            names.append(name)
            provides.append(provide)

    def _parse_provided(self, package: Package) -> list[tuple[str, _Provide]]:
        """Every spelling of Provides dpkg accepts, with ``name:arch`` kept for this architecture only."""
        provided = []
        for name, version in _parse_provides(package.provides, package):
            if ":" in name:
                bare, _, qualifier = name.partition(":")
                if qualifier not in ("any", self.arch):
                    continue
                name = bare if qualifier == self.arch else name
            provided.append((name, _Provide(package, version)))
        return provided

    def providers(self, name: str) -> list[_Provide]:
        """Candidates that provide ``name`` (``name:any`` for explicit ``Provides: name:any``)."""
        found = self._providers.get(name)
        if found is None:
            one, several = self._provider_index
            found = several.get(name) or ([one[name]] if name in one else [])
            self._providers[name] = found
        return found

    def solutions(self, alt: Alternative) -> list[Package]:
        """Candidates that satisfy ``alt``: the package itself, then its providers."""
        found: list[Package] = []
        if alt.archqual not in (None, "any", "native", self.arch):
            return found
        wildcard = alt.archqual == "any"
        real = self.candidate(alt.name)
        if real is not None and (not wildcard or real.multi_arch == "allowed"):
            if version_satisfies(real.version, alt.op, alt.version):
                found.append(real)
        provides = self.providers(alt.name)
        if wildcard:
            provides = [p for p in provides if p.owner.multi_arch == "allowed"]
            provides = provides + self.providers(f"{alt.name}:any")
        for provide in provides:
            if version_satisfies(provide.version, alt.op, alt.version):
                found.append(provide.owner)
        return found

    def near_names(self, name: str) -> list[str]:
        """A few existing names close to a misspelt one."""
        pool = [n for n in self._candidates if n[:1] == name[:1]] or list(self._candidates)
        return difflib.get_close_matches(name, pool, n=3)


class _VersionKey:
    """Sort packages by Debian version order."""

    __slots__ = ("version",)

    def __init__(self, package: Package) -> None:
        self.version = package.version

    def __lt__(self, other: _VersionKey) -> bool:
        return _version_compare(self.version, other.version) < 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _VersionKey) and _version_compare(self.version, other.version) == 0


@dataclass(frozen=True)
class Resolution:
    """What mmdebstrap installs: ``essential`` with dpkg first, then ``rest`` with apt."""

    essential: list[Package]
    rest: list[Package]
    requested: frozenset[str] = frozenset()

    def auto_installed(self, package: Package) -> bool:
        """Whether apt would mark PACKAGE automatically installed (a dependency, not asked for)."""
        return package.name not in self.requested

    @property
    def all(self) -> list[Package]:
        return sorted(self.essential + self.rest, key=lambda p: p.name)


@dataclass
class _Marker:
    """apt's pkgDepCache marking state for one ``apt-get install`` run."""

    universe: Universe
    install_recommends: bool
    installed: dict[str, Package] = field(default_factory=dict)
    marked: dict[str, Package] = field(default_factory=dict)
    protected: set[str] = field(default_factory=set)
    discarded: dict[str, str] = field(default_factory=dict)
    pinned: dict[str, Package] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)
    required_by: dict[str, str] = field(default_factory=dict)

    def candidate(self, name: str) -> Package | None:
        if name in self.discarded:
            return None
        return self.pinned.get(name) or self.universe.candidate(name)

    def selected(self, name: str) -> Package | None:
        return self.marked.get(name) or self.installed.get(name)

    def satisfied(self, group: Group) -> bool:
        return any(self._alt_satisfied(alt) for alt in group)

    def _alt_satisfied(self, alt: Alternative) -> bool:
        return any(self.selected(p.name) is p for p in self._solutions(alt))

    def _solutions(self, alt: Alternative) -> list[Package]:
        found = self.universe.solutions(alt)
        pinned = self.pinned.get(alt.name)
        if pinned is not None and pinned not in found:
            if version_satisfies(pinned.version, alt.op, alt.version):
                found = [pinned, *found]
        return found

    def kinds(self) -> tuple[str, ...]:
        return _CRITICAL + ("recommends",) if self.install_recommends else _CRITICAL

    def request(self, names: Sequence[str]) -> None:
        """``apt-get install NAMES``: mark all, then auto-install each in order."""
        for name in names:
            self.protected.add(name)
            if name not in self.installed:
                self.marked[name] = self.candidate(name)  # type: ignore[assignment]
        for name in names:
            self.mark_install(name)
        if self.broken:
            raise ArchiveError(self.broken[0])

    def possible_solutions(self, group: Group) -> list[Package]:
        """getAllPossibleSolutions: per alternative, candidates in CompareProviders order."""
        ordered: list[Package] = []
        for alt in group:
            found = [p for p in self._solutions(alt) if self.candidate(p.name) is p]
            found.sort(key=lambda p: self._provider_key(p, alt))
            ordered.extend(found)
        unique = [p for i, p in enumerate(ordered) if i == 0 or ordered[i - 1] is not p]
        return [p for p in unique if not (p.name in self.protected and self.selected(p.name) is None)]

    def _provider_key(self, package: Package, alt: Alternative) -> tuple:
        target = alt.name if alt.archqual is None else f"{alt.name}:{alt.archqual}"
        return (
            package.name not in self.protected,
            package.name not in self.installed,
            package.name != target,
            not package.essential,
            _PRIORITY_RANK.get(package.priority, 5),
            -self.universe.creation_rank(package.name),
        )

    def mark_install(self, name: str) -> bool:
        """pkgDepCache::MarkInstall(Pkg, AutoInst=true); False if it cannot be installed."""
        package = self.candidate(name)
        if package is None:
            return False
        is_protected = name in self.protected
        if not is_protected and self.selected(name) is package:
            return True
        clash = self._clash(package)
        if clash is not None:
            if not is_protected:
                return False
            self.broken.append(clash)
        groups = [
            (kind, group)
            for kind in self.kinds()
            for group in self.universe.relations(package, kind)
            if is_protected or not self.satisfied(group)
        ]
        if name not in self.installed:
            self.marked[name] = package
        failed = False
        for kind, group in groups:
            critical = kind in _CRITICAL
            if self.satisfied(group):
                if is_protected and critical:
                    self._propagate_protection(group)
                continue
            if self._install_group(package, kind, group, is_protected):
                continue
            if not critical:
                continue
            reason = self._explain(package, kind, group)
            if not is_protected:
                del self.marked[name]
                self.discarded[name] = reason
                return False
            self.broken.append(reason + self._chain(name))
            failed = True
        return not failed

    def _install_group(self, package: Package, kind: str, group: Group, is_protected: bool) -> bool:
        solutions = self.possible_solutions(group)
        single_critical = is_protected and kind in _CRITICAL and len(solutions) == 1
        for solution in solutions:
            self.required_by.setdefault(solution.name, package.name)
            if single_critical:
                if solution.name not in self.installed:
                    self.marked[solution.name] = solution
                self.protected.add(solution.name)
            if self.mark_install(solution.name):
                return True
        return False

    def _propagate_protection(self, group: Group) -> None:
        """A protected package's satisfied dependency with one possible solution gets protected too."""
        solutions = {p.name for alt in group for p in self._solutions(alt)}
        solutions = {n for n in solutions if self.candidate(n) is not None or n in self.installed}
        if len(solutions) != 1:
            return
        (only,) = solutions
        if only in self.protected:
            return
        self.protected.add(only)
        self.mark_install(only)

    def _clash(self, package: Package) -> str | None:
        """A Conflicts/Breaks between ``package`` and what is already selected, as a message."""
        others = {**self.installed, **self.marked}
        others.pop(package.name, None)
        for kind, alt in self._negatives(package):
            for hit in _negative_hits(self.universe, alt, others, package):
                return _clash_message(package, kind, alt, hit)
        alone = {package.name: package}
        for other in others.values():
            for kind, alt in self._negatives(other):
                if _negative_hits(self.universe, alt, alone, other):
                    return _clash_message(other, kind, alt, package)
        return None

    def _negatives(self, package: Package) -> Iterable[tuple[str, Alternative]]:
        for kind in ("conflicts", "breaks"):
            for group in self.universe.relations(package, kind):
                for alt in group:
                    yield kind, alt

    def _explain(self, package: Package, kind: str, group: Group) -> str:
        """Why no alternative of ``group`` could be installed, naming the chain."""
        verb = "pre-depends on" if kind == "pre_depends" else kind.rstrip("s") + "s on"
        reasons = [self._explain_alt(alt) for alt in group]
        return f"{package.name} {package.version} {verb} {' | '.join(map(str, group))} but {'; '.join(reasons)}"

    def _explain_alt(self, alt: Alternative) -> str:
        solutions = [p for p in self._solutions(alt)]
        for solution in solutions:
            if solution.name in self.discarded:
                return f"{solution.name} cannot be installed ({self.discarded[solution.name]})"
        if solutions:
            return f"{alt} cannot be installed"
        available = self.universe.versions(alt.name)
        if available and alt.op is not None:
            return f"only {', '.join(p.version for p in available)} of {alt.name} is available"
        if available and alt.archqual == "any":
            return f"{alt.name} is not Multi-Arch: allowed"
        return f"{alt.name} is not available"

    def _chain(self, name: str) -> str:
        seen = [name]
        while seen[-1] in self.required_by and self.required_by[seen[-1]] not in seen:
            seen.append(self.required_by[seen[-1]])
        if len(seen) == 1:
            return ""
        return " (needed by " + " <- ".join(seen[1:]) + ")"


def _negative_hits(universe: Universe, alt: Alternative, selected: dict[str, Package], owner: Package) -> list[Package]:
    """Selected packages that a Conflicts/Breaks alternative of ``owner`` matches (never itself)."""
    hits = []
    real = selected.get(alt.name)
    if real is not None and real is not owner and version_satisfies(real.version, alt.op, alt.version):
        hits.append(real)
    for provide in universe.providers(alt.name):
        other = selected.get(provide.owner.name)
        if other is provide.owner and other is not owner and version_satisfies(provide.version, alt.op, alt.version):
            hits.append(other)
    return hits


def _clash_message(owner: Package, kind: str, alt: Alternative, hit: Package) -> str:
    verb = "conflicts with" if kind == "conflicts" else "breaks"
    return (
        f"{owner.name} {owner.version} {verb} {alt}, but {hit.name} {hit.version} is selected too "
        "(drop one of them from --include)"
    )


def _priority_names(universe: Universe, priorities: tuple[str, ...]) -> list[str]:
    return universe.in_apt_order(
        p.name for p in universe.candidates() if p.priority in priorities and not p.essential
    )


def _parse_include(universe: Universe, entry: str) -> tuple[str, Package | None]:
    """Map an include (``name`` or ``name=version``) to a real package name and a pinned version."""
    name, _, version = entry.partition("=")
    name = name.strip()
    if name.endswith(f":{universe.arch}"):
        name = name[: -len(universe.arch) - 1]
    if not name or ":" in name or name.startswith(("?", "~", "/", ".")):
        raise ArchiveError(f"cannot include {entry!r}", hint="give a package name, optionally name=version")
    if name not in universe:
        providers = sorted({p.owner.name for p in universe.providers(name)})
        if len(providers) == 1 and not version:
            return providers[0], None
        if providers:
            raise ArchiveError(
                f"{name} is a virtual package provided by {', '.join(providers)}",
                hint="include one of them explicitly",
            )
        near = universe.near_names(name)
        hint = f"did you mean {', '.join(near)}?" if near else "check the suite and the spelling"
        raise ArchiveError(f"unknown package {name!r} in --include", hint=hint)
    if not version:
        return name, None
    for package in universe.versions(name):
        if package.version == version:
            return name, package
    available = ", ".join(p.version for p in universe.versions(name))
    raise ArchiveError(f"version {version} of {name} is not available (only {available})")


def resolve(
    universe: Universe,
    *,
    variant: str,
    include: Sequence[str] = (),
    install_recommends: bool = False,
) -> Resolution:
    """Replay mmdebstrap's two ``apt-get install`` runs for ``variant`` plus ``include``."""
    if variant not in VARIANTS:
        raise ArchiveError(f"unknown variant {variant!r}", hint=f"choose one of {', '.join(VARIANTS)}")
    variant = "required" if variant == "minbase" else variant
    requested: list[str] = []
    pinned: dict[str, Package] = {}
    for entry in include:
        name, version = _parse_include(universe, entry)
        if name not in requested:
            requested.append(name)
        if version is not None:
            pinned[name] = version
    if variant == "buildd":
        requested.append("build-essential")
    if variant in _STAGE2_PRIORITIES:
        requested.extend(_priority_names(universe, _STAGE2_PRIORITIES[variant]))
    requested = list(dict.fromkeys(requested))

    first = _Marker(universe, install_recommends)
    if variant == "custom":
        first.pinned = pinned
        first.request(_checked(universe, requested))
        return _resolution(first.marked, {}, requested)
    first.request(universe.essential_names)
    second = _Marker(universe, install_recommends, installed=dict(first.marked), pinned=pinned)
    for name, package in pinned.items():
        if name in second.installed and second.installed[name] is not package:
            raise ArchiveError(
                f"{name} {package.version} was asked for, but the essential set needs {name} "
                f"{second.installed[name].version}"
            )
    if requested:
        second.request(_checked(universe, requested))
    return _resolution(first.marked, second.marked, requested)


def _checked(universe: Universe, names: list[str]) -> list[str]:
    for name in names:
        if name not in universe:
            raise ArchiveError(f"{name} is needed by the variant but is not in the archive")
    return names


def _resolution(essential: dict[str, Package], rest: dict[str, Package],
                requested: Sequence[str]) -> Resolution:
    by_name = lambda p: p.name  # noqa: E731
    return Resolution(
        essential=sorted(essential.values(), key=by_name),
        rest=sorted(rest.values(), key=by_name),
        requested=frozenset(requested),
    )
