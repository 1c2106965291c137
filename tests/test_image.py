"""The pure image model: digests, descriptors, platforms, config/manifest/index, and their schemas."""

import json
from datetime import datetime, timedelta, timezone
from importlib import resources

import pytest

from ocistrap import schema
from ocistrap.oci import image
from ocistrap.oci.image import (
    Descriptor,
    ImageError,
    Platform,
    canonical_json,
    debian_platform,
    make_config,
    make_index,
    make_manifest,
    parse_digest,
    sha256_digest,
)
from ocistrap.schema import SchemaError, validate

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
HEX_A = "a" * 64
DIGEST_A = f"sha256:{HEX_A}"


def layer(digest: str = DIGEST_A, size: int = 10) -> Descriptor:
    return Descriptor(image.MEDIA_TYPE_LAYER_GZIP, digest, size)


def config_descriptor() -> Descriptor:
    return Descriptor.of(canonical_json(make_config(arch="amd64", created=0, diff_ids=[DIGEST_A])), image.MEDIA_TYPE_CONFIG)


def test_sha256_digest_of_known_bytes():
    assert sha256_digest(b"") == EMPTY
    assert parse_digest(EMPTY) == EMPTY.removeprefix("sha256:")


@pytest.mark.parametrize(
    "text",
    ["", "sha256:", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "sha512:" + "a" * 128, "a" * 64, f" {DIGEST_A}", None],
)
def test_parse_digest_rejects(text):
    with pytest.raises(ImageError, match="not a sha256 digest"):
        parse_digest(text)


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("amd64", Platform("linux", "amd64")),
        ("arm64", Platform("linux", "arm64", "v8")),
        ("armhf", Platform("linux", "arm", "v7")),
        ("armel", Platform("linux", "arm", "v5")),
        ("i386", Platform("linux", "386")),
        ("ppc64el", Platform("linux", "ppc64le")),
        ("s390x", Platform("linux", "s390x")),
        ("riscv64", Platform("linux", "riscv64")),
        ("mips64el", Platform("linux", "mips64le")),
    ],
)
def test_debian_platform(arch, expected):
    assert debian_platform(arch) == expected


def test_debian_platform_unknown_names_the_supported_ones():
    with pytest.raises(ImageError, match="'hurd-i386'") as info:
        debian_platform("hurd-i386")
    assert "armhf" in str(info.value)


def test_platform_text_and_json():
    platform = Platform("linux", "arm", "v7")
    assert str(platform) == "linux/arm/v7"
    assert Platform.from_json(platform.to_json()) == platform
    assert Platform("linux", "amd64").to_json() == {"architecture": "amd64", "os": "linux"}


def test_descriptor_json_round_trip_and_schema():
    desc = Descriptor(
        image.MEDIA_TYPE_MANIFEST, DIGEST_A, 7682, {image.ANNOTATION_REF_NAME: "bookworm"}, debian_platform("arm64")
    )
    doc = desc.to_json()
    assert doc == {
        "mediaType": image.MEDIA_TYPE_MANIFEST,
        "digest": DIGEST_A,
        "size": 7682,
        "annotations": {"org.opencontainers.image.ref.name": "bookworm"},
        "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"},
    }
    validate(doc, "oci-descriptor", what="descriptor")
    assert Descriptor.from_json(doc) == desc
    assert desc.ref_name == "bookworm" and desc.hex == HEX_A
    assert hash(desc) == hash(desc.with_annotations({}))


def test_minimal_descriptor_has_no_optional_keys():
    assert Descriptor.of(b"", image.MEDIA_TYPE_CONFIG).to_json() == {
        "mediaType": image.MEDIA_TYPE_CONFIG,
        "digest": EMPTY,
        "size": 0,
    }


@pytest.mark.parametrize(
    "doc",
    [
        {"digest": DIGEST_A, "size": 1},
        {"mediaType": "a/b", "digest": "SHA256:" + HEX_A, "size": 1},
        {"mediaType": "a/b", "digest": DIGEST_A, "size": -1},
        {"mediaType": "a/b", "digest": DIGEST_A, "size": "1"},
        {"mediaType": "a/b", "digest": DIGEST_A, "size": 1, "platform": {"os": "linux"}},
    ],
)
def test_bad_descriptors_are_refused(doc):
    with pytest.raises(ImageError):
        Descriptor.from_json(doc)
    with pytest.raises(SchemaError, match="descriptor: invalid"):
        validate(doc, "oci-descriptor", what="descriptor")


