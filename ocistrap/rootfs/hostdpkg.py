"""Foreign architectures: unpack with the host's dpkg, configure with the target's.

Under qemu-user every instruction of the target's own dpkg is emulated: for
bookworm arm64 minbase its unpacking, hashing and database work took about 40
of the 80 s that `dpkg --install` needed; the maintainer scripts took the rest.
The host's dpkg does that work natively with `--root=ROOT`, and still chroots
into ROOT to run the preinst scripts, so target code runs only under emulation
as before. The target's dpkg then configures: the configuration order,
trigger processing and postinst runs are what the target's dpkg decides (the
host's would take arm64 for a foreign architecture of an amd64 system and
order Architecture: all packages differently).

The host's dpkg is used only if it is of the target's release series (1.21.x
with 1.21.y): within a series the database it writes and the files it unpacks
are the target dpkg's own (tests/test_e2e_foreign.py compares the trees);
otherwise the caller keeps the emulated dpkg. The host's dpkg runs in a view
of its own (spawn.host_view_run): the tree at /target, the target's /etc and
/root in place of the host's, so it reads the target's dpkg configuration,
~/.dpkg.cfg and user and group names exactly as a dpkg chrooted into ROOT
would, and of the host only its system directories, read-only. dpkg follows
the tree's symlinks (a package's `usr/share -> /home/you` included) wherever
they lead; there they lead to nothing of the caller's.
"""

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from ocistrap.errors import BuildError
from ocistrap.rootfs import inroot, spawn

VERSION_LINE = re.compile(r"\bversion (\S+) \((\S+)\)")
STATUS = "var/lib/dpkg/status"
STATUS_BACKUP = "var/lib/dpkg/status-old"


def parse_version_output(text: str) -> tuple[str, str] | None:
    """(version, architecture) from `dpkg --version`'s first line, or None."""
    match = VERSION_LINE.search(text.splitlines()[0] if text else "")
    return (match.group(1), match.group(2)) if match else None


def series(version: str) -> tuple[int, int] | None:
    """The release series of a dpkg version (1:1.21.22+b1 -> (1, 21)), or None if it has none."""
    upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
    match = re.match(r"(\d+)\.(\d+)", upstream)
    return (int(match.group(1)), int(match.group(2))) if match else None


def refusal(host: tuple[str, str] | None, target_arch: str, target_version: str | None) -> str | None:
    """Why the host's dpkg must not unpack for TARGET_ARCH's dpkg TARGET_VERSION (None: it may)."""
    if host is None:
        return "the host's dpkg is missing or does not run with the target's /etc and /root in view"
    host_version, host_arch = host
    if host_arch == target_arch:
        return f"{target_arch} is the host's own architecture"
    if target_version is None:
        return "the target's dpkg version is unknown"
    if series(host_version) is None or series(host_version) != series(target_version):
        return (f"the host's dpkg {host_version} is not of the target's release series "
                f"(dpkg {target_version})")
    return None


def installed_version(status: str, package: str) -> str | None:
    """PACKAGE's Version in the text of a dpkg status file, or None."""
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines()
                      if ": " in line and not line.startswith(" "))
        if fields.get("Package") == package:
            return fields.get("Version")
    return None


def target_version(root: Path, dpkg_deb: str | None) -> str | None:
    """The version of the target's dpkg: that of its .deb DPKG_DEB if it is being installed, else
    the one ROOT's database records."""
    if dpkg_deb is not None:
        done = subprocess.run(["dpkg-deb", "--field", dpkg_deb, "Version"], capture_output=True,
                              text=True, check=False)
        return done.stdout.strip() or None if done.returncode == 0 else None
    try:
        with inroot.Tree(root) as tree:
            return installed_version(tree.read_text(STATUS), "dpkg")
    except FileNotFoundError:
        return None


