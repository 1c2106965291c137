"""Bad command lines and files: one `ocistrap: error:` line naming the problem, never a traceback.

Run in-process against a small signed suite on a local mirror (no network).
Usage errors exit 2: a wrong option, reference or spec file, and an input file
the user names (lockfile, keyring, spec) that is missing, unreadable or not what
it should be; argparse's own refusals (usage line + error) too. Everything
else exits 1: an archive that lacks the suite or package, a registry that
cannot be reached, a layout that is not there to verify.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from image_helpers import build_image
from lockfetch_support import Archive, archive, fast_fetcher, template  # noqa: F401  (fixtures)
from registry_fixture import free_port

from ocistrap.cli import main
from ocistrap.oci import ocilayout
from ocistrap.transports.registry import api


@dataclass(frozen=True)
class Case:
    """ARGV(archive, tmp) must fail with exit RC and a last stderr line holding WORDS."""

    argv: Callable[[Archive, Path], list[str]]
    rc: int
    words: tuple[str, ...]
    argparse: bool = False


def build(*extra: str) -> Callable[[Archive, Path], list[str]]:
    return lambda a, tmp: ["build", "--lock", str(a.lockfile), *a.common(), *extra]


def lock(suite: str, *extra: str, keyring: str | None = None) -> Callable[[Archive, Path], list[str]]:
    """`ocistrap lock SUITE` against the local mirror, with KEYRING (under tmp) instead of the good one."""
    return lambda a, tmp: ["lock", suite, "--mirror", a.mirror.url, *a.common(keyring and tmp / keyring),
                           "--arch", "amd64", "--variant", "essential", "-o", str(tmp / "out.lock"), *extra]


def spec(text: str) -> Callable[[Archive, Path], list[str]]:
    def argv(a: Archive, tmp: Path) -> list[str]:
        (tmp / "spec.toml").write_text(text)
        return ["lock", "-f", str(tmp / "spec.toml"), *a.common(), "-o", str(tmp / "out.lock")]
    return argv


def spec_with_lock(text: str) -> Callable[[Archive, Path], list[str]]:
    """`ocistrap build -f SPEC` of a spec naming the lockfile and holding TEXT."""
    def argv(a: Archive, tmp: Path) -> list[str]:
        (tmp / "spec.toml").write_text(f'lock = "{a.lockfile}"\n{text}\n')
        return ["build", "-f", str(tmp / "spec.toml"), *a.common()]
    return argv


def directory_keyring(a: Archive, tmp: Path) -> list[str]:
    (tmp / "keys.d").mkdir()
    return lock("unstable", keyring="keys.d")(a, tmp)


def garbage_keyring(a: Archive, tmp: Path) -> list[str]:
    (tmp / "garbage.gpg").write_bytes(b"this is no keyring\n")
    return lock("unstable", keyring="garbage.gpg")(a, tmp)


def empty_keyring(a: Archive, tmp: Path) -> list[str]:
    (tmp / "empty.gpg").touch()
    return ["build", "--lock", str(a.lockfile), *a.common(tmp / "empty.gpg")]


def unreadable_keyring(a: Archive, tmp: Path) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("root reads a file of mode 000 all the same; run as a user (make test does)")
    keyring = tmp / "locked.gpg"
    keyring.write_bytes(a.keyring.read_bytes())
    keyring.chmod(0)
    return ["fetch", str(a.lockfile), *a.common(keyring)]


def garbage_lockfile(a: Archive, tmp: Path) -> list[str]:
    (tmp / "notes.lock").write_text("these are my notes\n")
    return ["build", "--lock", str(tmp / "notes.lock"), *a.common()]


def unreachable_build(*extra: str) -> Callable[[Archive, Path], list[str]]:
    """`ocistrap build` from a mirror that cannot be reached: refused before any download, or
    the last line would name the mirror."""
    return lambda a, tmp: ["build", "unstable", "--mirror", f"http://127.0.0.1:{free_port()}/debian", *a.common(),
                           "--variant", "essential", *extra]


def push_to_an_unwritable_tar(a: Archive, tmp: Path) -> list[str]:
    """`-o tar:` and `push` write through the same dispatch; a file where a directory should be
    is unwritable even for root."""
    ocilayout.write(tmp / "image", build_image(tmp / "image"), tmp / "layout", "x")
    (tmp / "file").write_text("")
    return ["push", f"oci:{tmp / 'layout'}:x", f"tar:{tmp / 'file' / 'x.tar'}"]


CASES = {
    "unknown transport": Case(build("-o", "foo:bar"), 2, ("foo:bar", "unknown transport", "use one of")),
    "malformed reference": Case(build("--push", "UPPER/Case:tag"), 2, ("UPPER/Case:tag", "names are lowercase")),
    "malformed layout tag": Case(build("-o", "oci:out:bad tag"), 2, ("bad tag", "not a valid image-layout tag")),
    "output to a transport that cannot be written": Case(build("-o", "tar:"), 2, ("tar:", "missing")),
    "push of an unknown transport": Case(lambda a, tmp: ["push", "foo:bar", "127.0.0.1:1/x:y"], 2,
                                         ("foo:bar", "unknown transport")),
    "tar: output of a layered build": Case(
        unreachable_build("--arch", "amd64", "--layer", "extra=hello", "-o", "tar:rootfs.tar"), 2,
        ("tar:rootfs.tar", "one platform and one layer", "2 layer(s)", "drop --layer")),
    "docker-archive: output of two architectures": Case(
        unreachable_build("--arch", "amd64,arm64", "-o", "docker-archive:d.tar"), 2,
        ("docker-archive:d.tar", "holds one platform", "makes 2")),
    "tar: output that cannot be written": Case(push_to_an_unwritable_tar, 1, ("cannot write tar:", "file/x.tar")),
    "push from a registry reference": Case(lambda a, tmp: ["push", "docker://127.0.0.1:1/x:y", "127.0.0.1:1/x:z"],
                                           2, ("cannot read images from docker", "oci:DIR")),
    "missing lockfile": Case(lambda a, tmp: ["build", "--lock", str(tmp / "no.lock"), *a.common()],
                             2, ("no.lock", "No such file", "ocistrap lock")),
    "missing lockfile (fetch)": Case(lambda a, tmp: ["fetch", str(tmp / "no.lock"), *a.common()],
                                     2, ("no.lock", "No such file", "ocistrap lock")),
    "missing lockfile (verify --lock)": Case(lambda a, tmp: ["verify", f"oci:{tmp}:x", "--lock", str(tmp / "no.lock")],
                                             2, ("no.lock", "No such file")),
    "lockfile that is no lockfile": Case(garbage_lockfile, 2, ("notes.lock", "not valid JSON", "ocistrap lock")),
    "missing keyring": Case(lock("unstable", keyring="none.gpg"), 2, ("none.gpg", "cannot be read", "--keyring")),
    "keyring that is a directory": Case(directory_keyring, 2, ("keys.d", "cannot be read")),
    "unreadable keyring": Case(unreadable_keyring, 2, ("locked.gpg", "Permission denied", "--keyring")),
    "empty keyring": Case(empty_keyring, 2, ("empty.gpg", "is empty")),
    "garbage keyring": Case(garbage_keyring, 2, ("garbage.gpg", "neither a binary keyring nor an armored key")),
    "unknown suite": Case(lock("nosuch"), 1, ("nosuch",)),
    "unknown package": Case(lock("unstable", "--include", "nosuchpackage"), 1, ("nosuchpackage",)),
    "spec that is no TOML": Case(spec("suite = [unclosed\n"), 2, ("spec.toml", "not valid TOML")),
    "spec with an unknown key": Case(spec('suite = "unstable"\nsuiet = "x"\n'), 2, ("spec.toml", "suiet",
                                                                                   "did you mean")),
    "spec with a wrong type": Case(spec("suite = 3\n"), 2, ("spec.toml", "suite", "expected a string")),
    "spec with a malformed output": Case(spec('suite = "unstable"\noutputs = ["foo:bar"]\n'), 2,
                                         ("spec.toml", "outputs", "unknown transport")),
    "architecture other than the lock's": Case(build("--arch", "arm64"), 2,
                                               ("architectures arm64 (--arch)", "locks architectures amd64")),
    "suite other than the lock's": Case(lambda a, tmp: ["build", "bookworm", *build()(a, tmp)[1:]], 2,
                                        ("suite bookworm disagrees", "locks suite unstable")),
    "variant other than the lock's": Case(build("--variant", "minbase"), 2, ("variant minbase", "locks variant essential")),
    "include beside a lock without it": Case(build("--include", "hello"), 2, ("include hello", "locks include none")),
    "mirror other than the lock's": Case(build("--mirror", "http://elsewhere.example/debian"), 2,
                                         ("mirror http://elsewhere.example/debian", "locks mirror http://127.0.0.1")),
    "spec naming a lock and another suite": Case(spec_with_lock('suite = "sid"'), 2,
                                                 ("suite sid", "locks suite unstable", "leave it out")),
    "missing auth file": Case(lock("unstable", "--auth-file", "/nonexistent/auth.conf"), 2,
                              ("cannot read the auth file /nonexistent/auth.conf",)),
    "missing spec": Case(lambda a, tmp: ["lock", "-f", str(tmp / "none.toml")], 2, ("none.toml", "No such file")),
    "verify of an unknown transport": Case(lambda a, tmp: ["verify", "foo:bar"], 2, ("foo:bar",)),
    "verify of a missing layout": Case(lambda a, tmp: ["verify", f"oci:{tmp / 'none'}:x"], 1, ("none",)),
}


@pytest.fixture
def locked(archive: Archive) -> Archive:
    rc, _, err = archive.lock()
    assert rc == 0, err
    return archive


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_naming_it(name: str, locked: Archive, tmp_path: Path) -> None:
    case = CASES[name]
    rc, _, err = run(locked, case.argv(locked, tmp_path))
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    lines = err.splitlines()
    if case.argparse:
        assert lines[-1].startswith("ocistrap"), err
    else:
        assert len(lines) == 1, err
        assert lines[0].startswith("ocistrap: error: "), err
    for word in case.words:
        assert word in lines[-1], f"{word!r} not in {lines[-1]!r}"
    assert rc == case.rc, err


def test_debug_shows_the_traceback(locked: Archive, tmp_path: Path) -> None:
    rc, _, err = run(locked, ["--debug", *CASES["unknown suite"].argv(locked, tmp_path)])
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().splitlines()[-1].startswith("ocistrap: error: ")


def test_global_options_work_after_the_command_too(locked: Archive, tmp_path: Path) -> None:
    """As podman takes them: `ocistrap lock ... --quiet` is `ocistrap --quiet lock ...`."""
    def direct(*argv: str) -> tuple[int, str]:
        locked.capsys.readouterr()
        rc = main(list(argv))
        return rc, locked.capsys.readouterr().err

    failing, working = CASES["unknown suite"].argv(locked, tmp_path), lock("unstable")(locked, tmp_path)
    rc, err = direct(*failing, "--debug")
    assert rc == 1 and "Traceback (most recent call last)" in err
    rc, err = direct(*working, "--log-format", "json", "--timings")
    assert rc == 0 and all(line.startswith("{") for line in err.splitlines()), err
    assert '"verifying unstable' in err and '"total"' in err.splitlines()[-1], err
    rc, err = direct(*working, "--quiet")
    assert rc == 0 and err == ""
    rc, err = direct("--log-format", "json", *working, "-q")
    assert rc == 0 and err == ""


def test_argparse_refusals_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["build", "--compression", "lzma"])
    assert exited.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def run(archive: Archive, argv: list[str]) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr); argparse's SystemExit counts as an exit code."""
    try:
        return archive.run(*argv)
    except SystemExit as exited:
        out, err = archive.capsys.readouterr()
        return int(exited.code or 0), out, err



def test_a_registry_that_cannot_be_reached_is_no_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A failed push exits 1 (every TransportError once exited 2, usage or not)."""
    monkeypatch.setattr(api, "RETRY", api.RetryPolicy(attempts=2, base_delay=0.01))
    ocilayout.write(tmp_path / "image", build_image(tmp_path / "image"), tmp_path / "layout", "x")
    rc = main(["-q", "push", f"oci:{tmp_path / 'layout'}:x", f"127.0.0.1:{free_port()}/x:y"])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert len(err.splitlines()) == 1 and "connection failed" in err and "gave up after 2 attempts" in err, err
