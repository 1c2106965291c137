"""The OCI image model: digests, descriptors, platforms, config, manifest and index.

Pure data in, JSON-ready dicts and bytes out; nothing here touches the disk, so
the same inputs always give the same documents and therefore the same digests.
"""

import hashlib
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ocistrap.errors import BadReference, ImageError

MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_MEDIA_TYPES = frozenset({MEDIA_TYPE_INDEX, MEDIA_TYPE_DOCKER_MANIFEST_LIST})
MANIFEST_MEDIA_TYPES = frozenset({MEDIA_TYPE_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST})
CONFIG_MEDIA_TYPES = frozenset({MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_CONFIG})

_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
LAYER_COMPRESSION: Mapping[str, str | None] = {
    MEDIA_TYPE_LAYER: None,
    MEDIA_TYPE_LAYER_GZIP: "gzip",
    MEDIA_TYPE_LAYER_ZSTD: "zstd",
    _NONDISTRIBUTABLE: None,
    _NONDISTRIBUTABLE + "+gzip": "gzip",
    _NONDISTRIBUTABLE + "+zstd": "zstd",
    MEDIA_TYPE_DOCKER_LAYER_GZIP: "gzip",
}
"""Layer media types we can unpack, mapped to their compression."""

ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_BASE_NAME = "org.opencontainers.image.base.name"
ANNOTATION_VERSION = "org.opencontainers.image.version"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CMD = ("bash",)

_SHA256 = re.compile(r"sha256:([0-9a-f]{64})")
_REF_NAME = re.compile(
    r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*"
)


