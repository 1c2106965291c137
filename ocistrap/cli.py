"""The command line: parse arguments, call the pipeline, turn errors into one line.

A command imports the modules only it needs when it runs (the bootstrap, signing, the registry
client): `ocistrap lock` and `--help` do not pay for them at start-up."""

from __future__ import annotations

import argparse
import errno
import getpass
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ocistrap import __version__, log, settings, settingtable, transports
from ocistrap.debian import lock, locking
from ocistrap.debian.cache import Cache, Entry, default_root
from ocistrap.debian.fetch import Fetcher
from ocistrap.debian.mirror import Source, security_mirror_for
from ocistrap.debian.snapshot import WHEN, Snapshots
from ocistrap.errors import ArchiveError, OcistrapError, UsageError
from ocistrap.hostarch import native_arch, require_runnable
from ocistrap.oci import keys
from ocistrap.rootfs import buildmode, detect
from ocistrap.transports import BadReference, Shape, parse_reference

if TYPE_CHECKING:
    from ocistrap.bundle import Bundle


def add_global_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, defaults: bool) -> None:
    """The options of every command, before or after its name (as podman takes them). After it
    they default to nothing, so that they do not undo the same option given before it."""
    given = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("--debug", action="store_true", help="show tracebacks and commands", **given)
    parser.add_argument("--quiet", "-q", action="store_true", help="print only results and errors", **given)
    parser.add_argument("--timings", action="store_true",
                        help="print how long each step took at the end (on stderr)", **given)
    parser.add_argument("--log-format", choices=log.FORMATS, **(given or {"default": "text"}),
                        help="stderr as text (a live status line on a terminal) or one JSON object per line")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ocistrap", description="Verified Debian OCI base images without root.")
    parser.add_argument("--version", action="version", version=f"ocistrap {__version__}")
    add_global_options(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    add_global_options(common.add_argument_group("global options (also before COMMAND)"), defaults=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=partial(argparse.ArgumentParser, parents=[common]))

    p = commands.add_parser("lock", help="verify the archive, resolve the package set, write a lockfile")
    settingtable.add_options(p, "lock")
    p.set_defaults(run=cmd_lock)

    p = commands.add_parser("build", help="build an OCI image (lock, fetch, install rootless, layer, deliver)")
    settingtable.add_options(p, "build")
    p.set_defaults(run=cmd_build)

    p = commands.add_parser("push", help="push an image from an OCI layout or archive to a registry")
    p.add_argument("source", help="oci:DIR[:TAG] or oci-archive:FILE[:TAG]")
    p.add_argument("destination", help="registry reference, e.g. api.example/debian:bookworm "
                                       "(or any other output, as -o takes)")
    settingtable.add_options(p, "push")
    p.set_defaults(run=cmd_push)

    p = commands.add_parser("login", help="store credentials for a registry (as podman login does)")
    p.add_argument("registry")
    p.add_argument("--username", "-u", required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    settingtable.add_options(p, "login")
    p.set_defaults(run=cmd_login)

    p = commands.add_parser("logout", help="remove stored credentials for a registry")
    p.add_argument("registry")
    p.set_defaults(run=cmd_logout)

    p = commands.add_parser("verify", help="check every digest, diff_id and document of an image")
    p.add_argument("reference", help="oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE or a registry "
                                     "reference (docker:// optional)")
    p.add_argument("--lock", type=Path, default=None,
                   help="also prove the image was built from this lockfile (its digest and Release in the manifest); "
                        "with --rebuild, the lockfile to rebuild from")
    p.add_argument("--rebuild", action="store_true",
                   help="build the image again from its lockfile (--lock, else its provenance attestation's) and "
                        "compare digests; exit 1 naming the first layer and paths that differ")
    p.add_argument("--key", type=Path, default=None, metavar="PUB",
                   help="also prove this public key signed the image (index and every manifest) for the reference "
                        "given, and check the provenance attached to it")
    settingtable.add_options(p, "verify")
    p.set_defaults(run=cmd_verify)

    p = commands.add_parser("sbom", help="print the SPDX SBOM attached to an image")
    p.add_argument("reference", help="oci:DIR[:TAG] or a registry reference (docker:// optional)")
    p.add_argument("--arch", default=None, help="for a multi-architecture image: whose SBOM (a Debian architecture)")
    settingtable.add_options(p, "sbom")
    p.set_defaults(run=cmd_sbom)

    p = commands.add_parser("index", help="push one multi-architecture index over images already in a registry")
    p.add_argument("destination", help="registry reference for the index, e.g. api.example/debian:bookworm")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="single-architecture images in the same or another registry, e.g. api.example/ci:amd64")
    settingtable.add_options(p, "index")
    p.set_defaults(run=cmd_index)

    p = commands.add_parser("doctor", help="check that this host can build images without root")
    p.add_argument("--arch", type=settingtable.csv_list, default=None, help="architectures you intend to build")
    p.add_argument("--mode", choices=buildmode.MODES, default="auto",
                   help="the sandbox mode you intend to build in (default: auto)")
    p.add_argument("--apparmor-profile", type=Path, metavar="FILE",
                   help="write an AppArmor profile that lets ocistrap's interpreter make user namespaces "
                        "(for kernel.apparmor_restrict_unprivileged_userns=1) to FILE, and check nothing")
    p.set_defaults(run=cmd_doctor)

    p = commands.add_parser("fetch", help="download and verify every package of a lockfile into the cache")
    p.add_argument("lockfile", type=Path, nargs="?", help="the lockfile (with --from: default the bundle's)")
    settingtable.add_options(p, "fetch")
    p.set_defaults(run=cmd_fetch)

    p = commands.add_parser("bundle", help="write a lockfile with its Releases, indices and .debs as one "
                                           "OCI artifact, to build from without the mirror")
    p.add_argument("lockfile", type=Path)
    p.add_argument("-o", "--output", required=True, type=parse_reference, metavar="REF", dest="destination",
                   help="oci:DIR[:TAG], oci-archive:FILE[:TAG] or a registry reference")
    settingtable.add_options(p, "bundle")
    p.set_defaults(run=cmd_bundle)

    p = commands.add_parser("key", help="make a key pair for signing images")
    key_commands = p.add_subparsers(dest="key_command", required=True, metavar="ACTION")
    k = key_commands.add_parser("generate", help="write an ECDSA P-256 key pair: NAME.key (mode 0600) and NAME.pub")
    k.add_argument("name", nargs="?", default="ocistrap", help="path without suffix (default: ocistrap)")
    k.add_argument("--passphrase-file", type=Path, default=None, metavar="FILE",
                   help=f"encrypt the private key with the first line of FILE (else ${keys.PASSPHRASE_ENV}, "
                        "else asked on the terminal; empty for none)")
    k.set_defaults(run=cmd_key_generate)

    p = commands.add_parser("cache", help="show what the cache holds, or prune it")
    p.add_argument("action", nargs="?", choices=("show", "prune"), default="show",
                   help="show (default): sizes by kind; prune: remove what no build needs")
    p.add_argument("--keep", type=Path, action="append", default=[], metavar="LOCKFILE",
                   help="prune: keep only what building these lockfiles offline needs (repeatable); without it, "
                        "prune removes what can be made again from the cache: expanded packages, parsed indices")
    p.add_argument("--dry-run", action="store_true", help="prune: say what would go, remove nothing")
    settingtable.add_options(p, "cache")
    p.set_defaults(run=cmd_cache)
    return parser


def _cache(s: settings.Settings) -> Cache:
    return Cache(s.cache_dir or default_root())


def _fetcher(s: settings.Settings, files: Bundle | None = None) -> Fetcher:
    """The network as the settings allow it; with FILES (a bundle) no network at all."""
    if files is not None:
        return Fetcher(offline=True, files=files)
    return Fetcher(offline=s.offline, logins=settings.mirror_logins(s),
                   snapshots=Snapshots(s.snapshot_url, s.snapshot))


def _make_lock(s: settings.Settings, fetcher: Fetcher, cache: Cache) -> lock.Lockfile:
    mirror, security_mirror = s.mirror, s.security_mirror
    if s.snapshot not in WHEN:  # resolve against the archive as the snapshot service keeps it then
        snapshots = Snapshots(s.snapshot_url, s.snapshot)
        security_mirror = snapshots.archive_url(security_mirror or security_mirror_for(mirror), s.snapshot)
        mirror = snapshots.archive_url(mirror, s.snapshot)
    source = Source(mirror=mirror, suite=s.suite, components=s.components, keyrings=s.keyrings,
                    check_valid_until=not s.no_check_valid_until)
    selection = locking.Selection(variant=s.variant, include=s.include, install_recommends=s.install_recommends,
                                   layers=s.layers, slim=s.slim)
    return locking.make_lock(source, selection, s.architectures or (native_arch(),), fetcher, cache,
                              updates=not s.no_updates, security_mirror=security_mirror)


def _open_bundle(s: settings.Settings, stack: ExitStack) -> Bundle | None:
    """The bundle --from names, open while STACK lasts; None without --from."""
    if s.bundle is None:
        return None
    if s.trust_lock_keyring:
        raise UsageError("--trust-lock-keyring with --from would trust keys that came with the bundle",
                         hint="give the keyrings to trust with --keyring FILE")
    from ocistrap import bundle

    return stack.enter_context(bundle.opened(s.bundle, transports.Context(tls_verify=s.tls_verify)))


def _lock_of(s: settings.Settings, path: Path | None, files: Bundle | None) -> lock.Lockfile | None:
    """The lockfile at PATH, else the bundle's; None when there is neither."""
    if path is not None:
        return settings.read_lockfile(path)
    return files.lockfile() if files is not None else None


def _settings(args: argparse.Namespace, command: str) -> settings.Settings:
    s = settings.resolve(args, command)
    settings.check_inputs(s)
    return s


def cmd_lock(args: argparse.Namespace) -> int:
    s = _settings(args, "lock")
    if s.suite is None:
        raise UsageError("name a suite (e.g. `ocistrap lock bookworm`) or a spec file with -f that sets `suite`")
    result = _make_lock(s, _fetcher(s), _cache(s))
    if s.embed_keyring:
        result = lock.embed_keyrings(result, s.keyrings)
    lock.write(result, s.lock)
    count = sum(len(a.packages) for a in result.architectures.values())
    print(f"{s.lock}: {count} packages locked ({result.digest()})")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from ocistrap import pipeline

    s = _settings(args, "fetch")
    with ExitStack() as stack:
        files = _open_bundle(s, stack)
        locked = _lock_of(s, args.lockfile, files)
        if locked is None:
            raise UsageError("name a lockfile (`ocistrap fetch FILE`) or a bundle with --from")
        keyrings = _keyrings(s, locked, stack, str(args.lockfile))
        fetched = pipeline.fetch(locked, keyrings, _fetcher(s, files), _cache(s))
        try:
            fetched.complete()
        finally:
            fetched.close()
    count = sum(len(p) for p in fetched.paths.values())
    print(f"{count} packages verified in {(s.cache_dir or default_root())}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    s = _settings(args, "cache")
    root = s.cache_dir or default_root()
    if args.action == "show" and (args.keep or args.dry_run):
        raise UsageError("--keep and --dry-run go with `ocistrap cache prune`")
    if not root.is_dir():
        print(f"{root}: no cache there")
        return 0
    if args.action == "show":
        entries = list(Cache(root).entries())
        print(f"{root}:")
        _print_sizes(entries)
        return 0
    cache = Cache(root, exclusive=True)
    keep = locking.needed_by([settings.read_lockfile(f) for f in args.keep], s.keyrings, cache) if args.keep else None
    gone = cache.prune(keep, dry_run=args.dry_run)
    print(f"{'would remove' if args.dry_run else 'removed'} from {root}:")
    _print_sizes(gone)
    return 0


def _print_sizes(entries: Sequence[Entry]) -> None:
    """One line per kind of ENTRIES: how many, how large; then the total."""
    kinds: dict[str, list[int]] = {}
    for entry in entries:
        count = kinds.setdefault(entry.kind, [0, 0])
        count[0] += 1
        count[1] += entry.size
    for kind, (count, size) in kinds.items():
        print(f"  {kind:<20} {count:>7} {_megabytes(size):>12}")
    print(f"  {'total':<20} {sum(c for c, _ in kinds.values()):>7} "
          f"{_megabytes(sum(s for _, s in kinds.values())):>12}")


def _keyrings(s: settings.Settings, locked: lock.Lockfile, stack: ExitStack, what: str) -> tuple[Path, ...]:
    """--keyring's files, or with --trust-lock-keyring the lock's own, for as long as STACK lasts.

    The lock is no trust root by default: whoever can edit it can edit the keys in it.
    """
    if not s.trust_lock_keyring:
        return s.keyrings
    directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ocistrap-keyrings-")))
    try:
        return lock.write_keyrings(locked, directory, what=what)
    except ArchiveError as e:
        raise UsageError(e.message, hint=e.hint) from None


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if not value:
        return None
    if not value.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds")
    return int(value)


def cmd_build(args: argparse.Namespace) -> int:
    s = _settings(args, "build")
    with ExitStack() as stack:
        return _build(s, stack, _open_bundle(s, stack))


def _build(s: settings.Settings, stack: ExitStack, files: Bundle | None) -> int:
    from ocistrap import pipeline, signing
    from ocistrap.oci.assemble import ImageOptions

    locked = _lock_of(s, s.lock, files)
    if locked is not None:
        settings.check_against_lock(s, locked, s.lock or Path(str(s.bundle)))
        architectures, layers = tuple(locked.architectures), locked.layers
    elif s.suite is None:
        raise UsageError("name a suite (e.g. `ocistrap build bookworm`), a lockfile with --lock "
                         "or a spec file with -f")
    else:
        architectures, layers = s.architectures or (native_arch(),), s.layers
        locked = None
    if s.trust_lock_keyring and locked is None:
        raise UsageError("--trust-lock-keyring needs --lock FILE: the keyrings it trusts come from that lockfile")
    transports.check(s.outputs + s.push, Shape(platforms=len(architectures), layers=len(layers) + 1))
    if s.sign is not None:
        signing.places(s.outputs + s.push)
    signer = signing.load_key(s.sign, s.passphrase_file)
    require_runnable(architectures)
    mode = buildmode.decide_mode(s.mode)  # once, before any download: a mode that cannot work fails here
    fetcher, cache = _fetcher(s, files), _cache(s)
    if locked is None:
        locked = _make_lock(s, fetcher, cache)
    if s.write_lock is not None:
        lock.write(locked, s.write_lock)
    outputs = s.outputs or (() if s.push else (parse_reference(f"oci:./ocistrap-images:{locked.suite}"),))
    options = ImageOptions(
        env=tuple(f"{name}={value}" for name, value in s.env.items()), cmd=s.cmd, entrypoint=s.entrypoint,
        workdir=s.workdir, user=s.user, labels=s.labels, annotations=s.annotations)
    request = pipeline.BuildRequest(outputs=outputs + s.push, compression=s.compression,
                                    staging=pipeline.Staging(mode, s.staging_dir), options=options,
                                    epoch=_epoch(), tls_verify=s.tls_verify, sbom=s.sbom, signer=signer)
    built = pipeline.build(locked, _keyrings(s, locked, stack, str(s.lock)), fetcher, cache, request)
    for ref in built.outputs:
        print(f"{ref} {built.digest}")
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from ocistrap import bundle

    s = _settings(args, "bundle")
    locked = settings.read_lockfile(args.lockfile)
    desc = bundle.make(locked, s.keyrings, _fetcher(s), _cache(s), args.destination,
                       transports.Context(tls_verify=s.tls_verify))
    print(f"{args.destination} {desc.digest}")
    return 0


def cmd_key_generate(args: argparse.Namespace) -> int:
    private, public = Path(f"{args.name}.key"), Path(f"{args.name}.pub")
    passphrase = keys.read_passphrase(args.passphrase_file, prompt=f"Passphrase for {private} (empty for none): ",
                                      confirm=True)
    keys.generate(private, public, passphrase)
    print(f"Private key written to {private}{' (unencrypted)' if not passphrase else ''}; "
          f"public key written to {public}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Copy an image from a layout or archive to any place (a registry, most often)."""
    from ocistrap import signing

    source, destination = parse_reference(args.source), parse_reference(args.destination)
    ctx = transports.Context(tls_verify=args.tls_verify)
    if args.sign is not None:
        signing.places([destination])
    signer = signing.load_key(args.sign, args.passphrase_file)
    with transports.open_image(source, ctx) as store:
        if store.layout is None:
            raise BadReference(f"{source}: push copies from an image layout, and cannot read images from "
                               f"{source.transport}: for that", hint="give an oci:DIR[:TAG] or oci-archive:FILE[:TAG] image")
        roots = store.roots()
        if len(roots) != 1:
            raise BadReference(f"{source} holds {len(roots)} images", hint="name one as oci:DIR:TAG")
        transports.write(store.layout, roots[0], destination, ctx)
        transports.attach(store.layout, signing.attestations(store, roots[0]), destination, ctx)
        if signer is not None:
            signing.sign_image(signer, destination, roots[0], ctx)
    print(f"{destination} {roots[0].digest}")
    return 0


def cmd_login(args: argparse.Namespace) -> int:
    from ocistrap.transports.registry import api

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"Password for {args.username}@{args.registry}: ")
    path = api.login(args.registry, args.username, password, tls_verify=args.tls_verify)
    print(f"Login succeeded; credentials stored in {path}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    from ocistrap.transports.registry import api

    path = api.logout(args.registry)
    print(f"Removed the credentials for {args.registry} from {path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ocistrap.verify import check_lock, verify

    if args.rebuild:
        return _verify_rebuild(args)
    _refuse_rebuild_options(args)
    locked = settings.read_lockfile(args.lock) if args.lock is not None else None
    key = keys.load_public(args.key) if args.key is not None else None
    ref, ctx = parse_reference(args.reference), transports.Context(tls_verify=args.tls_verify)
    report = verify(ref, ctx)
    print(report.summary())
    _print_signatures(ref, key, ctx)
    if locked is not None:
        arches = check_lock(report, locked, str(args.lock))
        print(f"{report.reference}: built from {args.lock} ({locked.digest()}) for {', '.join(arches)}")
    return 0


def _print_signatures(ref: transports.Reference, key: keys.PublicKey | None, ctx: transports.Context) -> None:
    """With --key, prove who signed REF (before a rebuild trusts the lock its attestation carries)."""
    from ocistrap.verify import check_signatures

    for line in check_signatures(ref, key, ctx) if key is not None else []:
        print(line)


def _refuse_rebuild_options(args: argparse.Namespace) -> None:
    """The options only a rebuild reads (--keyring, --cache-dir, ...) are refused without it, not ignored."""
    given = settings.resolve(args, "verify").given - {"tls_verify"}
    if given:
        rows = {row.key: row for row in settingtable.rows("verify")}
        flags = [rows[key].option_flags()[0] for key in sorted(given)]
        raise UsageError(f"{', '.join(flags)} only go with --rebuild")


def _verify_rebuild(args: argparse.Namespace) -> int:
    from ocistrap import rebuild
    from ocistrap.verify import verify

    s = _settings(args, "verify")
    ref = parse_reference(args.reference)
    ctx = transports.Context(tls_verify=s.tls_verify)
    locked = settings.read_lockfile(args.lock) if args.lock is not None else None
    key = keys.load_public(args.key) if args.key is not None else None
    print(verify(ref, ctx).summary())
    _print_signatures(ref, key, ctx)
    builder = rebuild.Builder(keyrings=s.keyrings, fetcher=_fetcher(s), cache=_cache(s), mode=s.mode,
                              staging_dir=s.staging_dir)
    outcome = rebuild.rebuild(ref, locked, str(args.lock) if args.lock else None, builder, ctx)
    print(outcome.report())
    return 0 if outcome.reproduced else 1


def cmd_sbom(args: argparse.Namespace) -> int:
    from ocistrap import referrers

    ref = parse_reference(args.reference)
    ctx = transports.Context(tls_verify=args.tls_verify)
    sys.stdout.buffer.write(referrers.read(ref, platform_arch=args.arch, ctx=ctx))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from ocistrap import combine, signing

    destination = settingtable.registry_reference(args.destination)
    signer = signing.load_key(args.sign, args.passphrase_file)
    desc = combine.push_index(destination, [settingtable.registry_reference(i) for i in args.images], tls_verify=args.tls_verify)
    if signer is not None:
        signing.sign_image(signer, destination, desc, transports.Context(tls_verify=args.tls_verify))
    print(f"{destination} {desc.digest}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.apparmor_profile is not None:
        return write_apparmor_profile(args.apparmor_profile)
    from ocistrap import doctor

    results = doctor.checks(args.arch or [native_arch()], mode=args.mode)
    print(doctor.format_checks(results))
    return 0 if all(c.ok for c in results) else 1


def write_apparmor_profile(path: Path) -> int:
    """The profile for the interpreter that runs ocistrap (it makes the namespaces), and how to load it."""
    executable = os.path.realpath(sys.executable)
    try:
        path.write_text(detect.apparmor_profile(executable))
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from e
    print(f"wrote {path}: an AppArmor profile that lets {executable} make user namespaces; load it with "
          f"`sudo install -m 644 {path} /etc/apparmor.d/ocistrap && sudo apparmor_parser -r /etc/apparmor.d/ocistrap`")
    return 0


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


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_HINT = ("free space on that file system or choose another directory (--cache-dir, -o, --staging-dir, "
                 "TMPDIR), then run the same command again: the cache keeps only what was verified")


def _no_space(error: BaseException) -> bool:
    """Whether ERROR, or what caused it, is a full disk or quota."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _message(error: OcistrapError) -> str:
    if error.hint is None and _no_space(error):
        return f"{error.message} ({NO_SPACE_HINT})"
    return str(error)


def _run(args: argparse.Namespace, out: log.Log) -> int:
    try:
        return args.run(args)
    except OcistrapError as e:
        if args.debug:
            traceback.print_exc()
        out.error(f"error: {_message(e)}")
        return e.exit_code
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except Exception as e:  # a bug: say so in one line unless --debug; a full disk is no bug
        if args.debug:
            traceback.print_exc()
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            where = f" writing {e.filename}" if e.filename else ""
            out.error(f"error: no space left on device{where} ({NO_SPACE_HINT})")
            return 1
        if not args.debug:
            out.error(f"internal error: {type(e).__name__}: {e} (this is a bug; run with --debug for the traceback)")
        return 70
