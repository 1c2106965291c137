"""Reading oci-archive: and docker-archive: files: a small archive cannot unpack into a full disk."""

import gzip
import subprocess
import tarfile
from pathlib import Path

import pytest

from ocistrap.errors import TransportError
from ocistrap.transports import EXPANSION_FLOOR, EXPANSION_LIMIT, extract_archive


def test_a_compressed_archive_bomb_is_refused_before_it_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with gzip.open(archive, "wb") as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo("blobs/sha256/" + "0" * 64)
        info.size = EXPANSION_FLOOR + (1 << 20)
        tar.addfile(info, _Zeros(info.size))
    assert archive.stat().st_size * EXPANSION_LIMIT < EXPANSION_FLOOR
    with pytest.raises(TransportError, match=f"unpacks to more than {EXPANSION_LIMIT} times its size"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "blobs" / "sha256" / ("0" * 64)).exists()


def test_a_sparse_member_cannot_unpack_into_a_huge_file(tmp_path: Path) -> None:
    sparse = tmp_path / "in" / "blob"
    sparse.parent.mkdir()
    with open(sparse, "wb") as f:
        f.truncate(1 << 30)
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--sparse", "-C", str(sparse.parent), "-cf", str(archive), "blob"], check=True)
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(TransportError, match="refused as an archive bomb"):
        extract_archive(archive, tmp_path / "out")


def test_an_honest_gzipped_archive_unpacks(tmp_path: Path) -> None:
    archive = tmp_path / "ok.tar.gz"
    data = b"layer bytes " * 1000
    with gzip.open(archive, "wb") as packed, tarfile.open(fileobj=packed, mode="w") as tar:
        info = tarfile.TarInfo("blob")
        info.size = len(data)
        tar.addfile(info, _Zeros(0, data))
    extract_archive(archive, tmp_path / "out")
    assert (tmp_path / "out" / "blob").read_bytes() == data


class _Zeros:
    """A file of SIZE zero bytes (or DATA) that is never held in memory whole."""

    def __init__(self, size: int, data: bytes | None = None) -> None:
        self._left = size
        self._data = data

    def read(self, size: int = -1) -> bytes:
        if self._data is not None:
            data, self._data = self._data[:size], self._data[size:]
            return data
        count = min(self._left, size if size >= 0 else self._left)
        self._left -= count
        return bytes(count)
