"""The command line: parse arguments, call the pipeline, turn errors into one line."""

import argparse
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ocistrap import __version__, lock, log, pipeline
from ocistrap.cache import Cache, default_root
from ocistrap.errors import OcistrapError
from ocistrap.fetch import Fetcher
from ocistrap.mirror import DEFAULT_KEYRING, DEFAULT_MIRROR, Source


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _host_arch() -> str:
    import platform

    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386",
            "ppc64le": "ppc64el", "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="content-addressed cache (default: $XDG_CACHE_HOME/ocistrap)")
    parser.add_argument("--keyring", action="append", type=Path, default=None,
                        help=f"OpenPGP keyring to verify the archive with (repeatable; default {DEFAULT_KEYRING})")
    parser.add_argument("--offline", action="store_true", help="never use the network; the cache must hold everything")


def _resolution(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", help="Debian suite or codename, e.g. bookworm, trixie, sid")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"archive URL (default {DEFAULT_MIRROR})")
    parser.add_argument("--components", type=_csv, default=["main"], help="comma-separated (default main)")
    parser.add_argument("--variant", default="minbase",
                        help="essential, minbase (=required), required, buildd (default minbase)")
    parser.add_argument("--include", action="append", type=_csv, default=[],
                        help="extra packages, comma-separated (repeatable)")
    parser.add_argument("--install-recommends", action="store_true", help="also install Recommends")
    parser.add_argument("--arch", type=_csv, default=None, help="architectures, comma-separated (default: the host's)")
    parser.add_argument("--no-check-valid-until", action="store_true",
                        help="accept a Release whose Valid-Until has passed (frozen mirrors, snapshots)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocistrap", description="Verified Debian OCI base images without root.")
    parser.add_argument("--version", action="version", version=f"ocistrap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and commands")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only results and errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("lock", help="verify the archive, resolve the package set, write a lockfile")
    _resolution(p)
    _common(p)
    p.add_argument("-o", "--output", type=Path, default=Path("ocistrap.lock"), help="lockfile to write")
    p.set_defaults(run=cmd_lock)

    p = commands.add_parser("fetch", help="download and verify every package of a lockfile into the cache")
    p.add_argument("lockfile", type=Path)
    _common(p)
    p.set_defaults(run=cmd_fetch)
    return parser


def _keyrings(args: argparse.Namespace) -> tuple[Path, ...]:
    return tuple(args.keyring or [DEFAULT_KEYRING])


def _cache(args: argparse.Namespace) -> Cache:
    return Cache(args.cache_dir or default_root())


def cmd_lock(args: argparse.Namespace) -> int:
    source = Source(mirror=args.mirror, suite=args.suite, components=tuple(args.components),
                    keyrings=_keyrings(args), check_valid_until=not args.no_check_valid_until)
    selection = pipeline.Selection(variant=args.variant,
                                   include=tuple(p for group in args.include for p in group),
                                   install_recommends=args.install_recommends)
    arches = tuple(args.arch or [_host_arch()])
    result = pipeline.make_lock(source, selection, arches, Fetcher(offline=args.offline), _cache(args))
    lock.write(result, args.output)
    count = sum(len(a.packages) for a in result.architectures.values())
    print(f"{args.output}: {count} packages locked ({result.digest()})")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    locked = lock.read(args.lockfile)
    paths = pipeline.fetch(locked, _keyrings(args), Fetcher(offline=args.offline), _cache(args))
    count = sum(len(p) for p in paths.values())
    print(f"{count} packages verified in {(args.cache_dir or default_root())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(quiet=args.quiet, debug=args.debug)
    try:
        return args.run(args)
    except OcistrapError as e:
        if args.debug:
            traceback.print_exc()
        print(f"ocistrap: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("ocistrap: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: say so in one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            print(f"ocistrap: internal error: {type(e).__name__}: {e} "
                  f"(this is a bug; run with --debug for the traceback)", file=sys.stderr)
        return 70