def test_make_config_defaults():
    config = make_config(arch="arm64", created=1700000000, diff_ids=[DIGEST_A, EMPTY])
    validate(config, "oci-config", what="config")
    assert config["architecture"] == "arm64" and config["variant"] == "v8" and config["os"] == "linux"
    assert config["created"] == "2023-11-14T22:13:20Z"
    assert config["config"] == {"Env": [image.DEFAULT_PATH], "Cmd": ["bash"]}
    assert config["rootfs"] == {"type": "layers", "diff_ids": [DIGEST_A, EMPTY]}
    assert config["history"] == [{"created": "2023-11-14T22:13:20Z", "created_by": "ocistrap"}] * 2


def test_make_config_execution_settings():
    config = make_config(
        arch="amd64",
        created=datetime(2024, 1, 2, 3, 4, 5, 999, tzinfo=timezone(timedelta(hours=2))),
        diff_ids=[DIGEST_A],
        env=["PATH=/bin", "LANG=C.UTF-8"],
        cmd=None,
        entrypoint=["/bin/sh", "-c"],
        workdir="/root",
        user="1000:1000",
        labels={"org.example.suite": "bookworm"},
        history=["mmdebstrap-like bootstrap of bookworm"],
    )
    validate(config, "oci-config", what="config")
    assert config["created"] == "2024-01-02T01:04:05Z"
    assert config["config"] == {
        "Env": ["PATH=/bin", "LANG=C.UTF-8"],
        "Entrypoint": ["/bin/sh", "-c"],
        "WorkingDir": "/root",
        "User": "1000:1000",
        "Labels": {"org.example.suite": "bookworm"},
    }
    assert config["history"][0]["created_by"] == "mmdebstrap-like bootstrap of bookworm"


def test_make_config_refuses_mismatched_history_and_bad_diff_ids():
    with pytest.raises(ImageError, match="2 history entries for 1 layers"):
        make_config(arch="amd64", created=0, diff_ids=[DIGEST_A], history=["a", "b"])
    with pytest.raises(ImageError, match="not a sha256 digest"):
        make_config(arch="amd64", created=0, diff_ids=["sha256:nothex"])


def test_naive_datetimes_are_utc():
    assert image.rfc3339(datetime(2024, 5, 6, 7, 8, 9)) == "2024-05-06T07:08:09Z"
    assert image.rfc3339(0) == "1970-01-01T00:00:00Z"


def test_manifest_and_index_validate():
    manifest = make_manifest(config_descriptor(), [layer()], {image.ANNOTATION_VERSION: "12"})
    validate(manifest, "oci-manifest", what="manifest")
    assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == image.MEDIA_TYPE_MANIFEST
    assert manifest["annotations"] == {"org.opencontainers.image.version": "12"}
    desc = Descriptor.of(canonical_json(manifest), image.MEDIA_TYPE_MANIFEST, platform=debian_platform("amd64"))
    index = make_index([desc], {image.ANNOTATION_CREATED: "2024-01-01T00:00:00Z"})
    validate(index, "oci-index", what="index")
    assert index["manifests"] == [desc.to_json()]
    assert "annotations" not in make_index([])


def test_make_manifest_refuses_wrong_media_types():
    with pytest.raises(ImageError, match="unsupported media type"):
        make_manifest(config_descriptor(), [Descriptor("text/plain", DIGEST_A, 1)])
    with pytest.raises(ImageError, match="not a config type"):
        make_manifest(layer(), [layer()])


