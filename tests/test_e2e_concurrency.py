"""Three `ocistrap build` processes at once, sharing one cache and one `oci:` layout.

They race for the same .deb downloads, the same layer blobs and the same
index.json; all must succeed and the layout must hold every image whole. Two
are processes of one host; the third stands for another machine of the same
account on a shared volume: its own state directory, so its own cache key, and
every parsed index and expansion the others made is foreign to it (made again
and put in their place while the others use theirs).
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import ocistrap, printed_digests

from ocistrap.debian.cache import default_key_file

pytestmark = [pytest.mark.e2e, pytest.mark.network]

TAGS = ("one", "two", "elsewhere")
OTHER_MACHINE = "elsewhere"


def start_build(lockfile: Path, cache: Path, layout: Path, tag: str, tmp: Path) -> subprocess.Popen[str]:
    """A build of LOCKFILE into oci:LAYOUT:TAG, with its own TMPDIR and a label naming TAG;
    OTHER_MACHINE's with a state directory (and so a cache key) of its own."""
    tmp.mkdir(mode=0o700)
    env = {**os.environ, "TMPDIR": str(tmp), "XDG_RUNTIME_DIR": str(tmp)}
    if tag == OTHER_MACHINE:
        env["XDG_STATE_HOME"] = str(tmp / "state")
    argv = [sys.executable, "-m", "ocistrap", "build", "--lock", str(lockfile), "--cache-dir", str(cache),
            "--label", f"which={tag}", "-o", f"oci:{layout}:{tag}"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def blob_digests(layout: Path, digest: str) -> set[str]:
    """DIGEST and every blob it names, recursively (index -> manifests -> config and layers)."""
    document = json.loads((layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes())
    found = {digest}
    for descriptor in [*document.get("manifests", []), *document.get("layers", []),
                       *filter(None, [document.get("config"), document.get("subject")])]:
        if descriptor["mediaType"].endswith(("manifest.v1+json", "image.index.v1+json")):
            found |= blob_digests(layout, descriptor["digest"])
        else:
            found.add(descriptor["digest"])
    return found


@pytest.fixture(scope="module")
def concurrent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Lock bookworm's essential set, then build it thrice at once into one layout: (layout, tag -> digest)."""
    work = tmp_path_factory.mktemp("concurrency")
    cache, layout, lockfile = work / "cache", work / "layout", work / "bookworm.lock"
    ocistrap("lock", "bookworm", "--variant", "essential", "--no-updates", "--cache-dir", str(cache),
             "-o", str(lockfile))
    builds = {tag: start_build(lockfile, cache, layout, tag, work / f"tmp-{tag}") for tag in TAGS}
    digests = {}
    for tag, process in builds.items():
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, f"build {tag} failed ({process.returncode}):\n{err}"
        digests.update(printed_digests(out))
    return layout, {tag: digests[f"oci:{layout}:{tag}"] for tag in TAGS}


def test_every_build_verifies(concurrent: tuple[Path, dict[str, str]]) -> None:
    layout, digests = concurrent
    assert len(set(digests.values())) == len(TAGS), "the labels should make different images"
    for tag in TAGS:
        result = ocistrap("verify", f"oci:{layout}:{tag}")
        assert "ok" in result.stdout.lower(), result.stdout


def test_index_lists_every_tag_with_its_digest(concurrent: tuple[Path, dict[str, str]]) -> None:
    layout, digests = concurrent
    index = json.loads((layout / "index.json").read_text())
    tagged = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m["digest"]
              for m in index["manifests"]}
    assert {tag: tagged.get(tag) for tag in TAGS} == digests


def test_no_blob_is_lost_or_torn(concurrent: tuple[Path, dict[str, str]]) -> None:
    layout, _ = concurrent
    index = json.loads((layout / "index.json").read_text())
    named = set().union(*(blob_digests(layout, m["digest"]) for m in index["manifests"]))
    blobs = layout / "blobs" / "sha256"
    present = {f"sha256:{p.name}" for p in blobs.iterdir()}
    assert named <= present, f"lost: {sorted(named - present)}"
    for digest in named:
        assert hashlib.sha256((blobs / digest.removeprefix("sha256:")).read_bytes()).hexdigest() == \
            digest.removeprefix("sha256:"), f"{digest} is torn"
    expected = {"index.json", "oci-layout"}
    leftovers = [str(p.relative_to(layout)) for p in layout.rglob("*") if p.is_file()
                 and (p.parent != blobs or len(p.name) != 64) and p.name not in expected]
    assert not leftovers, f"temporary files left in the layout: {leftovers}"


def test_the_other_machine_built_with_a_cache_key_of_its_own(concurrent: tuple[Path, dict[str, str]]) -> None:
    layout, _ = concurrent
    theirs = layout.parent / f"tmp-{OTHER_MACHINE}" / "state" / "ocistrap" / "cache.key"
    assert theirs.is_file() and default_key_file().is_file()
    assert theirs.read_bytes() != default_key_file().read_bytes()
