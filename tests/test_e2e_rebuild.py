"""`ocistrap verify --rebuild` end to end, as an unprivileged user against deb.debian.org: an image
built from a lockfile is rebuilt and reproduced; the same image with one file of its layer changed
(and every digest above it made consistent again, so plain `verify` passes) is not, and the
report names that file."""

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from e2e_helpers import cache_dir, member_name, ocistrap, printed_digests, work  # noqa: F401  (fixtures)

from ocistrap.debian.lock import read as read_lock
from ocistrap.oci import keys, ocilayout, provenance
from ocistrap.oci.image import ANNOTATION_REF_NAME, MEDIA_TYPE_MANIFEST, Descriptor

pytestmark = [pytest.mark.e2e, pytest.mark.network]

SOURCE_DATE_EPOCH = "1700000000"
TAG = "test"
CHANGED = "etc/debian_version"


@pytest.fixture(scope="module")
def built(work: Path, cache_dir: Path) -> tuple[Path, Path, str]:
    """bookworm minbase with openssh-server (its postinst generates random host keys, which the
    build removes) locked, then built from the lock into an oci: layout: (lock, layout, digest)."""
    lock = work / "bookworm.lock"
    ocistrap("lock", "bookworm", "--variant", "minbase", "--include", "openssh-server", "--cache-dir", str(cache_dir),
             "-o", str(lock))
    layout = work / "image"
    result = ocistrap("build", "--lock", str(lock), "--cache-dir", str(cache_dir), "-o", f"oci:{layout}:{TAG}",
                      env={**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH})
    return lock, layout, printed_digests(result.stdout)[f"oci:{layout}:{TAG}"]


def test_an_image_built_from_a_lock_is_reproduced(built: tuple[Path, Path, str], cache_dir: Path) -> None:
    lock, layout, digest = built
    result = ocistrap("verify", f"oci:{layout}:{TAG}", "--rebuild", "--lock", str(lock), "--cache-dir", str(cache_dir))
    assert f"oci:{layout}:{TAG}: reproduced {digest} from {lock}" in result.stdout, result.stdout


def test_the_lock_comes_from_the_provenance_attestation(built: tuple[Path, Path, str], cache_dir: Path,
                                                        work: Path) -> None:
    lock, layout, digest = built
    attested = work / "attested"
    shutil.copytree(layout, attested)
    locked = read_lock(lock)
    statement = provenance.statement(f"oci:{attested}:{TAG}", digest, locked, provenance.parameters_from_lock(locked),
                                     provenance.new_run(int(SOURCE_DATE_EPOCH)))
    keys.generate(work / "signer.key", work / "signer.pub", "")
    envelope = provenance.attest(keys.load_private(work / "signer.key"), statement)
    ocilayout.put_bytes(attested, envelope)
    subject = ocilayout.read(attested, TAG)[1]
    artifact = ocilayout.put_artifact(attested, provenance.MEDIA_TYPE_ENVELOPE,
                                      [Descriptor.of(envelope, provenance.MEDIA_TYPE_ENVELOPE)], {}, subject=subject)
    ocilayout.write(attested, artifact, attested)
    result = ocistrap("verify", f"oci:{attested}:{TAG}", "--rebuild", "--cache-dir", str(cache_dir))
    assert f"oci:{attested}:{TAG}: reproduced {digest} from the lockfile of its provenance attestation " \
           f"({locked.digest()})" in result.stdout, result.stdout


def test_a_changed_file_is_named(built: tuple[Path, Path, str], cache_dir: Path, work: Path) -> None:
    lock, layout, digest = built
    tampered = work / "tampered"
    shutil.copytree(layout, tampered)
    changed = change_one_file(tampered, TAG, CHANGED)
    assert changed != digest
    ocistrap("verify", f"oci:{tampered}:{TAG}")  # every digest is consistent: only a rebuild can tell
    result = ocistrap("verify", f"oci:{tampered}:{TAG}", "--rebuild", "--lock", str(lock),
                      "--cache-dir", str(cache_dir), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert f"oci:{tampered}:{TAG}: not reproduced from {lock} (" in result.stdout
    assert f"image {changed}, rebuilt {digest}" in result.stdout
    assert any(line.strip().startswith("layer 0 (ocistrap minbase bookworm") and "differs" in line for line in lines)
    difference = [line.strip() for line in lines if line.strip().startswith("/")]
    assert difference[0].startswith(f"/{CHANGED}: content sha256:"), result.stdout
    assert len(difference) == 1, result.stdout


def test_an_image_pushed_to_a_registry_is_reproduced_from_a_fresh_cache(
        built: tuple[Path, Path, str], registry, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lock, layout, digest = built
    pushed = f"{registry.host}/ocistrap-test/rebuild:{TAG}"
    ocistrap("push", f"oci:{layout}:{TAG}", pushed)
    result = ocistrap("verify", pushed, "--rebuild", "--lock", str(lock), "--cache-dir", str(tmp_path / "fresh"))
    assert f"{pushed}: reproduced {digest} from {lock}" in result.stdout, result.stdout


def change_one_file(layout: Path, tag: str, path: str) -> str:
    """Change the bytes (not the size) of PATH in the first layer of the image TAG, then make every
    digest above it consistent again (diff_id, config, manifest, index.json); return the new digest."""
    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def put(data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob(digest).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    index = json.loads((layout / "index.json").read_text())
    entry = next(m for m in index["manifests"] if (m.get("annotations") or {}).get(ANNOTATION_REF_NAME) == tag)
    assert entry["mediaType"] == MEDIA_TYPE_MANIFEST
    manifest = json.loads(blob(entry["digest"]).read_bytes())
    config = json.loads(blob(manifest["config"]["digest"]).read_bytes())
    raw = bytearray(gzip.decompress(blob(manifest["layers"][0]["digest"]).read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(raw))) as tar:
        member = next(m for m in tar if member_name(m.name) == path)
    start, size = member.offset_data, member.size
    raw[start:start + size] = bytes(b"9" * (size - 1) + b"\n")
    manifest["layers"][0].update(put(gzip.compress(bytes(raw), mtime=0)))
    config["rootfs"]["diff_ids"][0] = "sha256:" + hashlib.sha256(raw).hexdigest()
    manifest["config"].update(put(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()))
    entry.update(put(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()))
    (layout / "index.json").write_text(json.dumps(index))
    return str(entry["digest"])
