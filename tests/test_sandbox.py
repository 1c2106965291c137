import errno
import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from e2e_helpers import start_interruptible
from host_helpers import FULL, FakeHost

from ocistrap.errors import BuildError
from ocistrap.rootfs import buildmode, detect, idmaps, mounting, scratchdirs, spawn, syscalls
from ocistrap.rootfs.idmaps import IdMaps, IdRange, SubIdRange

SUBUID = """\
# comment
alice:100000:65536

bob:165536:65536
1001:231072:10
broken line
carol:x:5
"""


# ---- parsing and maps ----

def test_parse_subid_matches_name_or_uid_and_skips_the_rest() -> None:
    assert idmaps.parse_subid(SUBUID, user="alice", uid=1000) == [SubIdRange(100000, 65536)]
    assert idmaps.parse_subid(SUBUID, user="bob", uid=1001) == [SubIdRange(165536, 65536),
                                                                 SubIdRange(231072, 10)]
    assert idmaps.parse_subid(SUBUID, user="carol", uid=1002) == []


def test_id_map_maps_root_to_the_caller_and_the_rest_to_subordinate_ids() -> None:
    ranges = [SubIdRange(100000, 65536)]
    assert idmaps.id_map(1000, ranges, user="alice") == [IdRange(0, 1000, 1),
                                                          IdRange(1, 100000, 65535)]


def test_id_map_concatenates_several_ranges_and_stops_at_65535() -> None:
    ranges = [SubIdRange(200000, 30000), SubIdRange(400000, 40000), SubIdRange(500000, 9)]
    assert idmaps.id_map(1000, ranges, user="alice") == [IdRange(0, 1000, 1),
                                                          IdRange(1, 200000, 30000),
                                                          IdRange(30001, 400000, 35535)]


def test_id_map_without_ranges_says_which_line_to_add() -> None:
    with pytest.raises(BuildError) as e:
        idmaps.id_map(1000, [], user="alice", suggest_start=231072)
    text = str(e.value)
    assert "/etc/subuid has no range for alice" in text
    assert "sudo usermod --add-subuids 231072-296607 alice" in text
    assert "alice:231072:65536" in text


def test_id_map_refuses_a_short_range_instead_of_a_smaller_map() -> None:
    with pytest.raises(BuildError) as e:
        idmaps.id_map(1000, [SubIdRange(100000, 1000)], user="alice", kind="gid",
                       suggest_start=165536)
    text = str(e.value)
    assert "/etc/subgid gives alice only 1000 subordinate gids" in text
    assert "sudo usermod --add-subgids 165536-231071 alice" in text


@pytest.mark.parametrize("ranges", [
    [SubIdRange(100000, 65536), SubIdRange(150000, 65536)],
    [SubIdRange(900, 65536)],
])
def test_id_map_refuses_overlapping_ranges(ranges: list[SubIdRange]) -> None:
    with pytest.raises(BuildError, match="overlaps"):
        idmaps.id_map(1000, ranges, user="alice")


def test_free_subid_start_is_past_every_range() -> None:
    assert idmaps.free_subid_start(SUBUID) == 231082
    assert idmaps.free_subid_start("") == 100000


def test_inner_id_and_map_args() -> None:
    ranges = idmaps.id_map(1000, [SubIdRange(100000, 65536)], user="alice")
    assert idmaps.inner_id(1000, ranges) == 0
    assert idmaps.inner_id(100999, ranges) == 1000
    assert idmaps.inner_id(5, ranges) is None
    assert idmaps.map_args(ranges) == ["0", "1000", "1", "1", "100000", "65535"]


