"""An account with no /etc/subuid or /etc/subgid entry, as in CI pods: doctor and the build
choose single-uid mode by themselves, and the image still has the right owners.

`make test` runs this module as such an account (ocistrap-nosubid); as any account
with ranges it is skipped. That the single-uid image equals the unshare one byte for
byte (and so mmdebstrap's tree) is tested in test_e2e_build.py.
"""

import getpass
import tarfile
from pathlib import Path

import pytest
from e2e_helpers import ocistrap, printed_digests

from ocistrap.rootfs import idmaps

pytestmark = [pytest.mark.e2e, pytest.mark.network, pytest.mark.nosubid]

# every path of bookworm minbase not owned by root:root, as unshare builds (and mmdebstrap) make it
NOT_ROOT_OWNED = {
    "etc/gshadow": (0, 42, 0o640),
    "etc/shadow": (0, 42, 0o640),
    "usr/bin/chage": (0, 42, 0o2755),
    "usr/bin/expiry": (0, 42, 0o2755),
    "usr/sbin/unix_chkpwd": (0, 42, 0o2755),
    "var/cache/apt/archives/partial": (42, 0, 0o700),
    "var/lib/apt/lists/partial": (42, 0, 0o700),
    "var/local": (0, 50, 0o2775),
    "var/log/btmp": (0, 43, 0o660),
    "var/log/lastlog": (0, 43, 0o664),
    "var/log/wtmp": (0, 43, 0o664),
    "var/mail": (0, 8, 0o2775),
}


def _has_ranges() -> bool:
    _, uid, _ = idmaps.current_user()
    return any(idmaps.parse_subid(idmaps.SUBUID.read_text() if idmaps.SUBUID.exists() else "",
                                   user=getpass.getuser(), uid=uid))


@pytest.fixture(scope="module", autouse=True)
def without_ranges() -> None:
    if _has_ranges():
        pytest.skip("needs an account without a subuid range (`make test` runs it as ocistrap-nosubid)")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    work = tmp_path_factory.mktemp("nosubid")
    rootfs, oci = work / "rootfs.tar", f"oci:{work / 'layout'}:bookworm"
    result = ocistrap("build", "bookworm", "--variant", "minbase", "-o", f"tar:{rootfs}", "-o", oci)
    assert len(set(printed_digests(result.stdout).values())) == 1
    return rootfs, oci, result.stderr


def test_doctor_says_single_uid_and_why_as_the_build_does(built) -> None:
    result = ocistrap("doctor")
    line = next(l for l in result.stdout.splitlines() if "build mode" in l)
    because = "single-uid, because unshare mode cannot build here: "
    assert line.startswith("ok") and f"{because}/etc/subuid has no range for {getpass.getuser()}" in line
    reason = line.split(because, 1)[1]
    assert f"sandbox: single-uid mode ({reason})" in built[2]


def test_build_falls_back_to_single_uid_and_says_so(built) -> None:
    _, _, log = built
    assert "sandbox: single-uid mode (/etc/subuid has no range for" in log


def test_owners_modes_and_set_id_bits_are_right(built) -> None:
    rootfs, _, _ = built
    with tarfile.open(rootfs) as tar:
        members = tar.getmembers()
    found = {m.name: (m.uid, m.gid, m.mode) for m in members if m.uid or m.gid}
    assert found == NOT_ROOT_OWNED
    assert len(members) > 5000


def test_the_image_verifies(built) -> None:
    _, oci, _ = built
    assert "ok" in ocistrap("verify", oci).stdout.lower()


def test_unshare_mode_is_refused_with_the_fix() -> None:
    result = ocistrap("build", "bookworm", "--variant", "minbase", "--mode", "unshare", "-o", "tar:/dev/null",
                      check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "has no range for" in lines[-1] and "usermod --add-subuids" in lines[-1]
    assert "Traceback" not in result.stderr
