import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from registry_fixture import auth_registry, fake_registry, registry  # noqa: F401  (docker-registry and fake registries)
from repo_factory import *  # noqa: F401,F403  (signed test repository and hostile mirror fixtures)
from tmp_hygiene import remove_tree, stale_runs, temproot

from ocistrap.transports.registry import api


def pytest_configure(config: pytest.Config) -> None:
    """Before the session's directory is made: earlier sessions' directories go, but the last
    one (what a failure left to read). Once, in the controlling process, not in each worker."""
    if hasattr(config, "workerinput") or config.option.basetemp:
        return
    for stale in stale_runs(temproot(), keep=1):
        remove_tree(stale)


@pytest.fixture(scope="session", autouse=True)
def cache_key_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The cache's HMAC key (ocistrap.cache.default_key_file) in a directory of this session,
    not in the account's own state: one key for every test and every command they run."""
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("state"))


@pytest.fixture(autouse=True)
def working_directory_kept() -> Iterator[None]:
    """A test that leaves the process in another directory breaks every later test of its
    worker (a passing test's tmp_path is removed): it fails, and the directory is put back."""
    before = os.getcwd()
    yield
    try:
        after: str | None = os.getcwd()
    except FileNotFoundError:
        after = None
    if after != before:
        os.chdir(before)
        pytest.fail(f"the test left the working directory at {after or 'a removed directory'}: "
                    "use monkeypatch.chdir")


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No credentials or pushed-blob records of the machine; fast registry retries."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / "cache"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setattr(api, "RETRY", api.RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Builds and namespaces prove nothing as root: refuse to run those tests so; but those of
    root's own modes (marker root) run only as root."""
    as_root = os.geteuid() == 0
    unprivileged = "builds and user namespaces must be tested as an unprivileged account: run `make test` or `make unit`"
    root_only = "tests root's own build modes: run as root with `make test-root` (part of `make test`)"
    for item in items:
        if "root" in item.keywords:
            if not as_root:
                item.add_marker(pytest.mark.skip(reason=root_only))
        elif as_root and ("e2e" in item.keywords or "userns" in item.keywords):
            item.add_marker(pytest.mark.skip(reason=unprivileged))
