"""How two layer tars differ, path by path (what `verify --rebuild` reports)."""

import io
import tarfile
from collections.abc import Sequence

from ocistrap.oci import layerdiff

Entry = tuple[str, bytes, str, int, int]  # name, content (b"" for a directory), kind, mode, uid


def tar(entries: Sequence[Entry]) -> io.BytesIO:
    """An uncompressed tar of ENTRIES: ("d" directory, "f" file, "l" symlink to the content)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name, content, kind, mode, uid in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, 1700000000
            if kind == "d":
                info.type = tarfile.DIRTYPE
                out.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, content.decode()
                out.addfile(info)
            else:
                info.size = len(content)
                out.addfile(info, io.BytesIO(content))
    buffer.seek(0)
    return buffer


IMAGE: list[Entry] = [
    ("etc", b"", "d", 0o755, 0),
    ("etc/content", b"one", "f", 0o644, 0),
    ("etc/mode", b"x", "f", 0o644, 0),
    ("etc/owner", b"x", "f", 0o644, 0),
    ("etc/same", b"same", "f", 0o644, 0),
    ("etc/size", b"short", "f", 0o644, 0),
    ("etc/type", b"x", "f", 0o644, 0),
    ("etc/zz-only-image", b"x", "f", 0o644, 0),
]
REBUILT: list[Entry] = [
    ("etc", b"", "d", 0o755, 0),
    ("etc/content", b"two", "f", 0o644, 0),
    ("etc/mode", b"x", "f", 0o755, 0),
    ("etc/only-rebuilt", b"x", "f", 0o644, 0),
    ("etc/owner", b"x", "f", 0o644, 100),
    ("etc/same", b"same", "f", 0o644, 0),
    ("etc/size", b"longer", "f", 0o644, 0),
    ("etc/type", b"mode", "l", 0o777, 0),
]


def test_each_difference_names_its_aspect_in_tree_order() -> None:
    found = layerdiff.differences(layerdiff.members(tar(IMAGE)), layerdiff.members(tar(REBUILT)))
    assert [d.path for d in found] == ["etc/content", "etc/mode", "etc/only-rebuilt", "etc/owner", "etc/size",
                                       "etc/type", "etc/zz-only-image"]
    lines = {d.path: str(d) for d in found}
    assert lines["etc/content"].startswith("/etc/content: content sha256:")
    assert "size" not in lines["etc/content"]
    assert lines["etc/mode"] == "/etc/mode: mode 0644 in the image, 0755 rebuilt"
    assert lines["etc/owner"] == "/etc/owner: owner 0:0 in the image, 100:100 rebuilt"
    assert lines["etc/size"].startswith("/etc/size: size 5 in the image, 6 rebuilt; content sha256:")
    assert lines["etc/type"].startswith("/etc/type: type file in the image, symlink rebuilt; mode 0644 in the "
                                        "image, 0777 rebuilt; size 1 in the image, 0 rebuilt")
    assert "target none in the image, mode rebuilt" in lines["etc/type"]
    assert lines["etc/only-rebuilt"] == "/etc/only-rebuilt: only in the rebuild (file)"
    assert lines["etc/zz-only-image"] == "/etc/zz-only-image: only in the image (file)"


def test_the_same_layer_has_no_differences() -> None:
    assert layerdiff.differences(layerdiff.members(tar(IMAGE)), layerdiff.members(tar(IMAGE))) == []


def test_the_same_entries_in_another_order() -> None:
    image, rebuilt = layerdiff.members(tar(IMAGE)), layerdiff.members(tar(IMAGE[:1] + IMAGE[1:][::-1]))
    assert layerdiff.differences(image, rebuilt) == []
    assert layerdiff.order_difference(image, rebuilt) == \
        "the same entries in another order: entry 1 is /etc/content in the image, /etc/zz-only-image rebuilt"
    assert layerdiff.order_difference(image, image) is None


def test_paths_are_named_alike_however_the_tar_spells_them() -> None:
    assert {layerdiff.path_of(n) for n in ("./etc/x", "etc/x/", "etc/x")} == {"etc/x"}
    assert layerdiff.path_of("./") == layerdiff.path_of(".") == ""
    assert sorted(["a/b", "a.b", "a"], key=layerdiff.tree_order) == ["a", "a/b", "a.b"]
