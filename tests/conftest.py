import os

import pytest
from repo_factory import *  # noqa: F401,F403  (signed test repository and hostile mirror fixtures)
from registry_fixture import auth_registry, fake_registry, registry  # noqa: F401  (docker-registry and fake registries)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """End-to-end tests prove nothing as root: refuse to run them so."""
    if os.geteuid() != 0:
        return
    reason = "builds must be tested as an unprivileged account: run `make test`"
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
