import json

from ocistrap import schema
from ocistrap.oci import assemble, image, ocilayout
from ocistrap.oci.blobwriter import LayerBlob

BLOB = LayerBlob(digest="sha256:" + "a" * 64, size=10, diff_id="sha256:" + "b" * 64,
                 media_type=image.MEDIA_TYPE_LAYER_GZIP, uncompressed_size=20)
PROVENANCE = assemble.Provenance(suite="bookworm", mirror="http://deb.debian.org/debian",
                                 lock_digest="sha256:" + "c" * 64, release_sha256="d" * 64)


def write(tmp_path, options=assemble.ImageOptions(), arch="arm64"):
    ocilayout.init_layout(tmp_path)
    desc = assemble.write_image(tmp_path, arch, [assemble.Layer(BLOB, "ocistrap minbase bookworm")],
                                epoch=1700000000, options=options, provenance=PROVENANCE)
    manifest = json.loads(ocilayout.blob_path(tmp_path, desc.digest).read_bytes())
    config = json.loads(ocilayout.blob_path(tmp_path, manifest["config"]["digest"]).read_bytes())
    return desc, manifest, config


def test_manifest_and_config_validate_and_carry_provenance(tmp_path) -> None:
    desc, manifest, config = write(tmp_path)
    schema.validate(manifest, "oci-manifest", what="manifest")
    schema.validate(config, "oci-config", what="config")
    assert desc.platform == image.Platform("linux", "arm64", "v8")
    annotations = manifest["annotations"]
    assert annotations[image.ANNOTATION_VERSION] == "bookworm"
    assert annotations[image.ANNOTATION_CREATED] == "2023-11-14T22:13:20Z"
    assert annotations[assemble.ANNOTATION_LOCK] == PROVENANCE.lock_digest
    assert config["rootfs"]["diff_ids"] == [BLOB.diff_id]
    assert config["history"] == [{"created": "2023-11-14T22:13:20Z", "created_by": "ocistrap minbase bookworm"}]
    assert config["config"]["Cmd"] == ["bash"]


def test_user_settings_reach_the_config(tmp_path) -> None:
    options = assemble.ImageOptions(env=("LANG=C.UTF-8",), cmd=None, entrypoint=("/bin/sh", "-c"),
                                    workdir="/srv", user="nobody", labels={"a": "b"},
                                    annotations={"org.example": "x"})
    _, manifest, config = write(tmp_path, options)
    assert config["config"]["Env"] == [image.DEFAULT_PATH, "LANG=C.UTF-8"]
    assert "Cmd" not in config["config"]
    assert config["config"]["Entrypoint"] == ["/bin/sh", "-c"]
    assert (config["config"]["WorkingDir"], config["config"]["User"]) == ("/srv", "nobody")
    assert config["config"]["Labels"] == {"a": "b"}
    assert manifest["annotations"]["org.example"] == "x"


def test_user_path_replaces_the_default() -> None:
    assert assemble.ImageOptions(env=("PATH=/opt/bin",)).full_env() == ["PATH=/opt/bin"]


def test_same_inputs_same_digest(tmp_path) -> None:
    first, _, _ = write(tmp_path / "a")
    second, _, _ = write(tmp_path / "b")
    assert first.digest == second.digest