@pytest.mark.parametrize(
    "schema, change",
    [
        ("oci-manifest", lambda d: d.update(schemaVersion=1)),
        ("oci-manifest", lambda d: d.update(mediaType=image.MEDIA_TYPE_INDEX)),
        ("oci-manifest", lambda d: d["layers"][0].update(digest="sha256:" + "A" * 64)),
        ("oci-manifest", lambda d: d.pop("config")),
        ("oci-manifest", lambda d: d.update(annotations={"k": 1})),
        ("oci-index", lambda d: d.pop("manifests")),
        ("oci-index", lambda d: d["manifests"][0].update(mediaType="not a type")),
        ("oci-config", lambda d: d.pop("rootfs")),
        ("oci-config", lambda d: d["rootfs"].update(type="squashfs")),
        ("oci-config", lambda d: d.update(created="yesterday")),
        ("oci-config", lambda d: d["config"].update(Env=["NOEQUALS"])),
        ("oci-config", lambda d: d["config"].update(ExposedPorts={"80/tcp": {"x": 1}})),
        # through the definitions the OCI schemas share (oci-defs.schema.json)
        ("oci-manifest", lambda d: d["config"].update(digest="sha512:" + "a" * 64)),
        ("oci-manifest", lambda d: d["layers"][0].update(size=-1)),
        ("oci-manifest", lambda d: d.update(subject={"mediaType": image.MEDIA_TYPE_MANIFEST, "size": 1})),
        ("oci-manifest", lambda d: d.update(artifactType="no-slash")),
        ("oci-index", lambda d: d["manifests"][0].update(platform={"architecture": "amd64"})),
        ("oci-index", lambda d: d["manifests"][0].update(platform={"architecture": "arm64", "os": "linux",
                                                                      "os.features": "not a list"})),
        ("oci-index", lambda d: d["manifests"][0].update(annotations={"k": None})),
        ("oci-index", lambda d: d.update(annotations=["k"])),
        ("oci-descriptor", lambda d: d.update(digest="sha256:short")),
        ("oci-descriptor", lambda d: d.update(urls="http://x")),
        ("oci-descriptor", lambda d: d.pop("mediaType")),
        ("oci-config", lambda d: d["rootfs"].update(diff_ids=["sha256:" + "A" * 64])),
        ("oci-config", lambda d: d["config"].update(Cmd="sh -c x")),
    ],
)
def test_schemas_reject_violations(schema, change):
    docs = {
        "oci-manifest": make_manifest(config_descriptor(), [layer()]),
        "oci-index": make_index([Descriptor.of(b"{}", image.MEDIA_TYPE_MANIFEST, platform=debian_platform("arm64"))]),
        "oci-descriptor": layer().to_json(),
        "oci-config": make_config(arch="amd64", created=0, diff_ids=[DIGEST_A]),
    }
    doc = json.loads(json.dumps(docs[schema]))
    validate(doc, schema, what="before")
    change(doc)
    with pytest.raises(SchemaError, match="^after: invalid"):
        validate(doc, schema, what="after")


def test_config_accepts_null_optional_fields():
    config = make_config(arch="amd64", created=0, diff_ids=[])
    config.update(author=None, history=None, config={"Cmd": None, "Env": None})
    validate(config, "oci-config", what="config")


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        return [*([node["$ref"]] if "$ref" in node else []), *(r for v in node.values() for r in _refs(v))]
    return [r for v in node for r in _refs(v)] if isinstance(node, list) else []


SCHEMAS = sorted(p.name.removesuffix(".schema.json") for p in resources.files("ocistrap.specs").iterdir()
                 if p.name.endswith(".schema.json"))


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_reference_of_a_schema_resolves_in_the_registry(name):
    resolver = schema.registry().resolver(schema.load(name)["$id"])
    assert all(resolver.lookup(ref).contents is not None for ref in _refs(schema.load(name)))


def test_the_oci_schemas_define_nothing_of_their_own_that_they_share():
    """Descriptor, digest, platform and annotations live once, in oci-defs."""
    for name in ("oci-descriptor", "oci-manifest", "oci-index", "oci-config"):
        assert "$defs" not in schema.load(name)
        assert any(ref.startswith("oci-defs.schema.json#/$defs/") for ref in _refs(schema.load(name)))


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": [1, {"d": "é", "c": None}]}) == '{"a":[1,{"c":null,"d":"é"}],"b":1}'.encode()


def test_same_inputs_give_the_same_digests():
    def build(order):
        labels = dict(order)
        config = make_config(arch="armhf", created=1234, diff_ids=[DIGEST_A], labels=labels)
        config_desc = Descriptor.of(canonical_json(config), image.MEDIA_TYPE_CONFIG)
        return sha256_digest(canonical_json(make_manifest(config_desc, [layer()])))

    pairs = [("x.one", "1"), ("x.two", "2")]
    assert build(pairs) == build(list(reversed(pairs)))
    assert build(pairs) != build([("x.one", "1")])


@pytest.mark.parametrize(
    "text, ok",
    [
        ("bookworm", True),
        ("v1.0.0-vendor.0", True),
        ("debian/bookworm:2024", True),
        ("a--b", True),
        ("a_b", True),
        ("", False),
        ("-lead", False),
        ("trail.", False),
        ("a b", False),
        ("a//b", False),
        ("a---b", False),
    ],
)
def test_ref_names(text, ok):
    assert image.is_ref_name(text) is ok
