"""The command line: parse arguments, call the pipeline, turn errors into one line."""

import argparse
import getpass
import json
import os
import re
import shlex
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ocistrap import __version__, combine, doctor, lock, log, pipeline, sbom
from ocistrap.assemble import ImageOptions
from ocistrap.cache import Cache, default_root
from ocistrap.doctor import native_arch
from ocistrap.errors import OcistrapError, UsageError
from ocistrap.fetch import Fetcher
from ocistrap.lock import LockedLayer
from ocistrap.mirror import DEFAULT_KEYRING, DEFAULT_MIRROR, Source
from ocistrap.transports import TRANSPORTS, Reference, open_image, parse_reference, registry
from ocistrap.verify import check_lock, verify


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="content-addressed cache (default: $XDG_CACHE_HOME/ocistrap)")
    parser.add_argument("--keyring", action="append", type=Path, default=None,
                        help=f"OpenPGP keyring to verify the archive with (repeatable; default {DEFAULT_KEYRING})")
    parser.add_argument("--offline", action="store_true", help="never use the network; the cache must hold everything")


def _json_or_words(value: str) -> tuple[str, ...]:
    if value.lstrip().startswith("["):
        try:
            words = json.loads(value)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not a JSON list: {e}") from None
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise argparse.ArgumentTypeError("expected a JSON list of strings")
        return tuple(words)
    return tuple(shlex.split(value))


def _tls(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-verify", type=_bool, default=None, metavar="true|false",
                        help="verify registry TLS certificates (default true; loopback registries use plain HTTP)")