def sha256_digest(data: bytes) -> str:
    """Return the OCI digest string of DATA."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_digest(text: str) -> str:
    """Return the hex part of a ``sha256:<64 lowercase hex>`` digest, or raise ImageError."""
    match = _SHA256.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ImageError(
            f"{text!r} is not a sha256 digest",
            hint="expected 'sha256:' followed by 64 lowercase hex digits",
        )
    return match.group(1)


def is_ref_name(text: str) -> bool:
    """Whether TEXT is a valid ``org.opencontainers.image.ref.name`` (an image-layout tag)."""
    return _REF_NAME.fullmatch(text) is not None


@dataclass(frozen=True)
class Platform:
    """The os/architecture/variant triple of a manifest's target."""

    os: str
    architecture: str
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        doc = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            doc["variant"] = self.variant
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> "Platform":
        """Build a platform from its JSON form; ImageError unless os and architecture are strings."""
        if not isinstance(doc, Mapping):
            raise ImageError(f"malformed platform {doc!r}: not a JSON object")
        os_, architecture, variant = doc.get("os"), doc.get("architecture"), doc.get("variant")
        if not (isinstance(os_, str) and isinstance(architecture, str) and isinstance(variant, str | None)):
            raise ImageError(f"malformed platform {dict(doc)!r}: os, architecture and variant must be strings")
        return cls(os=os_, architecture=architecture, variant=variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_DEBIAN_ARCHES: Mapping[str, tuple[str, str | None]] = {
    "amd64": ("amd64", None),
    "arm64": ("arm64", "v8"),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v5"),
    "i386": ("386", None),
    "ppc64el": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64el": ("mips64le", None),
}


def debian_platform(arch: str) -> Platform:
    """Map a Debian architecture name (``armhf``) to its OCI platform (``linux/arm/v7``)."""
    try:
        architecture, variant = _DEBIAN_ARCHES[arch]
    except KeyError:
        raise ImageError(
            f"Debian architecture {arch!r} has no OCI platform mapping",
            hint="supported: " + ", ".join(sorted(_DEBIAN_ARCHES)),
        ) from None
    return Platform(os="linux", architecture=architecture, variant=variant)


@dataclass(frozen=True)
class Descriptor:
    """A typed, sized, content-addressed reference to a blob."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    platform: Platform | None = None

    def __post_init__(self) -> None:
        parse_digest(self.digest)
        if not isinstance(self.size, int) or self.size < 0:
            raise ImageError(f"descriptor {self.digest}: size {self.size!r} is not a byte count")

    @classmethod
    def of(cls, data: bytes, media_type: str, **extra: Any) -> "Descriptor":
        """Describe the blob DATA."""
        return cls(media_type=media_type, digest=sha256_digest(data), size=len(data), **extra)

    @property
    def hex(self) -> str:
        return parse_digest(self.digest)

    @property
    def ref_name(self) -> str | None:
        return self.annotations.get(ANNOTATION_REF_NAME)

    def with_annotations(self, annotations: Mapping[str, str]) -> "Descriptor":
        return Descriptor(self.media_type, self.digest, self.size, dict(annotations), self.platform)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            doc["annotations"] = dict(self.annotations)
        if self.platform is not None:
            doc["platform"] = self.platform.to_json()
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> "Descriptor":
        """Build a descriptor from its JSON form; ImageError if a field is missing or of the wrong type."""
        if not isinstance(doc, Mapping):
            raise ImageError(f"malformed descriptor {doc!r}: not a JSON object")
        media_type, size, annotations = doc.get("mediaType"), doc.get("size"), doc.get("annotations") or {}
        problem = ("mediaType is not a string" if not isinstance(media_type, str)
                   else "size is not a byte count" if not isinstance(size, int) or isinstance(size, bool)
                   else "annotations are not strings" if not _string_map(annotations) else None)
        if problem:
            raise ImageError(f"malformed descriptor {dict(doc)!r}: {problem}")
        platform = doc.get("platform")
        return cls(media_type=media_type, digest=doc.get("digest"), size=size, annotations=dict(annotations),
                   platform=Platform.from_json(platform) if platform is not None else None)


def _string_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def canonical_json(doc: Any) -> bytes:
    """Serialise DOC deterministically: sorted keys, no whitespace, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def rfc3339(created: datetime | int | float) -> str:
    """Format a creation time (aware datetime or Unix epoch seconds) as RFC 3339 UTC, whole seconds.

    Naive datetimes are taken as UTC so that ``SOURCE_DATE_EPOCH`` style inputs
    never depend on the build machine's time zone.
    """
    if isinstance(created, datetime):
        moment = created if created.tzinfo else created.replace(tzinfo=timezone.utc)
    else:
        moment = datetime.fromtimestamp(int(created), timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_config(
    *,
    arch: str,
    created: datetime | int | float,
    diff_ids: Sequence[str],
    env: Sequence[str] | None = None,
    cmd: Sequence[str] | None = DEFAULT_CMD,
    entrypoint: Sequence[str] | None = None,
    workdir: str | None = None,
    user: str | None = None,
    labels: Mapping[str, str] | None = None,
    history: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Build an image config for Debian architecture ARCH with one history entry per layer.

    HISTORY gives each layer's ``created_by``; it defaults to ``ocistrap``.
    """
    for diff_id in diff_ids:
        parse_digest(diff_id)
    created_by = list(history) if history is not None else ["ocistrap"] * len(diff_ids)
    if len(created_by) != len(diff_ids):
        raise ImageError(f"{len(created_by)} history entries for {len(diff_ids)} layers")
    platform = debian_platform(arch)
    stamp = rfc3339(created)
    exec_config: dict[str, Any] = {"Env": list(env) if env is not None else [DEFAULT_PATH]}
    optional = {
        "Cmd": list(cmd) if cmd is not None else None,
        "Entrypoint": list(entrypoint) if entrypoint is not None else None,
        "WorkingDir": workdir,
        "User": user,
        "Labels": dict(labels) if labels else None,
    }
    exec_config.update({k: v for k, v in optional.items() if v is not None})
    config: dict[str, Any] = {
        "created": stamp,
        **platform.to_json(),
        "config": exec_config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": stamp, "created_by": text} for text in created_by],
    }
    return config


def make_manifest(
    config: Descriptor, layers: Sequence[Descriptor], annotations: Mapping[str, str] | None = None,
    *, layer_types: Collection[str] = LAYER_COMPRESSION.keys(),
) -> dict[str, Any]:
    """Build an image manifest referring to CONFIG and LAYERS (base layer first).

    LAYER_TYPES are the layer media types allowed: file system layers unless
    the manifest carries something else (a signature's payload).
    """
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise ImageError(f"config {config.digest} has media type {config.media_type}, not a config type")
    for layer in layers:
        if layer.media_type not in layer_types:
            raise ImageError(f"layer {layer.digest} has unsupported media type {layer.media_type}")
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest


def make_index(
    manifests: Sequence[Descriptor], annotations: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Build an image index over MANIFESTS (one per platform, or tagged entries of a layout)."""
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [m.to_json() for m in manifests],
    }
    if annotations:
        index["annotations"] = dict(annotations)
    return index


# ---- Docker image references ----

DOCKER_HUB = "docker.io"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_DOCKER_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?")


def split_docker_reference(image: str, text: str | None = None) -> tuple[str, str | None, str | None]:
    """Split ``[HOST[:PORT]/]NAME[:TAG][@DIGEST]`` into (name, tag, digest), checking the grammar."""
    match = _DOCKER_REFERENCE.fullmatch(image)
    if match is None or len(match.group("name")) > 255:
        raise BadReference(
            f"{text or image!r}: {image!r} is not a valid image name",
            hint="names are lowercase [HOST[:PORT]/]PATH, with an optional :TAG and @DIGEST",
        )
    return match.group("name"), match.group("tag"), match.group("digest")


def split_name(name: str) -> tuple[str, str]:
    """Split a docker name into (registry, repository) as Docker does.

    The first component is a registry when it has a ``.`` or ``:`` or is
    ``localhost``; otherwise the image is on Docker Hub, where one-component
    names live under ``library/``.
    """
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DOCKER_HUB, name if sep else f"library/{name}"
