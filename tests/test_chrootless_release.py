"""Chrootless mode builds another release than the host's only when asked to by name
(pipeline.check_release): its maintainer scripts run the host's tools."""

from __future__ import annotations

import io
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from host_helpers import FakeHost

from ocistrap import log, pipeline
from ocistrap.errors import BuildError
from ocistrap.rootfs import buildmode
from ocistrap.rootfs.idmaps import IdMaps

BOOKWORM = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n'
TRIXIE_LOCK = SimpleNamespace(suite_names=lambda: ("stable", "stable", "trixie"), codename="trixie")
BOOKWORM_LOCK = SimpleNamespace(suite_names=lambda: ("bookworm", "oldstable", "bookworm"), codename="bookworm")


@pytest.fixture
def shown() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    before = log.get()
    log.configure(stream=stream)
    yield stream
    log._current = before


def _mode(kind: buildmode.ModeKind, explicit: bool = False) -> buildmode.BuildMode:
    return buildmode.BuildMode(kind, IdMaps.single(1000, 1000), "test", explicit=explicit)


def test_auto_refuses_another_release_in_chrootless_mode_naming_the_fix(shown: io.StringIO) -> None:
    with pytest.raises(BuildError) as refused:
        pipeline.check_release(TRIXIE_LOCK, _mode(buildmode.CHROOTLESS), BOOKWORM)  # type: ignore[arg-type]
    assert "bookworm's" in refused.value.message and "a trixie tree" in refused.value.message
    assert "--mode chrootless" in (refused.value.hint or "") and "trixie runner image" in (refused.value.hint or "")


def test_asked_for_by_name_it_builds_another_release_after_saying_so(shown: io.StringIO) -> None:
    pipeline.check_release(TRIXIE_LOCK, _mode(buildmode.CHROOTLESS, explicit=True), BOOKWORM)  # type: ignore[arg-type]
    assert "warning: chrootless mode runs the maintainer scripts with this host's tools" in shown.getvalue()


def test_the_host_s_own_release_and_the_other_modes_pass_silently(shown: io.StringIO) -> None:
    pipeline.check_release(BOOKWORM_LOCK, _mode(buildmode.CHROOTLESS), BOOKWORM)  # type: ignore[arg-type]
    for kind in (buildmode.UNSHARE, buildmode.ROOT, buildmode.SINGLE_UID):
        pipeline.check_release(TRIXIE_LOCK, _mode(kind), BOOKWORM)  # type: ignore[arg-type]
    assert shown.getvalue() == ""


def test_only_a_mode_named_on_the_command_line_is_explicit() -> None:
    refused = FakeHost(userns="user namespaces are refused")
    picked = buildmode.decide_mode("auto", refused)  # type: ignore[arg-type]
    assert picked.kind is buildmode.CHROOTLESS and not picked.explicit
    requested = buildmode.decide_mode("chrootless", FakeHost())  # type: ignore[arg-type]
    assert requested.kind is buildmode.CHROOTLESS and requested.explicit