def test_load_maps_reads_both_files(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text(SUBUID)
    (tmp_path / "subgid").write_text("alice:300000:65536\n")
    maps = idmaps.load_maps(subuid=tmp_path / "subuid", subgid=tmp_path / "subgid",
                             user="alice", uid=1000, gid=1000)
    assert maps == IdMaps(uid=(IdRange(0, 1000, 1), IdRange(1, 100000, 65535)),
                          gid=(IdRange(0, 1000, 1), IdRange(1, 300000, 65535)))


def test_load_maps_names_the_file_that_lacks_the_user(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text(SUBUID)
    with pytest.raises(BuildError) as e:
        idmaps.load_maps(subuid=tmp_path / "subuid", subgid=tmp_path / "missing",
                          user="alice", uid=1000, gid=1000)
    assert f"{tmp_path / 'missing'} has no range for alice" in str(e.value)
    assert "--add-subgids 100000-165535 alice" in str(e.value)


# ---- host checks ----

def _caps_xattr(revision: int, low: int, high: int = 0) -> bytes:
    data = struct.pack("<III", revision | 1, low, 0)
    if revision == idmaps.VFS_CAP_REVISION_1:
        return data
    return data + struct.pack("<II", high, 0) + (b"\0" * 4 if revision == 0x03000000 else b"")


@pytest.mark.parametrize("revision", [0x01000000, 0x02000000, 0x03000000])
def test_file_caps_reads_permitted_capabilities(revision: int) -> None:
    xattr = _caps_xattr(revision, 1 << syscalls.CAP_SETUID)
    assert idmaps.file_caps(xattr) == {syscalls.CAP_SETUID}


def test_file_caps_reads_the_high_word_and_tolerates_nothing() -> None:
    assert idmaps.file_caps(_caps_xattr(0x02000000, 0, 1)) == {32}
    assert idmaps.file_caps(None) == frozenset()
    assert idmaps.file_caps(b"\1\2") == frozenset()


def test_mapper_in_a_nested_user_namespace_names_the_namespace() -> None:
    verdict = idmaps.mapper_verdict("newuidmap", "/usr/bin/newuidmap", mode=0o104755,
                                     owner=idmaps.OVERFLOW_ID, nested=True)
    assert verdict is not None and "inside a user namespace that does not map root" in verdict


def test_mapper_verdicts() -> None:
    assert "sudo apt install uidmap" in idmaps.mapper_verdict("newuidmap", None)
    assert idmaps.mapper_verdict("newuidmap", "/usr/bin/newuidmap", mode=0o104755, owner=0) is None
    assert idmaps.mapper_verdict("newgidmap", "/usr/bin/newgidmap", mode=0o100755, owner=0,
                                  caps=frozenset({syscalls.CAP_SETGID})) is None
    plain = idmaps.mapper_verdict("newuidmap", "/usr/bin/newuidmap", mode=0o100755, owner=0,
                                   caps=frozenset({syscalls.CAP_SETGID}))
    assert "sudo chmod u+s /usr/bin/newuidmap" in plain
    assert "sudo setcap cap_setuid+ep /usr/bin/newuidmap" in plain
    not_root = idmaps.mapper_verdict("newgidmap", "/x/newgidmap", mode=0o104755, owner=1000)
    assert "cap_setgid" in not_root


@pytest.mark.parametrize("sysctls, expected", [
    ({"kernel.unprivileged_userns_clone": "0"}, "sysctl -w kernel.unprivileged_userns_clone=1"),
    ({"user.max_user_namespaces": "0"}, "sysctl -w user.max_user_namespaces=15000"),
    ({"kernel.apparmor_restrict_unprivileged_userns": "1"},
     "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"),
    ({}, "seccomp"),
])
def test_userns_advice_names_what_to_enable(sysctls: dict[str, str], expected: str, monkeypatch) -> None:
    """For an unprivileged caller, whichever account runs the tests (root ignores
    unprivileged_userns_clone, and the advice says so)."""
    monkeypatch.setattr(spawn.os, "geteuid", lambda: 1000)
    assert expected in spawn.userns_advice(errno.EPERM, sysctls)


def test_userns_advice_for_an_exhausted_limit() -> None:
    assert "raise it" in spawn.userns_advice(errno.ENOSPC, {"user.max_user_namespaces": "5"})


def test_the_isolated_helper_finds_this_source_tree_without_an_installed_copy(monkeypatch) -> None:
    """ocistrap run from a source tree (PYTHONPATH, as in the Docker test) by an interpreter
    that has no copy installed: the helper's `-I` drops PYTHONPATH, so only the path it inserts
    finds the package (it once inserted the package itself, and every probe failed)."""
    bare = "/usr/bin/python3"
    alone = subprocess.run([bare, "-I", "-c", "import ocistrap"], capture_output=True, cwd="/")
    if alone.returncode == 0:
        pytest.skip(f"{bare} has ocistrap installed: it cannot show what the helper's own path finds")
    monkeypatch.setattr(sys, "executable", bare)
    result = subprocess.run(spawn.helper_argv("probe"), capture_output=True, text=True, cwd="/")
    assert result.stderr == "" and result.returncode in (0, 1)


# ---- mountinfo ----

MOUNTINFO = r"""
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 22 0:40 / /tmp/st rw - tmpfs t rw
41 40 0:5 /null /tmp/st/dev/null rw - devtmpfs udev rw
42 40 0:41 / /tmp/st/dev/pts rw - devpts devpts rw
43 40 0:42 / /tmp/st/sys ro - sysfs sysfs rw
44 43 0:43 / /tmp/st/sys/fs/cgroup ro - cgroup2 cgroup rw
45 22 0:44 / /tmp/st2/x rw - tmpfs t rw
46 40 0:45 / /tmp/st/with\040space rw - tmpfs t rw
"""


def test_parse_mountinfo_unescapes_mount_points() -> None:
    points = mounting.parse_mountinfo(MOUNTINFO)
    assert points[0] == "/" and points[-1] == "/tmp/st/with space"


def test_mounts_below_lists_only_inside_and_deepest_first() -> None:
    below = mounting.mounts_below("/tmp/st", mounting.parse_mountinfo(MOUNTINFO))
    assert below[0] == "/tmp/st/sys/fs/cgroup"
    assert set(below) == {"/tmp/st/dev/null", "/tmp/st/dev/pts", "/tmp/st/sys",
                          "/tmp/st/sys/fs/cgroup", "/tmp/st/with space"}


def test_mount_helpers_refuse_outside_the_sandbox(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can mount on the host")
    with pytest.raises(BuildError, match="only work inside the sandbox"):
        mounting.mount_staging(tmp_path / "staging")


# ---- scratch directories (no namespaces: their files are the caller's) ----

def test_scratch_dir_sweeps_leftovers_nobody_holds_and_removes_itself(tmp_path: Path) -> None:
    stale = tmp_path / "build-stale"
    (stale / "root" / "etc").mkdir(parents=True)
    held = tmp_path / "build-held"
    held.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (tmp_path / "build-link").symlink_to(other)
    (tmp_path / "build-file").write_text("x")
    fd = os.open(held, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with scratchdirs.scratch_dir(tmp_path, "build-") as work:
            assert work.parent == tmp_path and work.name.startswith("build-")
            (work / "root").mkdir()
            assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
                ["build-held", "build-link", "build-file", "other", work.name])
            with pytest.raises(BlockingIOError):
                _exclusive(work)
        assert not work.exists()
    finally:
        os.close(fd)
    assert held.is_dir() and other.is_dir()


def test_scratch_dir_removes_itself_when_the_block_fails(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with scratchdirs.scratch_dir(tmp_path, "build-") as work:
            (work / "f").write_text("x")
            raise KeyError
    assert list(tmp_path.iterdir()) == []


def _exclusive(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


# ---- end to end, as an unprivileged account ----

def _inside(code: str, **kwargs: object) -> subprocess.CompletedProcess:
    """Run Python CODE as root of a fresh sandbox."""
    proc = spawn.spawn([sys.executable, "-c", textwrap.dedent(code)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())


@pytest.mark.userns
def test_spawn_runs_as_root_with_the_full_map() -> None:
    proc = spawn.spawn(["sh", "-c", "id -u; id -g; cat /proc/self/uid_map; echo $$"],
                         stdout=subprocess.PIPE)
    out = proc.communicate(timeout=30)[0].decode().split()
    subordinate = idmaps.load_maps().uid[1].outer
    assert proc.returncode == 0
    assert out == ["0", "0", "0", str(os.getuid()), "1", "1", str(subordinate), "65535", "2"]


@pytest.mark.userns
def test_the_sandbox_names_its_host_localhost_whatever_the_machine_is_called() -> None:
    if socket.gethostname() == spawn.HOSTNAME:
        pytest.skip("this machine is called localhost itself")
    proc = spawn.spawn(["uname", "-n"], stdout=subprocess.PIPE)
    assert proc.communicate(timeout=30)[0].decode() == "localhost\n" and proc.returncode == 0


@pytest.mark.userns
def test_the_sandbox_has_no_network() -> None:
    result = _inside("""
        import socket
        print(sorted(name for _, name in socket.if_nameindex()))
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=5)
        except OSError as e:
            print(type(e).__name__)
    """)
    assert result.returncode == 0, result.stderr
    interfaces, failure = result.stdout.splitlines()
    assert interfaces == "['lo']" and failure == "ConnectionRefusedError"


@pytest.mark.userns
def test_the_sandbox_s_loopback_interface_is_up_and_carries_connections() -> None:
    result = _inside("""
        import errno
        import socket
        with socket.create_server(("127.0.0.1", 0)) as server:
            with socket.create_connection(server.getsockname(), timeout=5) as client:
                conn, _ = server.accept()
                client.sendall(b"ping")
                print(conn.recv(4).decode())
        try:
            socket.create_connection(("192.0.2.1", 80), timeout=5)
        except OSError as e:
            print(errno.errorcode[e.errno])
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ping", "ENETUNREACH"]


@pytest.mark.userns
def test_spawn_propagates_exit_status_signals_and_pipes() -> None:
    assert spawn.spawn(["sh", "-c", "exit 7"]).wait() == 7
    assert spawn.spawn(["sh", "-c", "kill -TERM $$"]).wait() == 128 + signal.SIGTERM
    proc = spawn.spawn(["tr", "a-z", "A-Z"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env={"PATH": "/usr/bin:/bin"})
    assert proc.communicate(b"hello", timeout=30)[0] == b"HELLO"


@pytest.mark.userns
def test_terminate_reaches_the_payload() -> None:
    proc = spawn.spawn(["sleep", "1000"])
    proc.terminate()
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM


@pytest.mark.userns
def test_spawn_reports_a_missing_command() -> None:
    with pytest.raises(BuildError, match="cannot run no-such-command in the sandbox"):
        spawn.spawn(["no-such-command"])


@pytest.mark.userns
def test_spawn_reports_a_map_newuidmap_refuses() -> None:
    maps = idmaps.load_maps()
    foreign = (maps.uid[0], IdRange(1, 7000000, 65535))
    with pytest.raises(BuildError, match="newuidmap refused the uid map"):
        spawn.spawn(["true"], maps=IdMaps(uid=foreign, gid=maps.gid))


@pytest.mark.userns
def test_missing_subuid_entry_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("someone-else:100000:65536\n")
    with pytest.raises(BuildError) as e:
        spawn.spawn(["true"], maps=idmaps.load_maps(subuid=tmp_path / "subuid"))
    assert "has no range for" in str(e.value) and "usermod --add-subuids" in str(e.value)


@pytest.mark.userns
def test_probe_userns_finds_user_namespaces_usable() -> None:
    assert buildmode.SystemProbe().userns_problem() is None


@pytest.mark.userns
def test_staging_tmpfs_keeps_owners(tmp_path: Path) -> None:
    result = _inside(f"""
        import os
        from pathlib import Path
        from ocistrap.rootfs import mounting, spawn
        root = Path({str(tmp_path / "staging")!r})
        mounting.mount_staging(root)
        f = root / "owned"
        f.write_text("x")
        os.chown(f, 1000, 1000)
        st = os.stat(f)
        print(st.st_uid, st.st_gid, os.statvfs(root).f_bsize > 0)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1000", "1000", "True"]
    assert list((tmp_path / "staging").iterdir()) == []


@pytest.mark.userns
def test_bind_mount_readonly() -> None:
    result = _inside("""
        import tempfile
        from pathlib import Path
        from ocistrap.rootfs import mounting, spawn
        with tempfile.TemporaryDirectory() as d:
            src, dst = Path(d, "src"), Path(d, "dst")
            src.mkdir(); dst.mkdir()
            (src / "f").write_text("x")
            mounting.bind_mount(src, dst, readonly=True)
            print((dst / "f").read_text())
            try:
                (dst / "g").write_text("y")
            except OSError as e:
                print(e.errno)
            mounting.unmount(dst)
            print(list(dst.iterdir()))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["x", str(errno.EROFS), "[]"]


# a staging root at sys.argv[1] that holds the host's /usr (read-only), as a chroot
USR_CHROOT = """
    import os, subprocess, sys
    from pathlib import Path
    from ocistrap.rootfs import mounting, spawn
    root = Path(sys.argv[1])
    mounting.mount_staging(root)
    for name in ("bin", "lib", "lib64", "sbin"):
        if Path("/", name).is_symlink():
            (root / name).symlink_to(os.readlink(Path("/", name)))
    (root / "usr").mkdir()
    mounting.bind_mount(Path("/usr"), root / "usr", readonly=True)
"""

CHROOT_PAYLOAD = USR_CHROOT + """
    mounting.prepare_chroot(root)
    env = {"PATH": "/usr/bin:/bin"}
    r = spawn.chroot_run(root, ["sh", "-c",
        "echo x > /dev/null && test -c /dev/null && head -c 4 /dev/zero | wc -c && "
        "test -L /dev/ptmx && test -d /proc/self && test -d /sys/kernel && "
        "echo ok > /dev/stderr && id -u && pwd"],
        env=env, stdout=sys.stdout.buffer.fileno())
    try:
        spawn.chroot_run(root, ["sh", "-c", "echo nope >&2; exit 4"], env=env,
                           stderr=subprocess.PIPE)
    except spawn.ChrootCommandError as e:
        print("failed", e.returncode, "nope" in str(e), flush=True)
    mounting.release_chroot(root)
    mounting.unmount(root / "usr")
    for d in ("dev", "proc", "sys", "usr"):
        print(d, sorted(p.name for p in (root / d).iterdir()), flush=True)
"""


@pytest.mark.userns
def test_prepare_chroot_run_and_release(tmp_path: Path) -> None:
    proc = spawn.spawn([sys.executable, "-c", textwrap.dedent(CHROOT_PAYLOAD),
                          str(tmp_path / "root")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["4", "0", "/", "failed 4 True",
                                         "dev []", "proc []", "sys []", "usr []"]


@pytest.mark.userns
def test_remove_tree_deletes_files_of_subordinate_ids(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    result = _inside(f"""
        import os
        from pathlib import Path
        d = Path({str(tree)!r}, "locked")
        d.mkdir(parents=True)
        (d / "f").write_text("x")
        os.chown(d / "f", 1000, 1000)
        os.chown(d, 1000, 1000)
        d.chmod(0o700)
    """)
    assert result.returncode == 0, result.stderr
    with pytest.raises(PermissionError):
        list((tree / "locked").iterdir())
    scratchdirs.remove_tree(tree)
    assert not tree.exists()


KILLED_PARENT = """
    import sys, time
    from ocistrap.rootfs import mounting, spawn
    proc = spawn.spawn(["sleep", sys.argv[1]])
    print("ready", flush=True)
    time.sleep(1000)
"""


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.userns
@pytest.mark.parametrize("how", ["SIGKILL to the caller", "Ctrl-C to the process group"])
def test_killing_the_caller_kills_the_whole_sandbox(how: str) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    parent = start_interruptible([sys.executable, "-c", textwrap.dedent(KILLED_PARENT), marker],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert parent.stdout is not None
    assert parent.stdout.readline() == b"ready\n"
    sleepers = [p for p in _processes_with(marker) if p != parent.pid]
    assert len(sleepers) == 1
    if how.startswith("SIGKILL"):
        parent.kill()
    else:
        os.killpg(parent.pid, signal.SIGINT)
    parent.wait()
    deadline = time.monotonic() + 10
    while [p for p in _processes_with(marker) if p != parent.pid] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in _processes_with(marker) if p != parent.pid] == []


# ---- remove_on_exit: nothing of subordinate ids outlives the sandbox ----

def _foreign_tree(root: Path) -> str:
    """Shell that fills ROOT with files of subordinate ids the caller cannot delete."""
    return (f"mkdir -p {root}/a/b && echo x > {root}/a/b/f && mkdir {root}/mnt && "
            f"mount -t tmpfs tmpfs {root}/mnt && echo y > {root}/mnt/g && "
            f"chown -R 1000:1000 {root}/a && chmod 700 {root}/a")


def _assert_foreign(root: Path) -> None:
    with pytest.raises(PermissionError):
        list((root / "a").iterdir())


@pytest.mark.userns
@pytest.mark.parametrize("end", ["exit", "terminate", "kill"])
def test_remove_on_exit_deletes_the_tree_before_wait_returns(end: str, tmp_path: Path) -> None:
    root = tmp_path / "work"
    root.mkdir()
    payload = (f"{_foreign_tree(root)} && echo ready && "
               + ("exit 3" if end == "exit" else "exec sleep 1000"))
    proc = spawn.spawn(["sh", "-c", payload], stdout=subprocess.PIPE, remove_on_exit=root)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    if end != "exit":
        _assert_foreign(root)
        getattr(proc, end)()
    status = proc.wait(timeout=30)
    assert status == {"exit": 3, "terminate": 128 + signal.SIGTERM, "kill": -signal.SIGKILL}[end]
    assert not root.exists()
    proc.stdout.close()


@pytest.mark.userns
def test_remove_on_exit_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot open the directory .*missing"):
        spawn.spawn(["true"], remove_on_exit=tmp_path / "missing")


KILLED_BUILDER = """
    import signal, subprocess, sys, time
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # started from a background job, it was ignored
    from ocistrap.rootfs import mounting, spawn
    proc = spawn.spawn(["sh", "-c", sys.argv[1]], stdout=subprocess.PIPE,
                         remove_on_exit=Path(sys.argv[2]))
    print(proc.stdout.readline().decode(), end="", flush=True)
    time.sleep(1000)
"""


@pytest.mark.userns
@pytest.mark.parametrize("how", ["SIGKILL to the caller", "Ctrl-C to the process group"])
def test_remove_on_exit_outlives_the_caller(how: str, tmp_path: Path) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    root = tmp_path / "work"
    root.mkdir()
    payload = (f"trap '' TERM HUP INT; {_foreign_tree(root)} && sleep {marker} & "
               f"sleep 0.2; echo ready; sleep {marker}")
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(KILLED_BUILDER), payload,
                               str(root)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    assert parent.stdout is not None
    assert parent.stdout.readline() == b"ready\n"
    _assert_foreign(root)
    assert len([p for p in _processes_with(marker) if p != parent.pid]) >= 2
    if how.startswith("SIGKILL"):
        parent.kill()
    else:
        os.killpg(parent.pid, signal.SIGINT)
    parent.wait()
    deadline = time.monotonic() + 5
    while (root.exists() or _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not root.exists()
    assert _processes_with(marker) == []


@pytest.mark.userns
def test_scratch_dir_sweeps_foreign_leftovers_but_not_a_live_sandbox(tmp_path: Path) -> None:
    stale, live = tmp_path / "build-stale", tmp_path / "build-live"
    stale.mkdir()
    live.mkdir()
    assert spawn.spawn(["sh", "-c", _foreign_tree(stale)]).wait() == 0
    _assert_foreign(stale)
    proc = spawn.spawn(["sh", "-c", f"{_foreign_tree(live)} && echo ready && exec sleep 1000"],
                         stdout=subprocess.PIPE, remove_on_exit=live)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    with scratchdirs.scratch_dir(tmp_path, "build-") as work:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["build-live", work.name])
    proc.terminate()
    proc.wait(timeout=30)
    proc.stdout.close()
    assert list(tmp_path.iterdir()) == []


# ---- deciding the mode ----

NO_MAPPER = {"newuidmap": (None, "newuidmap is not installed: run `sudo apt install uidmap`"),
             "newgidmap": ("/usr/bin/newgidmap", None)}
REFUSED = "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0)"


def test_auto_mode_takes_unshare_when_the_ranges_work() -> None:
    mode = buildmode.decide_mode("auto", FakeHost())
    assert (mode.name, mode.maps, mode.records_owners) == ("unshare", FULL, False)
    assert mode.reason == "65536 ids mapped from /etc/subuid and /etc/subgid"
    assert [m.name for m in mode.fallbacks] == ["single-uid"]


def test_auto_mode_falls_back_to_single_uid_and_says_why() -> None:
    mode = buildmode.decide_mode("auto", FakeHost(subuid="", ids=(1000, 1001)))
    assert mode.name == "single-uid" and mode.records_owners
    assert mode.maps == idmaps.IdMaps.single(1000, 1001) and mode.maps.is_single
    assert mode.reason == ("/etc/subuid has no range for alice; the sandbox needs 65536 subordinate uids; "
                           "single-uid mode: owners are recorded instead of applied")
    assert mode.fell_back_from == "unshare" and mode.fallbacks == ()


def test_auto_mode_falls_back_when_a_mapper_is_missing() -> None:
    mode = buildmode.decide_mode("auto", FakeHost(mappers=NO_MAPPER))
    assert mode.name == "single-uid" and mode.reason.startswith("newuidmap is not installed")


def test_unshare_mode_raises_what_is_missing() -> None:
    with pytest.raises(BuildError, match="no range for alice") as raised:
        buildmode.decide_mode("unshare", FakeHost(subgid="bob:100000:65536\n"))
    assert "sudo usermod --add-subgids 165536-231071 alice" in str(raised.value)
    with pytest.raises(BuildError, match="newuidmap is not installed"):
        buildmode.decide_mode("unshare", FakeHost(mappers=NO_MAPPER))


def test_requested_modes_have_no_fallback() -> None:
    for requested in ("unshare", "single-uid"):
        mode = buildmode.decide_mode(requested, FakeHost())
        assert (mode.name, mode.reason, mode.fallbacks) == (requested, f"requested with --mode {requested}", ())


def test_single_uid_mode_needs_no_range_nor_mapper() -> None:
    mode = buildmode.decide_mode("single-uid", FakeHost(subuid="", subgid="", mappers=NO_MAPPER, ids=(5, 6)))
    assert mode.name == "single-uid" and mode.maps == idmaps.IdMaps.single(5, 6)


@pytest.mark.parametrize("requested", [m for m in buildmode.MODES if m not in ("root", "chrootless")])
def test_no_namespace_mode_builds_when_user_namespaces_are_refused(requested: str) -> None:
    with pytest.raises(BuildError, match=re.escape(REFUSED)):
        buildmode.decide_mode(requested, FakeHost(userns=REFUSED, subuid="", chrootless="no dpkg"))


def test_auto_turns_to_chrootless_when_user_namespaces_are_refused_and_says_why() -> None:
    mode = buildmode.decide_mode("auto", FakeHost(userns=REFUSED, subuid="", ids=(5, 6)))
    assert mode.kind is buildmode.CHROOTLESS and mode.records_owners and mode.fallbacks == ()
    assert mode.describe().startswith(f"chrootless, because unshare mode cannot build here: {REFUSED}; "
                                      "chrootless mode: the host's dpkg installs from outside")


def test_auto_prefers_a_namespace_to_chrootless() -> None:
    mode = buildmode.decide_mode("auto", FakeHost(subuid=""))
    assert mode.name == "single-uid" and mode.fallbacks == ()


def test_chrootless_mode_names_what_the_host_lacks() -> None:
    with pytest.raises(BuildError, match="chrootless mode cannot build here: the host has no dpkg"):
        buildmode.decide_mode("chrootless", FakeHost(chrootless="the host has no dpkg"))


@pytest.mark.parametrize(("actions", "scope", "problem"), [
    ("kill_process kill_thread trap errno user_notif trace log allow", "1", None),
    ("kill_process kill_thread trap errno user_notif trace log allow", None, None),
    ("kill_process kill_thread trap errno trace log allow", "0", "seccomp user notification"),
    (None, "0", "seccomp user notification"),
    ("user_notif", "2", "sudo sysctl kernel.yama.ptrace_scope=1"),
    ("user_notif", "3\n", "until the next reboot"),
])
def test_recording_without_a_namespace_needs_user_notification_and_a_ptrace_scope_of_at_most_1(
        actions: str | None, scope: str | None, problem: str | None) -> None:
    found = detect.recording_problem(actions, scope)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(BuildError, match="unknown mode 'chroot'"):
        buildmode.decide_mode("chroot", FakeHost())


def test_a_fallback_at_run_time_says_why_and_is_not_offered_twice() -> None:
    refused = idmaps.MapRefused("newuidmap refused the uid map 0 1000 1: write failed")
    mode = buildmode.decide_mode("auto", FakeHost()).fallback(refused)
    assert (mode.name, mode.fell_back_from) == ("single-uid", "unshare")
    assert mode.reason == "newuidmap refused the uid map 0 1000 1: write failed; single-uid mode: owners are recorded instead of applied"
    assert mode.describe().startswith("single-uid, because unshare mode cannot build here: newuidmap refused")
    with pytest.raises(idmaps.MapRefused):
        mode.fallback(refused)


def test_a_requested_mode_raises_the_problem_instead_of_falling_back() -> None:
    refused = idmaps.MapRefused("newuidmap refused the uid map")
    with pytest.raises(idmaps.MapRefused):
        buildmode.decide_mode("unshare", FakeHost()).fallback(refused)


def test_full_maps_are_not_single() -> None:
    assert not FULL.is_single


@pytest.mark.parametrize("inner, expected", [(0, True), (5, True), (65535, True), (65536, False)])
def test_inner_id_mapped(inner: int, expected: bool) -> None:
    assert idmaps.inner_id_mapped(inner, "         0       1000          1\n         1     100000      65535\n") \
        is expected


def test_only_id_zero_exists_in_a_single_uid_namespace() -> None:
    assert not idmaps.inner_id_mapped(5, "0 1000 1\n")


# ---- what a command in the sandbox can reach ----

def test_sandbox_env_drops_what_names_host_sockets() -> None:
    env = {"PATH": "/bin", "SSH_AUTH_SOCK": "/tmp/a", "DBUS_SESSION_BUS_ADDRESS": "unix:path=/b",
           "XDG_RUNTIME_DIR": "/run/user/1", "FOO_SOCKET": "/c", "LANG": "C.UTF-8"}
    assert spawn.sandbox_env(env) == {"PATH": "/bin", "LANG": "C.UTF-8"}


NO_TTY = """
    import errno, os
    try:
        os.open("/dev/tty", os.O_RDWR)
        print("tty")
    except OSError as e:
        print(errno.errorcode[e.errno])
"""

TTY_CALLER = """
    import fcntl, os, subprocess, sys, termios
    from ocistrap.rootfs import mounting, spawn
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    os.close(os.open("/dev/tty", os.O_RDWR))
    proc = spawn.spawn([sys.executable, "-c", sys.argv[1]], stdout=subprocess.PIPE)
    print(proc.communicate(timeout=60)[0].decode().strip())
"""


@pytest.mark.e2e
def test_the_sandbox_has_no_controlling_terminal() -> None:
    """The caller's terminal is not the sandbox's: no /dev/tty, so no TIOCSTI into it."""
    master, slave = os.openpty()
    try:
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(TTY_CALLER), textwrap.dedent(NO_TTY)],
                                stdin=slave, capture_output=True, start_new_session=True, timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["ENXIO"]


@pytest.mark.e2e
def test_the_sandbox_does_not_see_host_socket_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", "/tmp/ssh-x/agent.1")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/run/user/1/bus")
    monkeypatch.setenv("OCISTRAP_KEPT", "yes")
    result = _inside("""
        import os
        print(sorted(k for k in os.environ if k in ("SSH_AUTH_SOCK", "DBUS_SESSION_BUS_ADDRESS", "OCISTRAP_KEPT")))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['OCISTRAP_KEPT']"


@pytest.mark.e2e
def test_a_daemon_started_in_the_sandbox_is_gone_when_it_ends() -> None:
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    proc = spawn.spawn(["sh", "-c", f"setsid sleep {marker} </dev/null >/dev/null 2>&1 & exit 0"])
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_with(marker) == []


# What a maintainer script might try, run by chroot_run in a chroot holding the host's /usr
# (read-only): reach the caller's sockets directly, through a second chroot() or through
# /proc/PID/root of a process outside the chroot, and leave a daemon behind.
ESCAPE_SCRIPT = """
import errno, os, socket, subprocess, sys
abstract, path, marker = sys.argv[1:]

def connect(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(address)
        return "connected"
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        s.close()

print("abstract", connect("\\0" + abstract))
print("path", connect(path))
print("proc", sorted({connect(f"/proc/{p}/{link}{path}") for p in os.listdir("/proc") if p.isdigit()
                      for link in ("root", "cwd")}))
try:
    os.mkdir("/escape")
    os.chroot("/escape")
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
    print("chroot", connect(path))
except OSError as e:
    print("chroot", errno.errorcode[e.errno])
subprocess.Popen(["sleep", marker], start_new_session=True, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""

ESCAPE_PAYLOAD = USR_CHROOT + """
    abstract, path, marker = sys.argv[2:]
    (root / "probe.py").write_text(sys.stdin.read())
    mounting.prepare_chroot(root)
    spawn.chroot_run(root, ["python3", "/probe.py", abstract, path, marker],
                       env={"PATH": "/usr/bin:/bin"}, stdout=sys.stdout.buffer.fileno())
    me = os.readlink("/proc/self")  # the host's /proc, where this process has another pid
    left = [p for p in os.listdir("/proc") if p.isdigit() and p != me
            and marker.encode() in Path("/proc", p, "cmdline").read_bytes()]
    print("left", len(left), flush=True)
    mounting.release_chroot(root)
    mounting.unmount(root / "usr")
"""


@pytest.mark.e2e
@pytest.mark.parametrize("single", [False, True], ids=["unshare", "single-uid"])
def test_a_command_in_the_chroot_reaches_no_host_socket_and_leaves_nothing_behind(tmp_path: Path,
                                                                                  single: bool) -> None:
    import socket
    abstract = f"ocistrap-test-{uuid.uuid4().hex}"
    path = tmp_path / "agent.sock"
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    with socket.socket(socket.AF_UNIX) as listening, socket.socket(socket.AF_UNIX) as hidden:
        listening.bind(str(path))
        listening.listen()
        hidden.bind("\0" + abstract)
        hidden.listen()
        maps = IdMaps.single(os.getuid(), os.getgid()) if single else None
        proc = spawn.spawn([sys.executable, "-c", textwrap.dedent(ESCAPE_PAYLOAD), str(tmp_path / "root"),
                              abstract, str(path), marker], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, maps=maps)
        out, err = proc.communicate(ESCAPE_SCRIPT.encode(), timeout=60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines == ["abstract ECONNREFUSED", "path ENOENT", "proc ['ENOENT']", "chroot EPERM", "left 0"]


VIEW_PAYLOAD = """
    import subprocess, sys
    from pathlib import Path
    from ocistrap.rootfs import mounting, spawn
    root, outside = Path(sys.argv[1]), sys.argv[2]
    mounting.mount_staging(root)
    for d in ("etc", "root", "usr"):
        (root / d).mkdir()
    (root / "etc/hostname").write_text("target\\n")
    (root / "usr/share").symlink_to(outside)
    (root / "usr/cwd").symlink_to("/proc/self/cwd")
    mounting.prepare_chroot(root)
    script = (f"cat /etc/hostname; echo x > /target/usr/share/pwned; echo y > /target/usr/cwd/pwned; "
              f"echo z > {outside}/pwned; ls /home 2>&1; echo w > /usr/pwned; echo done")
    result = spawn.host_view_run(root, ["sh", "-c", script], env={"PATH": "/usr/bin:/bin"},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(result.stdout.decode(), flush=True)
    mounting.release_chroot(root)
"""


@pytest.mark.e2e
def test_a_host_program_on_the_tree_finds_nothing_of_the_caller_s(tmp_path: Path) -> None:
    """host_view_run (the host's dpkg for foreign architectures): the tree's symlinks out of it
    lead nowhere, the host's system directories are read-only, the rest of the host is absent."""
    outside = tmp_path / "home"
    outside.mkdir()
    proc = spawn.spawn([sys.executable, "-c", textwrap.dedent(VIEW_PAYLOAD), str(tmp_path / "root"),
                          str(outside)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0] == "target" and "done" in lines, lines
    text = out.decode()
    assert "/target/usr/share/pwned: Directory nonexistent" in text
    assert f"{outside}/pwned: Directory nonexistent" in text
    assert "'/home': No such file or directory" in text
    assert "/usr/pwned: Read-only file system" in text
    assert list(outside.iterdir()) == []