def _bool(value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {value!r}")


def _registry_ref(text: str) -> Reference:
    return parse_reference(text if text.startswith("docker://") else f"docker://{text}")


def _layer(value: str) -> LockedLayer:
    name, sep, packages = value.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or not _csv(packages):
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=PKG[,PKG...]")
    return LockedLayer(name=name, include=tuple(_csv(packages)))


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {value!r} is not KEY=VALUE")
        pairs[key] = val
    return pairs


def _resolution(parser: argparse.ArgumentParser, *, suite_required: bool = True) -> None:
    parser.add_argument("suite", nargs=None if suite_required else "?",
                        help="Debian suite or codename, e.g. bookworm, trixie, sid")
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help=f"archive URL (default {DEFAULT_MIRROR})")
    parser.add_argument("--components", type=_csv, default=["main"], help="comma-separated (default main)")
    parser.add_argument("--variant", default="minbase",
                        help="essential, minbase (=required), required, buildd (default minbase)")
    parser.add_argument("--include", action="append", type=_csv, default=[],
                        help="extra packages, comma-separated (repeatable)")
    parser.add_argument("--layer", action="append", type=_layer, default=[], metavar="NAME=PKG[,PKG]",
                        help="install these packages as their own diff layer on top (repeatable, in order)")
    parser.add_argument("--install-recommends", action="store_true", help="also install Recommends")
    parser.add_argument("--slim", action="store_true",
                        help="leave out documentation, manual pages and translations, also for packages "
                             "installed later in the image (dpkg path-exclude rules, as Debian's slim images)")
    parser.add_argument("--arch", type=_csv, default=None, help="architectures, comma-separated (default: the host's)")
    parser.add_argument("--no-updates", action="store_true",
                        help="for a stable release, do not add its -updates and -security suites")
    parser.add_argument("--security-mirror", default=None,
                        help="archive URL of SUITE-security (default: MIRROR-security)")
    parser.add_argument("--no-check-valid-until", action="store_true",
                        help="accept a Release whose Valid-Until has passed (frozen mirrors, snapshots)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocistrap", description="Verified Debian OCI base images without root.")
    parser.add_argument("--version", action="version", version=f"ocistrap {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and commands")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only results and errors")
    parser.add_argument("--timings", action="store_true",
                        help="print how long each step took at the end (on stderr)")
    parser.add_argument("--log-format", choices=log.FORMATS, default="text",
                        help="stderr as text (a live status line on a terminal) or one JSON object per line")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("lock", help="verify the archive, resolve the package set, write a lockfile")
    _resolution(p)
    _common(p)
    p.add_argument("-o", "--output", type=Path, default=Path("ocistrap.lock"), help="lockfile to write")
    p.set_defaults(run=cmd_lock)

    p = commands.add_parser("build", help="build an OCI image (lock, fetch, install rootless, layer, deliver)")
    _resolution(p, suite_required=False)
    _common(p)
    p.add_argument("--lock", type=Path, default=None,
                   help="build exactly this lockfile (the suite and package options then come from it)")
    p.add_argument("--write-lock", type=Path, default=None, help="also save the resolved lockfile here")
    p.add_argument("--output", "-o", action="append", default=[], metavar="REF",
                   help="oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REPO:TAG], "
                        "tar:FILE (repeatable; default oci:./ocistrap-images:SUITE)")
    p.add_argument("--push", action="append", default=[], metavar="REF",
                   help="push to a registry, e.g. registry.example/debian:bookworm (repeatable; docker:// optional)")
    _tls(p)
    p.add_argument("--compression", choices=("gzip", "zstd"), default="gzip", help="layer compression (default gzip)")
    p.add_argument("--sbom", choices=sbom.FORMATS, default=None,
                   help="attach an SBOM of the installed packages to each image (registries and oci: outputs)")
    p.add_argument("--staging-dir", type=Path, default=None,
                   help="build the tree on disk under DIR instead of in memory (big images)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="image environment (repeatable)")
    p.add_argument("--cmd", type=_json_or_words, default=None, help='image Cmd, e.g. \'["bash"]\' or "bash -l"')
    p.add_argument("--entrypoint", type=_json_or_words, default=None, help="image Entrypoint")
    p.add_argument("--workdir", default=None, help="image working directory")
    p.add_argument("--user", default=None, help="image default user")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="image label (repeatable)")
    p.add_argument("--annotation", action="append", default=[], metavar="KEY=VALUE",
                   help="manifest annotation (repeatable)")
    p.set_defaults(run=cmd_build)

    p = commands.add_parser("push", help="push an image from an OCI layout or archive to a registry")
    p.add_argument("source", help="oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
    p.add_argument("destination", help="registry reference, e.g. registry.example/debian:bookworm")
    _tls(p)
    p.set_defaults(run=cmd_push)

    p = commands.add_parser("login", help="store credentials for a registry (as podman login does)")
    p.add_argument("registry")
    p.add_argument("--username", "-u", required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    _tls(p)
    p.set_defaults(run=cmd_login)

    p = commands.add_parser("logout", help="remove stored credentials for a registry")
    p.add_argument("registry")
    p.set_defaults(run=cmd_logout)

    p = commands.add_parser("verify", help="check every digest, diff_id and document of an image")
    p.add_argument("reference", help="oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or docker://REF")
    p.add_argument("--lock", type=Path, default=None,
                   help="also prove the image was built from this lockfile (its digest and Release in the manifest)")
    _tls(p)
    p.set_defaults(run=cmd_verify)

    p = commands.add_parser("sbom", help="print the SPDX SBOM attached to an image")
    p.add_argument("reference", help="oci:DIR[:TAG] or docker://REF (docker:// optional)")
    p.add_argument("--arch", default=None, help="for a multi-architecture image: whose SBOM (a Debian architecture)")
    _tls(p)
    p.set_defaults(run=cmd_sbom)

    p = commands.add_parser("index", help="push one multi-architecture index over images already in a registry")
    p.add_argument("destination", help="registry reference for the index, e.g. registry.example/debian:bookworm")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="single-architecture images in the same or another registry, e.g. registry.example/ci:amd64")
    _tls(p)
    p.set_defaults(run=cmd_index)

    p = commands.add_parser("doctor", help="check that this host can build images without root")
    p.add_argument("--arch", type=_csv, default=None, help="architectures you intend to build")
    p.set_defaults(run=cmd_doctor)

    p = commands.add_parser("fetch", help="download and verify every package of a lockfile into the cache")
    p.add_argument("lockfile", type=Path)
    _common(p)
    p.set_defaults(run=cmd_fetch)
    return parser


def _keyrings(args: argparse.Namespace) -> tuple[Path, ...]:
    return tuple(args.keyring or [DEFAULT_KEYRING])


def _cache(args: argparse.Namespace) -> Cache:
    return Cache(args.cache_dir or default_root())


def _make_lock(args: argparse.Namespace, fetcher: Fetcher, cache: Cache) -> lock.Lockfile:
    source = Source(mirror=args.mirror, suite=args.suite, components=tuple(args.components),
                    keyrings=_keyrings(args), check_valid_until=not args.no_check_valid_until)
    selection = pipeline.Selection(variant=args.variant,
                                   include=tuple(p for group in args.include for p in group),
                                   install_recommends=args.install_recommends,
                                   layers=tuple(args.layer), slim=args.slim)
    arches = tuple(args.arch or [native_arch()])
    return pipeline.make_lock(source, selection, arches, fetcher, cache, updates=not args.no_updates,
                              security_mirror=args.security_mirror)


def cmd_lock(args: argparse.Namespace) -> int:
    result = _make_lock(args, Fetcher(offline=args.offline), _cache(args))
    lock.write(result, args.output)
    count = sum(len(a.packages) for a in result.architectures.values())
    print(f"{args.output}: {count} packages locked ({result.digest()})")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    locked = lock.read(args.lockfile)
    fetched = pipeline.fetch(locked, _keyrings(args), Fetcher(offline=args.offline), _cache(args))
    count = sum(len(p) for p in fetched.paths.values())
    print(f"{count} packages verified in {(args.cache_dir or default_root())}")
    return 0


def _epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds")
    return int(value)


def cmd_build(args: argparse.Namespace) -> int:
    if args.lock is not None:
        locked = lock.read(args.lock)
        if args.slim and not locked.slim:
            raise UsageError(f"{args.lock} was locked without --slim",
                             hint=f"lock again with --slim, e.g. `ocistrap lock {locked.suite} --slim`")
        pipeline.require_runnable(locked.architectures)
    elif args.suite is None:
        raise UsageError("name a suite (e.g. `ocistrap build bookworm`) or a lockfile with --lock")
    else:
        pipeline.require_runnable(args.arch or [native_arch()])
        locked = None
    fetcher, cache = Fetcher(offline=args.offline), _cache(args)
    if locked is None:
        locked = _make_lock(args, fetcher, cache)
    if args.write_lock is not None:
        lock.write(locked, args.write_lock)
    outputs = tuple(parse_reference(o) for o in args.output) or (
        () if args.push else (parse_reference(f"oci:./ocistrap-images:{locked.suite}"),))
    outputs += tuple(_registry_ref(r) for r in args.push)
    _pairs(args.env, "--env")
    options = ImageOptions(
        env=tuple(args.env),
        cmd=args.cmd if args.cmd is not None else ImageOptions.cmd,
        entrypoint=args.entrypoint, workdir=args.workdir, user=args.user,
        labels=_pairs(args.label, "--label"), annotations=_pairs(args.annotation, "--annotation"))
    request = pipeline.BuildRequest(outputs=outputs, compression=args.compression,
                                    staging=pipeline.Staging(args.staging_dir), options=options,
                                    epoch=_epoch(), tls_verify=args.tls_verify, sbom=args.sbom)
    built = pipeline.build(locked, _keyrings(args), fetcher, cache, request)
    for ref in built.outputs:
        print(f"{ref} {built.digest}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    destination = _registry_ref(args.destination)
    with open_image(parse_reference(args.source)) as (layout, desc):
        digest = registry.push(layout, desc, destination, tls_verify=args.tls_verify)
    print(f"{destination} {digest}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.username}@{args.registry}: ")
    path = registry.login(args.registry, args.username, password, tls_verify=args.tls_verify)
    print(f"Login succeeded; credentials stored in {path}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    path = registry.logout(args.registry)
    print(f"Removed the credentials for {args.registry} from {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    locked = lock.read(args.lock) if args.lock is not None else None
    report = verify(args.reference, tls_verify=args.tls_verify)
    print(report.summary())
    if locked is not None:
        arches = check_lock(report, locked, str(args.lock))
        print(f"{report.reference}: built from {args.lock} ({locked.digest()}) for {', '.join(arches)}")
    return 0


def cmd_sbom(args: argparse.Namespace) -> int:
    named = args.reference.partition(":")[0] in TRANSPORTS and "://" not in args.reference.removeprefix("docker://")
    ref = parse_reference(args.reference) if named else _registry_ref(args.reference)
    sys.stdout.buffer.write(sbom.read(ref, platform_arch=args.arch, tls_verify=args.tls_verify))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    destination = _registry_ref(args.destination)
    desc = combine.push_index(destination, [_registry_ref(i) for i in args.images], tls_verify=args.tls_verify)
    print(f"{destination} {desc.digest}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    results = doctor.checks(args.arch or [native_arch()])
    print(doctor.format_checks(results))
    return 0 if all(c.ok for c in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = log.configure(quiet=args.quiet, debug=args.debug, log_format=args.log_format)
    try:
        return _run(args, out)
    finally:
        out.close()
        if args.timings:
            print(out.timings_report(), file=sys.stderr)


def _run(args: argparse.Namespace, out: log.Log) -> int:
    try:
        return args.run(args)
    except OcistrapError as e:
        if args.debug:
            traceback.print_exc()
        out.error(f"error: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except Exception as e:  # a bug: say so in one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            out.error(f"internal error: {type(e).__name__}: {e} (this is a bug; run with --debug for the traceback)")
        return 70
