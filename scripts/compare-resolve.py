#!/usr/bin/env python3
"""Compare ocistrap.resolve against a package list that mmdebstrap really installed.

Usage: compare-resolve.py REFERENCE PACKAGES... [--essential ESSENTIAL_REF] [--variant V] [--include a,b]

PACKAGES are uncompressed Packages indices (dists/SUITE/main/binary-amd64/Packages.xz),
all that mmdebstrap's sources.list names: for a stable suite that is SUITE,
SUITE-updates and SUITE-security.  REFERENCE and ESSENTIAL_REF are either
a dpkg status file or a ``name version arch`` list as mmdebstrap installs.
Exits 1 and prints the difference when the sets differ.
"""

import argparse
import sys
import time
from pathlib import Path

from ocistrap.debian.archive import Package
from ocistrap.debian.resolve import Universe, resolve

_FIELDS = {
    "Package": "name",
    "Version": "version",
    "Architecture": "architecture",
    "Multi-Arch": "multi_arch",
    "Priority": "priority",
    "Pre-Depends": "pre_depends",
    "Depends": "depends",
    "Recommends": "recommends",
    "Provides": "provides",
    "Conflicts": "conflicts",
    "Breaks": "breaks",
}


def stanzas(text: str):
    """Yield each stanza as a dict of its single-line fields (enough for resolution)."""
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key] = value.strip()
        if "Package" in fields:
            yield fields


def load_packages(path: Path) -> list[Package]:
    """A quick stand-in for ocistrap.archive.parse_packages, for development only."""
    packages = []
    for fields in stanzas(path.read_text()):
        kwargs = {attr: fields[key] for key, attr in _FIELDS.items() if key in fields}
        kwargs["essential"] = fields.get("Essential") == "yes"
        packages.append(Package(**kwargs))
    return packages


def load_reference(path: Path) -> set[tuple[str, str, str]]:
    text = path.read_text()
    if text.startswith("Package:") or "\nStatus:" in text:
        return {
            (f["Package"], f["Version"], f["Architecture"])
            for f in stanzas(text)
            if f.get("Status") == "install ok installed"
        }
    return {tuple(line.split()) for line in text.splitlines() if line and not line.startswith("#")}


def report(label: str, got: list[Package], want: set[tuple[str, str, str]]) -> bool:
    have = {(p.name, p.version, p.architecture) for p in got}
    missing, extra = sorted(want - have), sorted(have - want)
    print(f"{label}: {len(have)} resolved, {len(want)} in reference", end="")
    if not missing and not extra:
        print(": identical")
        return True
    print()
    for entry in missing:
        print("  missing:", *entry)
    for entry in extra:
        print("  extra:  ", *entry)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path)
    parser.add_argument("packages", type=Path, nargs="+")
    parser.add_argument("--essential", type=Path)
    parser.add_argument("--variant", default="minbase")
    parser.add_argument("--include", default="")
    parser.add_argument("--arch", default="amd64")
    args = parser.parse_args()

    start = time.perf_counter()
    universe = Universe([p for path in args.packages for p in load_packages(path)], args.arch)
    loaded = time.perf_counter()
    include = [i for i in args.include.replace(",", " ").split() if i]
    resolution = resolve(universe, variant=args.variant, include=include)
    done = time.perf_counter()
    print(f"loaded {len(universe)} packages in {loaded - start:.2f} s, resolved in {done - loaded:.3f} s")

    ok = report("all", resolution.all, load_reference(args.reference))
    if args.essential:
        ok &= report("essential stage", resolution.essential, load_reference(args.essential))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
