import errno
import fcntl
import gzip
import hashlib
import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ocistrap.oci import blobwriter
from ocistrap.oci.blobwriter import LayerBlob, write_blob
from ocistrap.rootfs import tarstream
from ocistrap.rootfs.tarstream import BuildError, snapshot, tar_header, write_diff, write_tree

EPOCH = 1_700_000_000
FUTURE = int(time.time()) + 10**6


def tar_bytes(root: Path, **kw) -> bytes:
    out = io.BytesIO()
    write_tree(root, out, epoch=kw.pop("epoch", EPOCH), **kw)
    return out.getvalue()


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return tf.getmembers()


def by_name(data: bytes) -> dict[str, tarfile.TarInfo]:
    return {m.name: m for m in members(data)}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A small tree with one of everything a normal user can create."""
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "usr/bin").mkdir(parents=True)
    su = root / "usr/bin/su"
    su.write_bytes(b"\x7fELF" + bytes(5000))
    su.chmod(0o4755)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "usr/bin/ls").symlink_to("../../bin/ls-real")
    (root / "usr/bin/zz-link").hardlink_to(su)
    (root / "usr/bin/aa-link").hardlink_to(su)
    os.mkfifo(root / "etc/initctl")
    for mount in ("dev", "proc", "sys"):
        (root / mount).mkdir()
        (root / mount / "leftover").write_text("host stuff")
    return root


# --- tree -> tar ------------------------------------------------------------------


def test_names_order_and_types(tree: Path) -> None:
    data = tar_bytes(tree)
    names = [m.name for m in members(data)]
    assert names == [
        "dev", "etc", "etc/initctl", "etc/passwd", "proc", "sys", "tmp",
        "usr", "usr/bin", "usr/bin/aa-link", "usr/bin/ls", "usr/bin/su", "usr/bin/zz-link",
    ]  # fmt: skip
    raw_names = [m.name for m in members(data)]
    assert not any(n.startswith("./") or n.startswith("/") for n in raw_names)
    assert b"dev/\x00" in data  # directories are written with a trailing slash
    m = by_name(data)
    assert m["etc/initctl"].isfifo()
    assert m["usr/bin/ls"].issym() and m["usr/bin/ls"].linkname == "../../bin/ls-real"


def test_hard_links_point_to_first_path_in_order(tree: Path) -> None:
    m = by_name(tar_bytes(tree))
    assert m["usr/bin/aa-link"].isreg() and m["usr/bin/aa-link"].size == 5004
    for name in ("usr/bin/su", "usr/bin/zz-link"):
        assert m[name].islnk() and m[name].linkname == "usr/bin/aa-link"


def test_modes_owners_and_empty_names(tree: Path) -> None:
    m = by_name(tar_bytes(tree))
    assert m["usr/bin/aa-link"].mode == 0o4755
    assert m["tmp"].mode == 0o1777
    assert m["etc/passwd"].uid == os.getuid() and m["etc/passwd"].gid == os.getgid()
    assert all(x.uname == "" and x.gname == "" for x in m.values())


def test_mount_point_dirs_are_written_empty(tree: Path) -> None:
    names = set(by_name(tar_bytes(tree)))
    assert {"dev", "proc", "sys"} <= names
    assert not any(n.startswith(("dev/", "proc/", "sys/")) for n in names)
    assert "dev/leftover" in by_name(tar_bytes(tree, empty_dirs=()))


def test_sockets_are_skipped_and_reported(tree: Path) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.fspath(tree / "etc/sock"))
        out = io.BytesIO()
        stats = write_tree(tree, out, epoch=EPOCH)
    assert stats.skipped == ("etc/sock",)
    assert "etc/sock" not in by_name(out.getvalue())


def test_stats_count_entries_and_bytes(tree: Path) -> None:
    stats = write_tree(tree, io.BytesIO(), epoch=EPOCH)
    assert stats.entries == 13 and stats.whiteouts == 0
    assert stats.file_bytes == len("root:x:0:0::/root:/bin/sh\n") + 5004


def test_mtimes_clamped_to_epoch(tree: Path) -> None:
    os.utime(tree / "etc/passwd", (0, 1000.75))
    m = by_name(tar_bytes(tree))
    assert m["etc/passwd"].mtime == 1000
    assert m["usr/bin/ls"].mtime == EPOCH


def test_same_tree_same_bytes_and_mtimes_above_epoch_do_not_matter(tree: Path) -> None:
    first = tar_bytes(tree)
    assert tar_bytes(tree) == first
    for path in (tree / "etc/passwd", tree / "usr"):
        os.utime(path, (EPOCH + 5, EPOCH + 99))
    assert tar_bytes(tree) == first
    os.utime(tree / "etc/passwd", (EPOCH - 5, EPOCH - 5))
    assert tar_bytes(tree) != first


def test_no_times_other_than_mtime_in_pax_headers(tree: Path) -> None:
    for m in members(tar_bytes(tree, read_xattrs=lambda p: {"security.capability": b"\x01"})):
        assert not {"atime", "ctime", "mtime"} & set(m.pax_headers)


def test_names_sorted_by_bytes_parents_first(tmp_path: Path) -> None:
    for rel in ("b/x", "a-b", "a/z", "a/b", "B", "é", "a b"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    names = [m.name for m in members(tar_bytes(tmp_path))]
    assert names == ["B", "a", "a/b", "a/z", "a b", "a-b", "b", "b/x", "é"]


def test_long_and_non_ascii_names_round_trip(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90) / ("ü" * 40)
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    names = [m.name for m in members(tar_bytes(tmp_path))]
    assert names[-1] == f"{'d' * 90}/{'ü' * 40}/f"


def test_capability_xattr_is_a_schily_pax_record(tree: Path) -> None:
    cap = b"\x01\x00\x00\x02\x80\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    seen: list[str] = []

    def reader(path: str) -> dict[str, bytes]:
        seen.append(path)
        return {"security.capability": cap} if path.endswith("usr/bin/aa-link") else {}

    data = tar_bytes(tree, read_xattrs=reader)
    m = by_name(data)
    record = m["usr/bin/aa-link"].pax_headers["SCHILY.xattr.security.capability"]
    assert record.encode("utf-8", "surrogateescape") == cap
    assert not any("SCHILY.xattr.security.capability" in m[n].pax_headers for n in m if n != "usr/bin/aa-link")
    assert all(os.path.isfile(p) and not os.path.islink(p) for p in seen)
    assert not any(p.endswith(("usr/bin/su", "usr/bin/zz-link")) for p in seen)  # links carry no xattrs
    listing = subprocess.run(["tar", "--xattrs", "-tvf", "-"], input=data, capture_output=True, check=True)
    assert b"usr/bin/aa-link" in listing.stdout


def test_read_xattrs_ignores_files_without_them(tree: Path) -> None:
    assert tarstream.read_xattrs(os.fspath(tree / "etc/passwd")) == {}


def fake_stat(mode: int, **kw: int) -> SimpleNamespace:
    fields = dict(st_mode=mode, st_uid=0, st_gid=0, st_size=0, st_mtime_ns=0, st_rdev=0)
    fields.update(kw)
    return SimpleNamespace(**fields)


def parse_header(header: bytes) -> tarfile.TarInfo:
    with tarfile.open(fileobj=io.BytesIO(header + bytes(1024))) as tf:
        return tf.next()


def test_header_carries_in_image_owners_and_devices() -> None:
    info = parse_header(tar_header("var/mail", fake_stat(stat.S_IFDIR | 0o2775, st_uid=0, st_gid=8), epoch=EPOCH))
    assert (info.name, info.uid, info.gid, info.mode, info.isdir()) == ("var/mail", 0, 8, 0o2775, True)
    null = fake_stat(stat.S_IFCHR | 0o666, st_rdev=os.makedev(1, 3), st_uid=100999, st_gid=100005)
    info = parse_header(tar_header("dev/null", null, epoch=EPOCH))
    assert info.ischr() and (info.devmajor, info.devminor) == (1, 3)
    assert (info.uid, info.gid) == (100999, 100005)
    info = parse_header(tar_header("big", fake_stat(stat.S_IFREG | 0o644, st_uid=2**22), epoch=EPOCH))
    assert info.uid == 2**22 and info.pax_headers["uid"] == str(2**22)


def test_header_refuses_sockets() -> None:
    with pytest.raises(KeyError):
        tar_header("run/s", fake_stat(stat.S_IFSOCK | 0o755), epoch=EPOCH)


def test_unreadable_file_is_a_layer_error(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = open

    def failing_open(path, *args, **kwargs):
        if os.fspath(path).endswith("etc/passwd"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(BuildError, match="etc/passwd"):
        write_tree(tree, io.BytesIO(), epoch=EPOCH)


def test_gnu_tar_lists_and_extracts_with_modes(tree: Path, tmp_path: Path) -> None:
    data = tar_bytes(tree, epoch=FUTURE)
    listing = subprocess.run(["tar", "-tvf", "-"], input=data, capture_output=True, check=True)
    assert listing.stderr == b""
    assert b"usr/bin/su link to usr/bin/aa-link" in listing.stdout
    dest = tmp_path / "gnu"
    dest.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", "-", "-C", dest], input=data, check=True)
    for rel in ("etc/passwd", "usr/bin/aa-link", "tmp", "usr/bin/ls", "etc/initctl", "dev"):
        want, got = os.lstat(tree / rel), os.lstat(dest / rel)
        assert (got.st_mode, got.st_uid, got.st_gid) == (want.st_mode, want.st_uid, want.st_gid), rel
        assert got.st_mtime_ns // 10**9 == want.st_mtime_ns // 10**9, rel
    assert os.lstat(dest / "usr/bin/su").st_ino == os.lstat(dest / "usr/bin/aa-link").st_ino


# --- snapshots and diffs ------------------------------------------------------------


def fingerprint(root: Path) -> dict[str, tuple]:
    """What layers must reproduce: type, mode, owner, mtime (s), content, link target, hard link group
    (mount point contents excepted)."""
    first: dict[tuple[int, int], str] = {}
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.relpath(dirpath, root) in tarstream.MOUNT_POINTS:
            dirnames[:], filenames[:] = [], []
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            s = os.lstat(path)
            content = target = group = None
            if stat.S_ISREG(s.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
                group = first.setdefault((s.st_dev, s.st_ino), rel) if s.st_nlink > 1 else None
            elif stat.S_ISLNK(s.st_mode):
                target = os.readlink(path)
            mtime = None if stat.S_ISLNK(s.st_mode) else s.st_mtime_ns // 10**9
            result[rel] = (stat.S_IFMT(s.st_mode), s.st_mode, s.st_uid, s.st_gid, mtime, content, target, group)
    for rel, row in result.items():
        if row[-1] is not None:
            result[rel] = row[:-1] + (sorted(r for r, x in result.items() if x[-1] == row[-1]),)
    return result


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.is_symlink() or path.exists():
        path.unlink()


def apply_layer(data: bytes, dest: Path) -> None:
    """A plain OCI applier: whiteouts delete from below, entries replace unless both are dirs."""
    dirs = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            parent, _, name = m.name.rpartition("/")
            if name.startswith(".wh."):
                remove(dest / parent / name[len(".wh.") :])
                continue
            target = dest / m.name
            if target.is_symlink() or target.exists():
                if not (m.isdir() and target.is_dir() and not target.is_symlink()):
                    remove(target)
            tf.extract(m, dest, set_attrs=True, numeric_owner=True)
            if m.isdir():
                dirs.append(m)
        for m in reversed(dirs):
            tf.utime(m, os.fspath(dest / m.name))


def layers_of_change(root: Path, change) -> tuple[bytes, bytes]:
    base = tar_bytes(root, epoch=FUTURE)
    before = snapshot(root)
    change(root)
    out = io.BytesIO()
    write_diff(root, before, out, epoch=FUTURE)
    return base, out.getvalue()


def assert_layers_rebuild(root: Path, layers: tuple[bytes, ...], dest: Path) -> None:
    dest.mkdir()
    for data in layers:
        apply_layer(data, dest)
    assert fingerprint(dest) == fingerprint(root)


def rich_change(root: Path) -> None:
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/bash\n")
    (root / "etc/new.d/deep").mkdir(parents=True)
    (root / "etc/new.d/deep/file").write_text("new")
    (root / "etc/initctl").unlink()
    shutil.rmtree(root / "usr/bin")
    (root / "usr/bin").write_text("dir became a file")
    (root / "tmp").rmdir()
    (root / "tmp").symlink_to("var/tmp")
    (root / "usr/lib").mkdir()
    (root / "usr/lib/a").write_text("a")
    (root / "usr/lib/b").hardlink_to(root / "usr/lib/a")
    (root / "etc/passwd-hard").hardlink_to(root / "etc/passwd")
    (root / "proc/ignored").write_text("mount point contents never count")
    (root / "dev").chmod(0o700)


def test_diff_with_base_rebuilds_final_tree(tree: Path, tmp_path: Path) -> None:
    layers = layers_of_change(tree, rich_change)
    assert_layers_rebuild(tree, layers, tmp_path / "applied")


def test_diff_holds_only_changes_parents_and_whiteouts(tree: Path) -> None:
    _, diff = layers_of_change(tree, rich_change)
    names = [m.name for m in members(diff)]
    assert names == [
        ".wh.tmp", "dev", "etc", "etc/.wh.initctl", "etc/new.d", "etc/new.d/deep",
        "etc/new.d/deep/file", "etc/passwd", "etc/passwd-hard", "proc", "tmp", "usr", "usr/.wh.bin", "usr/bin",
        "usr/lib", "usr/lib/a", "usr/lib/b",
    ]  # fmt: skip
    m = by_name(diff)
    assert m["etc/passwd-hard"].islnk() and m["etc/passwd-hard"].linkname == "etc/passwd"
    assert m["usr/bin"].isreg()


def test_whole_removed_directory_gets_one_whiteout(tree: Path) -> None:
    _, diff = layers_of_change(tree, lambda root: shutil.rmtree(root / "usr"))
    assert [m.name for m in members(diff)] == [".wh.usr"]


def test_unchanged_tree_gives_empty_diff(tree: Path) -> None:
    base, diff = layers_of_change(tree, lambda root: None)
    assert diff == bytes(1024) and len(base) > len(diff)


def test_diff_of_hard_link_to_unchanged_file_carries_the_content(tree: Path, tmp_path: Path) -> None:
    def change(root: Path) -> None:
        snap_before = snapshot(root)
        (root / "etc/passwd").chmod(0o600)
        assert snapshot(root).paths["etc/passwd"] != snap_before.paths["etc/passwd"]

    layers = layers_of_change(tree, change)
    assert [m.name for m in members(layers[1])] == ["etc", "etc/passwd"]
    assert_layers_rebuild(tree, layers, tmp_path / "applied")


NAMES = st.sampled_from(["a", "b", "c"])
NODE = st.deferred(
    lambda: st.one_of(
        st.tuples(st.just("file"), st.sampled_from([b"", b"x", b"yy"]), st.sampled_from([0o644, 0o755])),
        st.tuples(st.just("link"), st.sampled_from(["a", "../b", "/c"])),
        st.tuples(st.just("dir"), st.sampled_from([0o755, 0o700]), st.dictionaries(NAMES, NODE, max_size=3)),
    )
)
TREES = st.dictionaries(NAMES, NODE, max_size=3)


def build(spec: dict, root: Path, files: list[Path]) -> None:
    """Make ROOT hold SPEC, replacing what differs in type and rewriting what is left."""
    existing = {p.name for p in root.iterdir()}
    for name in existing - set(spec):
        remove(root / name)
    for name, node in sorted(spec.items()):
        path = root / name
        kind = node[0]
        if path.is_symlink() or kind == "link" or (path.exists() and (kind == "dir") != path.is_dir()):
            remove(path)
        if kind == "file":
            if path.exists() and path.read_bytes() != node[1]:
                path.unlink()
            if not path.exists():
                path.write_bytes(node[1])
            path.chmod(node[2])
            files.append(path)
        elif kind == "link":
            path.symlink_to(node[1])
        else:
            path.mkdir(exist_ok=True)
            path.chmod(0o755)
            build(node[2], path, files)
            path.chmod(node[1])


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=TREES, second=TREES, link=st.booleans())
def test_any_change_is_rebuilt_by_base_plus_diff(tmp_path: Path, first: dict, second: dict, link: bool) -> None:
    work = tmp_path / "case"
    remove(work)
    root = work / "root"
    root.mkdir(parents=True)
    build(first, root, [])

    def change(root: Path) -> None:
        files: list[Path] = []
        build(second, root, files)
        if link and len(files) >= 2:
            files[-1].unlink()
            files[-1].hardlink_to(files[0])

    layers = layers_of_change(root, change)
    assert_layers_rebuild(root, layers, work / "applied")


# --- tar -> blob ---------------------------------------------------------------------


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    path = tmp_path / "blobs"
    path.mkdir()
    return path


@pytest.fixture
def stream(tree: Path) -> bytes:
    big = tree / "usr/share/big"
    big.parent.mkdir(parents=True)
    big.write_bytes(b"".join(hashlib.sha256(str(i).encode()).digest() * 40 for i in range(3000)))
    return tar_bytes(tree)


class Dribble(io.RawIOBase):
    """A pipe-like stream that returns short, uneven reads."""

    def __init__(self, data: bytes, step: int = 777) -> None:
        self.data, self.pos, self.step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.step, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def stored(blob: LayerBlob, blobs: Path) -> bytes:
    assert sorted(p.name for p in blobs.iterdir()) == [blob.digest.removeprefix("sha256:")]
    data = (blobs / blob.digest.removeprefix("sha256:")).read_bytes()
    assert len(data) == blob.size and "sha256:" + hashlib.sha256(data).hexdigest() == blob.digest
    return data


@pytest.mark.parametrize(
    "compression, media_type",
    [
        ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("none", "application/vnd.oci.image.layer.v1.tar"),
    ],
)
def test_blob_digests_and_media_type(stream: bytes, blobs: Path, compression: str, media_type: str) -> None:
    blob = write_blob(io.BytesIO(stream), blobs, compression=compression)
    assert blob.media_type == media_type
    assert blob.diff_id == "sha256:" + hashlib.sha256(stream).hexdigest()
    assert blob.uncompressed_size == len(stream)
    assert stored(blob, blobs)
    assert oct(os.stat(blobs / blob.digest[7:]).st_mode & 0o777) == oct(0o644)


def test_gzip_blob_decompresses_with_gzip_tool_and_python(stream: bytes, blobs: Path) -> None:
    data = stored(write_blob(io.BytesIO(stream), blobs, compression="gzip"), blobs)
    assert gzip.decompress(data) == stream
    assert subprocess.run(["gzip", "-dc"], input=data, capture_output=True, check=True).stdout == stream
    subprocess.run(["gzip", "-t"], input=data, check=True)
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert len(data) < len(stream) // 4


def test_zstd_blob_decompresses_with_zstd_tool(stream: bytes, blobs: Path) -> None:
    data = stored(write_blob(io.BytesIO(stream), blobs, compression="zstd"), blobs)
    assert subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout == stream
    assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == stream


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_bytes_do_not_depend_on_workers_or_read_sizes(stream: bytes, blobs: Path, compression: str) -> None:
    digests = set()
    for workers, source in ((1, io.BytesIO(stream)), (2, Dribble(stream)), (3, Dribble(stream, 65536))):
        out = blobs / f"{workers}"
        out.mkdir()
        digests.add(write_blob(source, out, compression=compression, workers=workers).digest)
    assert len(digests) == 1


def test_gzip_chunks_join_into_one_member(blobs: Path) -> None:
    stream = os.urandom(blobwriter.CHUNK_SIZE * 3 + 4096) + bytes(1024)
    data = stored(write_blob(io.BytesIO(stream), blobs, compression="gzip", workers=2), blobs)
    member = zlib.decompressobj(31)
    assert member.decompress(data) == stream and member.eof and member.unused_data == b""


def test_layer_pipe_is_widened_and_other_streams_left_alone(stream: bytes) -> None:
    read, write = os.pipe()
    with os.fdopen(read, "rb") as reader, os.fdopen(write, "wb") as writer:
        blobwriter.widen_pipe(reader)
        assert fcntl.fcntl(writer.fileno(), fcntl.F_GETPIPE_SZ) == blobwriter.PIPE_SIZE
    blobwriter.widen_pipe(io.BytesIO(stream))
    blobwriter.widen_pipe(object())


def test_empty_tree_layer(tmp_path: Path, blobs: Path) -> None:
    (tmp_path / "root").mkdir()
    data = tar_bytes(tmp_path / "root")
    assert data == bytes(1024)
    blob = write_blob(io.BytesIO(data), blobs, compression="gzip")
    assert gzip.decompress(stored(blob, blobs)) == data


def test_existing_blob_is_kept_and_temp_dropped(stream: bytes, blobs: Path) -> None:
    first = write_blob(io.BytesIO(stream), blobs, compression="zstd")
    path = blobs / first.digest[7:]
    before = path.stat().st_ino
    assert write_blob(io.BytesIO(stream), blobs, compression="zstd") == first
    assert path.stat().st_ino == before
    assert [p.name for p in blobs.iterdir()] == [path.name]


class Broken(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self.inner = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self.inner.readinto(buf)
        if not n:
            raise OSError(errno.EIO, "Input/output error")
        return n


def test_failing_stream_leaves_nothing(stream: bytes, blobs: Path) -> None:
    with pytest.raises(BuildError, match="cannot read the layer tar stream: Input/output error"):
        write_blob(Broken(stream), blobs, compression="gzip")
    assert list(blobs.iterdir()) == []


@pytest.mark.parametrize("cut", [1, 4096, -1024, -1])
def test_truncated_stream_is_refused_and_leaves_nothing(stream: bytes, blobs: Path, cut: int) -> None:
    with pytest.raises(BuildError, match="ended early"):
        write_blob(io.BytesIO(stream[:cut]), blobs, compression="zstd")
    assert list(blobs.iterdir()) == []


def test_disk_full_names_the_directory(stream: bytes, blobs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tarstream.os, "fsync", full)
    with pytest.raises(BuildError, match=f"no space left writing a layer blob in {blobs}"):
        write_blob(io.BytesIO(stream), blobs, compression="none")
    assert list(blobs.iterdir()) == []


def test_missing_blobs_dir_and_unknown_compression(stream: bytes, blobs: Path) -> None:
    with pytest.raises(BuildError, match="missing"):
        write_blob(io.BytesIO(stream), blobs / "missing", compression="gzip")
    with pytest.raises(BuildError, match="unknown layer compression 'xz'"):
        write_blob(io.BytesIO(stream), blobs, compression="xz")


WRITE_TREE = """
import sys
from pathlib import Path
from ocistrap.rootfs.tarstream import write_tree
write_tree(Path(sys.argv[1]), sys.stdout.buffer, epoch=0)
"""


@pytest.mark.userns
def test_inside_a_user_namespace_owners_are_in_image_ids(tree: Path, blobs: Path) -> None:
    """As mapped root the walker sees the invoking user's files as uid 0, and says so."""
    proc = subprocess.Popen(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", WRITE_TREE, tree],
        stdout=subprocess.PIPE,
    )
    blob = write_blob(proc.stdout, blobs, compression="none")
    assert proc.wait() == 0
    infos = members(stored(blob, blobs))
    assert infos and all((m.uid, m.gid) == (0, 0) for m in infos)


def test_truncated_empty_file_is_not_a_change_but_new_content_is(tmp_path):
    import os


    (tmp_path / "lock").write_bytes(b"")
    (tmp_path / "data").write_bytes(b"")
    epoch = 1_000_000_000
    os.utime(tmp_path / "lock", (epoch + 5, epoch + 5))
    before = tarstream.snapshot(tmp_path)
    (tmp_path / "lock").write_bytes(b"")
    os.utime(tmp_path / "lock", (epoch + 99, epoch + 99))
    (tmp_path / "data").write_bytes(b"x")
    after = tarstream.snapshot(tmp_path).paths
    assert tarstream.changed_paths(before.paths, after, epoch=epoch) == {"data"}
    assert "lock" in tarstream.changed_paths(before.paths, after)
