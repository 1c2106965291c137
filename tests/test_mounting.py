"""The sandbox's /proc where a container masks parts of its own: the kernel's refusal (EPERM) leaves
the chroot's /proc empty and says so; any other failure is an error."""

import errno

import pytest

from ocistrap.errors import BuildError
from ocistrap.rootfs import innerlog, mounting


def refusing(code: int):
    def mount(source, target, fstype, flags, data=None) -> None:
        raise OSError(code, "refused")
    return mount


def test_a_masked_proc_leaves_the_chroot_s_proc_empty_and_says_so(monkeypatch: pytest.MonkeyPatch, capsys,
                                                                 tmp_path) -> None:
    monkeypatch.setattr(mounting, "mount", refusing(errno.EPERM))
    mounting.proc_or_empty(tmp_path)
    assert capsys.readouterr().err == (f"{innerlog.NOTICE}leaving the chroot's /proc empty: the kernel refuses a new "
                                       "one where parts of this container's /proc are masked; maintainer scripts "
                                       "that need one do less (systemd's runs systemd-tmpfiles), and the tree then "
                                       "differs from a host build\n")
    mounting.proc_or_empty(tmp_path, quiet=True)
    assert capsys.readouterr().err == ""
    assert list(tmp_path.iterdir()) == []


def test_the_recorder_s_proc_is_refused_naming_the_unmask_options(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(mounting, "mount", refusing(errno.EPERM))
    with pytest.raises(BuildError, match="parts of this container's /proc are masked") as raised:
        mounting.mount_proc(tmp_path)
    assert "unmask=ALL" in raised.value.hint and "systempaths=unconfined" in raised.value.hint


def test_another_failure_to_mount_proc_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setattr(mounting, "mount", refusing(errno.ENOENT))
    with pytest.raises(BuildError, match="cannot mount proc on .*: refused"):
        mounting.proc_or_empty(tmp_path)
