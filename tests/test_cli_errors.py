"""Bad command lines and files: one `ocistrap: error:` line naming the problem, never a traceback.

Run in-process against a small signed suite on a local mirror (no network).
Usage errors (a wrong option, reference or spec file) exit 2, argparse's own
refusals (usage line + error) too; a named file that is missing or unreadable,
or an archive that lacks the suite or package, exits 1.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from lockfetch_support import archive, fast_fetcher, template  # noqa: F401  (fixtures)
from lockfetch_support import Archive

from ocistrap.cli import main


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


def directory_keyring(a: Archive, tmp: Path) -> list[str]:
    (tmp / "keys.d").mkdir()
    return lock("unstable", keyring="keys.d")(a, tmp)


def garbage_keyring(a: Archive, tmp: Path) -> list[str]:
    (tmp / "garbage.gpg").write_bytes(b"this is no keyring\n")
    return lock("unstable", keyring="garbage.gpg")(a, tmp)


CASES = {
    "unknown transport": Case(build("-o", "foo:bar"), 2, ("foo:bar",)),
    "malformed reference": Case(build("--push", "UPPER/Case:tag"), 2, ("UPPER/Case:tag",)),
    "missing lockfile": Case(lambda a, tmp: ["build", "--lock", str(tmp / "no.lock"), *a.common()],
                             1, ("no.lock", "No such file")),
    "missing lockfile (fetch)": Case(lambda a, tmp: ["fetch", str(tmp / "no.lock"), *a.common()],
                                     1, ("no.lock", "No such file")),
    "missing keyring": Case(lock("unstable", keyring="none.gpg"), 1, ("none.gpg", "cannot be read")),
    "keyring that is a directory": Case(directory_keyring, 1, ("keys.d", "cannot be read")),
    "garbage keyring": Case(garbage_keyring, 1, ("garbage.gpg", "neither a binary keyring nor an armored key")),
    "unknown suite": Case(lock("nosuch"), 1, ("nosuch",)),
    "unknown package": Case(lock("unstable", "--include", "nosuchpackage"), 1, ("nosuchpackage",)),
    "spec that is no TOML": Case(spec("suite = [unclosed\n"), 2, ("spec.toml",)),
    "spec with an unknown key": Case(spec('suite = "unstable"\nsuiet = "x"\n'), 2, ("spec.toml", "suiet")),
    "spec with a wrong type": Case(spec("suite = 3\n"), 2, ("spec.toml", "suite")),
    "missing spec": Case(lambda a, tmp: ["lock", "-f", str(tmp / "none.toml")], 2, ("none.toml",)),
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