def probe(root: Path, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The host's dpkg's (version, architecture) as it runs in the view unpack() gives it, or
    None if it or its dpkg-deb are missing or cannot start there (their libraries are then found
    without the host's ld.so.cache), or the view cannot be set up."""
    tools = [shutil.which("dpkg"), shutil.which("dpkg-deb")]
    if None in tools:
        return None
    try:
        done = [spawn.host_view_run(root, [str(tool), "--version"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL) for tool in tools]
    except BuildError:
        return None
    return parse_version_output(done[0].stdout.decode()) if all(d.returncode == 0 for d in done) else None


def unpack(root: Path, paths: Sequence[str], env: Mapping[str, str]) -> int:
    """`dpkg --unpack` of the .debs at PATHS (absolute inside ROOT) by the host's dpkg into ROOT;
    its exit status. Its log goes where the target's dpkg writes its own.

    dpkg --root follows every symlink on the way to a path it writes, the packages' too
    (`usr/share -> /home/you`), and runs preinst scripts chrooted into the root with all of
    root's capabilities; so it runs in spawn.host_view_run's view, where nothing of the
    caller's is to be found."""
    dpkg = shutil.which("dpkg") or "dpkg"
    target = spawn.VIEW_TARGET
    argv = [dpkg, f"--root={target}", f"--log={target}/var/log/dpkg.log", "--unpack", "--force-depends",
            "--force-unsafe-io", *(f"{target}/{p.lstrip('/')}" for p in paths)]
    return spawn.host_view_run(root, argv, env=env).returncode


# ---- chrootless mode: the host's dpkg installs into the tree from outside ----

DPKG_CONFIG = (Path("/etc/dpkg/dpkg.cfg"), Path("/etc/dpkg/dpkg.cfg.d"))
PATH_FILTERS = ("path-exclude", "path-include")


def chrootless_options(root: Path) -> list[str]:
    """The host's dpkg's options for installing into ROOT as the caller, as `mmdebstrap
    --mode=chrootless` gives them: no root needed, maintainer scripts run here with DPKG_ROOT."""
    return ["--force-not-root", "--force-script-chrootless", f"--root={root}", f"--log={root}/var/log/dpkg.log"]


def config_filters(texts: Mapping[str, str]) -> list[str]:
    """The files among TEXTS (path -> text of the host's dpkg configuration) that filter paths."""
    return [path for path, text in texts.items()
            if any(line.split(maxsplit=1)[0] in PATH_FILTERS for line in text.splitlines() if line.strip())]


def _config_texts() -> dict[str, str]:
    files = [DPKG_CONFIG[0], *(sorted(DPKG_CONFIG[1].iterdir()) if DPKG_CONFIG[1].is_dir() else [])]
    texts = {}
    for path in files:
        try:
            texts[str(path)] = path.read_text(errors="replace")
        except OSError:
            continue
    return texts


MERGED = ("bin", "sbin", "lib")
BIARCH = ("lib32", "libx32", "libo32")


NOT_AS_ROOT = ("it does not run as root: maintainer scripts that ignore DPKG_ROOT (bookworm's usrmerge) would "
               "change this system; build as an unprivileged user")


def host_layout_problem(root: Path = Path("/"), uid: int | None = None) -> str | None:
    """Why bookworm's usrmerge postinst, which ignores DPKG_ROOT and inspects the host's /, would
    act on this host (None: it finds nothing to do): it converts a host whose /bin, /sbin or /lib
    is not merged, and removes /lib32, /libx32 or /libo32 when the tree's packages do not own
    them. As root it could; so chrootless mode refuses root, too (UID: the caller's)."""
    if (os.geteuid() if uid is None else uid) == 0:
        return NOT_AS_ROOT
    unmerged = [f"/{d}" for d in MERGED if (root / d).exists() and (root / d).resolve() != root / "usr" / d]
    if unmerged:
        return (f"this host's {', '.join(unmerged)} are not merged into /usr, and usrmerge's postinst (which "
                "ignores DPKG_ROOT) would try to convert the host")
    biarch = [f"/{d}" for d in BIARCH if (root / d).exists() or (root / d).is_symlink()]
    if biarch:
        return (f"this host has {', '.join(biarch)}, which usrmerge's postinst (it ignores DPKG_ROOT) would try "
                "to remove from the host")
    return None


def chrootless_problem() -> str | None:
    """Why the host's dpkg cannot install a tree from outside (None: it can): it is missing,
    too old to run maintainer scripts without a chroot, or its configuration, which dpkg reads
    before --root (Debian bug #808203), would leave files out of the tree."""
    dpkg = shutil.which("dpkg")
    if dpkg is None or shutil.which("dpkg-deb") is None:
        return "the host has no dpkg (chrootless mode installs with the host's dpkg: `apt install dpkg`)"
    done = subprocess.run([dpkg, "--force-help"], capture_output=True, text=True, check=False)
    if "script-chrootless" not in done.stdout:
        version = parse_version_output(subprocess.run([dpkg, "--version"], capture_output=True, text=True,
                                                      check=False).stdout)
        return (f"the host's dpkg {version[0] if version else '(unknown version)'} cannot run maintainer scripts "
                "without a chroot (--force-script-chrootless needs dpkg 1.18.5 or later)")
    layout = host_layout_problem()
    if layout:
        return layout
    filtering = config_filters(_config_texts())
    if filtering:
        return (f"the host's dpkg configuration filters paths ({', '.join(filtering)}), which dpkg applies to the "
                "tree too: remove its path-exclude lines to build in chrootless mode")
    return None


OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))


def host_release_names(os_release: str) -> set[str]:
    """The Debian release names of a host, from its os-release text: its VERSION_CODENAME, and
    sid for a testing host (their base-files are one, PRETTY_NAME "... forky/sid")."""
    fields = dict(line.split("=", 1) for line in os_release.splitlines() if "=" in line)
    values = {key: value.strip().strip("\"'") for key, value in fields.items()}
    names = {values["VERSION_CODENAME"]} if values.get("VERSION_CODENAME") else set()
    if values.get("PRETTY_NAME", "").endswith("/sid"):
        names.add("sid")
    return names


def release_problem(os_release: str | None, target: Sequence[str], shown: str) -> str | None:
    """Why chrootless mode would not build the tree the other modes build of the release SHOWN,
    which goes by the names TARGET, on a host whose os-release text is OS_RELEASE
    (None: none found); None when the host is that release. The maintainer scripts run the
    host's tools: tried here, a bookworm host's trixie tree differs from the namespace modes' in
    /etc/ld.so.cache (the host's ldconfig), /etc/shells (its add-shell) and the PAM
    configuration (its pam-auth-update)."""
    host = host_release_names(os_release) if os_release is not None else set()
    if host & set(target):
        return None
    what = (f"this host's tools, {' and '.join(sorted(host))}'s," if host
            else "the tools of this host, whose release is unknown,")
    return (f"chrootless mode runs the maintainer scripts with {what} so a {shown} tree would not be the one "
            f"the other modes make (ld.so.cache, /etc/shells and the PAM configuration differ)")


def read_os_release() -> str | None:
    """This host's os-release text (None if it has none)."""
    for path in OS_RELEASE:
        try:
            return path.read_text(errors="replace")
        except OSError:
            continue
    return None
