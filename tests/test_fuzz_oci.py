"""Hypothesis fuzz of the OCI JSON side and the lockfile: parse, or raise our own error; nothing else.

Targets: Descriptor.from_json, parse_reference, lock.loads, and verify() of an
`oci:` layout whose index.json or manifest has been mutated (the manifest
re-stored under its new digest, so verify reads past the hash check).
"""

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_helpers import build_image

from ocistrap.debian import lock
from ocistrap.errors import OcistrapError
from ocistrap.oci import image, ocilayout
from ocistrap.oci.image import Descriptor
from ocistrap.transports import parse_reference
from ocistrap.verify import verify

DIGEST = "sha256:" + "a" * 64
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=False) | st.text(max_size=12)
           | st.sampled_from([DIGEST, "sha256:", "sha512:" + "b" * 128, "", "0", "-1", image.MEDIA_TYPE_MANIFEST,
                              image.MEDIA_TYPE_INDEX, image.MEDIA_TYPE_CONFIG, image.MEDIA_TYPE_LAYER_GZIP]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=3), max_leaves=8)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place inside DOC (keys of objects, indexes of arrays), the root first."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from paths(value, (*prefix, index))


@st.composite
def mutated(draw: st.DrawFn, doc: Any, rounds: int = 3) -> Any:
    """DOC (a JSON value) with a few places replaced, deleted or given an extra member."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(min_value=1, max_value=rounds))):
        where = draw(st.sampled_from(list(paths(doc))))
        if not where:
            doc = draw(json_values)
            continue
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "extend"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "extend" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(json_values)
        else:
            parent[where[-1]] = draw(json_values)
    return doc


def raises_only_ours(call: Any) -> None:
    try:
        call()
    except OcistrapError:
        pass


# Descriptor.from_json

GOOD_DESCRIPTOR = {"mediaType": image.MEDIA_TYPE_MANIFEST, "digest": DIGEST, "size": 12,
                   "annotations": {image.ANNOTATION_REF_NAME: "t"},
                   "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}


@FUZZ
@given(mutated(GOOD_DESCRIPTOR))
def test_descriptor_from_json_parses_or_raises_image_error(doc: Any) -> None:
    raises_only_ours(lambda: Descriptor.from_json(doc))


@FUZZ
@given(json_values)
def test_descriptor_from_any_json_value_parses_or_raises_image_error(doc: Any) -> None:
    raises_only_ours(lambda: Descriptor.from_json(doc))


# parse_reference

reference_text = st.one_of(
    st.text(max_size=40),
    st.builds(lambda t, rest: f"{t}:{rest}",
              st.sampled_from(["oci", "oci-archive", "docker-archive", "tar", "docker", "containers-storage"]),
              st.text(alphabet=st.sampled_from("aZ09:/@._-+ \x00%sha256:" + "a" * 8), max_size=40)),
)


@FUZZ
@given(reference_text)
def test_parse_reference_parses_or_raises_transport_error(text: str) -> None:
    raises_only_ours(lambda: parse_reference(text))


# lock.loads

GOOD_LOCK = lock.Lockfile(
    mirror="http://deb.debian.org/debian", suite="bookworm", components=("main",), variant="minbase",
    include=("hello",), install_recommends=False,
    archives=(lock.LockedArchive("http://deb.debian.org/debian", "bookworm"),),
    architectures={"amd64": lock.LockedArch(
        releases=(lock.LockedRelease("dists/bookworm/InRelease", "c" * 64, "Sat, 01 Jan 2026 00:00:00 UTC",
                                     "stable", "bookworm"),),
        packages=(lock.LockedPackage("hello", "2.10-3", "amd64", "pool/main/h/hello/hello_2.10-3_amd64.deb",
                                     53_000, "d" * 64, "rest", source="hello", layer=1),))},
    layers=(lock.LockedLayer("tools", ("hello",)),),
).to_json()


def test_the_fuzzed_lockfile_starts_valid() -> None:
    assert lock.loads(json.dumps(GOOD_LOCK).encode(), what="lockfile").suite == "bookworm"


@FUZZ
@given(mutated(GOOD_LOCK))
def test_lock_loads_parses_or_raises_lock_error(doc: Any) -> None:
    raises_only_ours(lambda: lock.loads(json.dumps(doc).encode(), what="lockfile"))


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_lock_loads_of_any_bytes_raises_lock_error(data: bytes) -> None:
    raises_only_ours(lambda: lock.loads(data, what="lockfile"))


# verify of a fuzzed layout


@pytest.fixture(scope="module")
def good_layout(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Descriptor]:
    """A layout holding one small image tagged ``t``."""
    base = tmp_path_factory.mktemp("fuzz-layout")
    desc = build_image(base / "build")
    ocilayout.write(base / "build", desc, base / "out", "t")
    return base / "out", desc


def verify_copy(layout: Path, change: Any) -> None:
    """verify() a copy of LAYOUT after CHANGE(copy) edited it."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "layout"
        shutil.copytree(layout, copy)
        change(copy)
        raises_only_ours(lambda: verify(f"oci:{copy}:t"))


@FUZZ
@given(data=st.data())
def test_verify_of_a_fuzzed_index_raises_only_verify_errors(good_layout: tuple[Path, Descriptor],
                                                            data: st.DataObject) -> None:
    layout, _ = good_layout
    index = data.draw(mutated(json.loads((layout / "index.json").read_bytes())))
    verify_copy(layout, lambda copy: (copy / "index.json").write_text(json.dumps(index)))


@FUZZ
@given(data=st.data())
def test_verify_of_a_fuzzed_manifest_raises_only_verify_errors(good_layout: tuple[Path, Descriptor],
                                                               data: st.DataObject) -> None:
    layout, desc = good_layout
    manifest = data.draw(mutated(ocilayout.read_json(layout, desc)))

    def change(copy: Path) -> None:
        blob = json.dumps(manifest).encode()
        ocilayout.put_bytes(copy, blob)
        entry = Descriptor.of(blob, desc.media_type, platform=desc.platform,
                              annotations={image.ANNOTATION_REF_NAME: "t"})
        (copy / "index.json").write_bytes(image.canonical_json(image.make_index([entry])))

    verify_copy(layout, change)


@FUZZ
@given(st.binary(max_size=64))
def test_verify_of_an_index_that_is_not_json_raises_verify_error(good_layout: tuple[Path, Descriptor],
                                                                 data: bytes) -> None:
    verify_copy(good_layout[0], lambda copy: (copy / "index.json").write_bytes(data))
