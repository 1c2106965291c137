"""Shared ground for the lock/fetch failure tests: a small signed suite, CLI runs, cache checks.

The suite ``unstable`` (no -updates/-security companions) holds an essential
set (Essential: yes, Priority: required), a dependency chain through a virtual
package, a large .deb for resume tests, an optional package and one with an
unsatisfiable dependency. It is built once per session and copied per test, so
each test may break its own copy freely.
"""

import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from repo_factory import Mirror, RepoBuilder, SigningKey

from ocistrap.cli import main
from ocistrap.debian import fetch as fetch_module
from ocistrap.debian.cache import Cache

__all__ = ["SUITE", "Archive", "archive", "fast_fetcher", "template", "sha256_file",
           "assert_one_error", "assert_cache_verified", "assert_partials_honest"]

SUITE = "unstable"
BIG = os.urandom(1_600_000)


def _build(builder: RepoBuilder) -> None:
    builder.add_deb("libc6", "2.0-1", priority="required", multi_arch="same")
    builder.add_deb("base-files", "13", essential=True, priority="required")
    builder.add_deb("dash", "0.5-1", essential=True, priority="required", pre_depends="libc6 (>= 2.0)")
    builder.add_deb("coreutils", "9.1-1", essential=True, priority="required",
                    pre_depends="libc6", depends="awk")
    builder.add_deb("mawk", "1.3-1", priority="required", provides="awk", depends="libc6")
    builder.add_deb("bigdata", "1.0", essential=True, priority="required",
                    files={"usr/share/bigdata/blob": BIG})
    builder.add_deb("libhello1", "1.0", depends="libc6")
    builder.add_deb("hello", "2.10-3", depends="libhello1 (>= 1.0)")
    builder.add_deb("broken", "1.0", depends="missing-lib (>= 3)")
    builder.write(SUITE)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory, signing_key: SigningKey) -> RepoBuilder:
    """The suite, built once; tests copy it."""
    builder = RepoBuilder(tmp_path_factory.mktemp("template") / "repo", signing_key)
    _build(builder)
    return builder


@pytest.fixture
def fast_fetcher(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Fetcher defaults scaled for tests: short timeout, tiny backoff (the CLI builds its own)."""
    defaults = dict(fetch_module.Fetcher.__init__.__kwdefaults__)
    defaults.update(timeout=1.0, backoff=0.01)
    monkeypatch.setattr(fetch_module.Fetcher.__init__, "__kwdefaults__", defaults)
    return defaults


@dataclass
class Archive:
    """One test's copy of the suite, its mirror and cache, and the CLI aimed at them."""

    repo: RepoBuilder
    mirror: Mirror
    keyring: Path
    cache: Path
    lockfile: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *argv: str) -> tuple[int, str, str]:
        """Run the CLI in-process and return (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        rc = main(["-q", *argv])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def common(self, keyring: Path | None = None) -> list[str]:
        return ["--keyring", str(keyring or self.keyring), "--cache-dir", str(self.cache)]

    def lock(self, *extra: str, suite: str = SUITE, output: Path | None = None) -> tuple[int, str, str]:
        return self.run("lock", suite, "--mirror", self.mirror.url, *self.common(), "--arch", "amd64",
                        "--variant", "essential", "-o", str(output or self.lockfile), *extra)

    def fetch(self, *extra: str, lockfile: Path | None = None) -> tuple[int, str, str]:
        return self.run("fetch", str(lockfile or self.lockfile), *self.common(), *extra)

    def deb(self, package: str) -> str:
        """The pool path of PACKAGE's .deb, relative to the mirror root."""
        return next(d.filename for d in self.repo.debs if d.filename.split("/")[-1].startswith(f"{package}_"))

    def dist(self, path: str) -> str:
        return f"dists/{SUITE}/{path}"

    def original(self, path: str) -> bytes:
        return (self.repo.root / path).read_bytes()

    def honest_again(self) -> None:
        """Stop every tampering: the mirror now serves the signed bytes."""
        self.mirror.tampers.clear()


@pytest.fixture
def archive(template: RepoBuilder, repo: RepoBuilder, http_mirror: Mirror, signing_key: SigningKey,
            tmp_path: Path, capsys: pytest.CaptureFixture[str], fast_fetcher: dict[str, object]) -> Iterator[Archive]:
    shutil.copytree(template.root, repo.root, dirs_exist_ok=True)
    repo.debs = list(template.debs)
    yield Archive(repo=repo, mirror=http_mirror, keyring=signing_key.keyring, cache=tmp_path / "cache",
                  lockfile=tmp_path / "ocistrap.debian.lock", capsys=capsys)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_error(rc: int, err: str, *words: str) -> str:
    """A failed command: non-zero exit, and stderr exactly one ``ocistrap: error:`` line naming WORDS."""
    assert rc != 0, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("ocistrap: error: "), line
    assert "Traceback" not in err
    for word in words:
        assert word in line, f"{word!r} not in {line!r}"
    return line


def assert_cache_verified(cache: Path) -> None:
    """Every blob in the store hashes to its name: nothing unverified was committed."""
    blobs = cache / "blobs" / "sha256"
    if not blobs.exists():
        return
    for blob in blobs.iterdir():
        assert sha256_file(blob) == blob.name, f"unverified blob {blob.name} in the cache"
    expanded = cache / "derived" / "expanded"
    for path in expanded.iterdir() if expanded.exists() else ():
        if not path.name.endswith(".tag"):
            verified = Cache(cache).open_derived("expanded", path.name)
            assert verified is not None, f"unverified expansion {path.name}"
            verified.close()


def assert_partials_honest(cache: Path, mirror_root: Path) -> None:
    """Every partial download is a prefix of the honest file with its name: resuming it is safe."""
    partial = cache / "partial"
    if not partial.exists():
        return
    honest = {sha256_file(p): p.read_bytes() for p in mirror_root.rglob("*.deb")}
    for path in partial.iterdir():
        assert not path.name.startswith(".tmp-"), f"a temp file was left behind: {path}"
        if path.name.startswith("build-") and path.is_dir():
            continue  # a killed build's own scratch directory, swept by the next build
        data = path.read_bytes()
        assert path.name in honest, f"partial/{path.name} is no file of the archive"
        assert honest[path.name].startswith(data), f"partial/{path.name} is not a prefix of the signed file"
