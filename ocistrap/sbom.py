"""SBOMs: an SPDX 2.3 document per image, made from the lockfile, attached as an OCI referrer.

The document is a pure function of the lockfile, so the same lock gives the
same SBOM byte for byte. Each installed package is an SPDX package with its
version, architecture, source package, the .deb's SHA256 and the mirror URL
of its pool file, and is ``DESCRIBED_BY`` the signed Release (itself an SPDX
package with its SHA256) whose index listed it. The document goes into the
image's layout as an artifact manifest whose ``subject`` is the image
manifest: registries index it as a referrer (or under the ``sha256-<hex>``
tag), ``oci:`` layouts keep it as an untagged entry of ``index.json`` and as a
plain ``.spdx.json`` file.
"""

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ocistrap import __version__, log
from ocistrap.errors import OcistrapError
from ocistrap.image import (
    ANNOTATION_CREATED,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    debian_platform,
)
from ocistrap.lock import LockedPackage, Lockfile
from ocistrap.transports import Reference, TransportError, atomic_write_bytes, oci, registry

FORMATS = ("spdx",)
MEDIA_TYPE_SPDX = "application/spdx+json"
MEDIA_TYPE_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
_SPDX_ID = re.compile(r"[^A-Za-z0-9.-]")


class SbomError(OcistrapError):
    """An SBOM cannot be made, found or read."""


def _spdx_id(kind: str, *parts: str) -> str:
    return f"SPDXRef-{kind}-" + "-".join(_SPDX_ID.sub("-", p) for p in parts)


def source_of(package: LockedPackage) -> tuple[str, str]:
    """(name, version) of the Debian source package: ``Source: name (version)`` or the binary's own."""
    name, _, rest = package.source.partition(" ")
    version = rest.strip().removeprefix("(").removesuffix(")").strip()
    return (name or package.name), (version or package.version)


def purl(package: LockedPackage, lock: Lockfile) -> str:
    """The package URL, with its source package as ``upstream`` when that differs from the binary."""
    source, source_version = source_of(package)
    qualifiers = f"arch={package.architecture}&distro=debian-{lock.suite}"
    if source != package.name or source_version != package.version:
        qualifiers += f"&upstream={source}" + (f"%40{source_version}" if source_version != package.version else "")
    return f"pkg:deb/debian/{package.name}@{package.version.replace(':', '%3A')}?{qualifiers}"


def spdx(lock: Lockfile, arch: str, *, created: str) -> dict[str, Any]:
    """The SPDX 2.3 document of ARCH's image built from LOCK (CREATED: RFC 3339, e.g. the image's date)."""
    entry = lock.architectures.get(arch)
    if entry is None:
        raise SbomError(f"the lockfile has no {arch} packages")
    lock_hex = lock.digest().removeprefix("sha256:")
    releases = [_release_package(lock, n, release) for n, release in enumerate(entry.releases)]
    packages = [_deb_package(lock, p) for p in sorted(entry.packages, key=lambda p: (p.name, p.architecture))]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": p["SPDXID"]} for p in packages]
    relationships += [{"spdxElementId": package["SPDXID"], "relationshipType": "DESCRIBED_BY",
                       "relatedSpdxElement": releases[p.archive]["SPDXID"]}
                      for package, p in zip(packages, sorted(entry.packages, key=lambda p: (p.name, p.architecture)))]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"debian-{lock.suite}-{lock.variant}-{arch}",
        "documentNamespace": f"https://ocistrap.dev/spdx/{lock.suite}/{arch}/{lock_hex}",
        "comment": f"The packages of an ocistrap image for {debian_platform(arch)}, from lockfile sha256:{lock_hex}.",
        "creationInfo": {"created": created, "creators": [f"Tool: ocistrap-{__version__}"]},
        "packages": packages + releases,
        "relationships": relationships,
    }


def _deb_package(lock: Lockfile, p: LockedPackage) -> dict[str, Any]:
    source, source_version = source_of(p)
    archive = lock.archives[p.archive]
    return {
        "SPDXID": _spdx_id("Package-deb", p.name, p.architecture),
        "name": p.name,
        "versionInfo": p.version,
        "packageFileName": p.filename.rpartition("/")[2],
        "downloadLocation": lock.package_url(p),
        "filesAnalyzed": False,
        "checksums": [{"algorithm": "SHA256", "checksumValue": p.sha256}],
        "sourceInfo": f"built from Debian source package {source} {source_version}; "
                      f"listed in the signed {archive.suite} index of {archive.mirror}",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "supplier": "Organization: Debian",
        "primaryPackagePurpose": "INSTALL",
        "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                          "referenceLocator": purl(p, lock)}],
    }


def _release_package(lock: Lockfile, number: int, release: Any) -> dict[str, Any]:
    archive = lock.archives[number]
    return {
        "SPDXID": _spdx_id("Release", str(number), archive.suite),
        "name": f"{archive.suite} {release.path.rpartition('/')[2]}",
        "versionInfo": release.date,
        "downloadLocation": archive.url(release.path),
        "filesAnalyzed": False,
        "checksums": [{"algorithm": "SHA256", "checksumValue": release.sha256}],
        "comment": f"the OpenPGP-signed Release of {archive.suite} ({release.codename}) that pins every "
                   f"package index and, through them, every .deb listed with it",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OTHER",
    }


def document_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"


# --- as an OCI artifact ---------------------------------------------------------------------


@dataclass(frozen=True)
class Attached:
    """An SBOM artifact manifest in a layout, and the image manifest it is about."""

    artifact: Descriptor
    subject: Descriptor
    arch: str


def write_artifact(layout: Path, document: dict[str, Any], subject: Descriptor, *, created: str) -> Descriptor:
    """Store DOCUMENT and an artifact manifest referring to SUBJECT in LAYOUT; return the manifest's descriptor."""
    data = document_bytes(document)
    oci.put_bytes(layout, data)
    oci.put_bytes(layout, EMPTY_JSON)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": MEDIA_TYPE_SPDX,
        "config": Descriptor.of(EMPTY_JSON, MEDIA_TYPE_EMPTY).to_json(),
        "layers": [Descriptor.of(data, MEDIA_TYPE_SPDX).to_json()],
        "subject": Descriptor(subject.media_type, subject.digest, subject.size).to_json(),
        "annotations": {ANNOTATION_CREATED: created},
    }
    return oci.put_json(layout, manifest, MEDIA_TYPE_MANIFEST)


def deliver(layout: Path, attached: Sequence[Attached], ref: Reference, *, tls_verify: bool | None = None) -> None:
    """Attach the SBOMs at REF, which already holds their images (registries and ``oci:`` layouts)."""
    if ref.transport == "docker":
        for item in attached:
            registry.push_referrer(layout, item.artifact, ref, tls_verify=tls_verify)
    elif ref.transport == "oci":
        assert ref.path is not None
        for item in attached:
            oci.write(layout, item.artifact, ref.path)
            sbom = oci.blob_path(layout, _layer(oci.read_json(layout, item.artifact), str(ref)).digest)
            atomic_write_bytes(ref.path / f"{ref.tag or 'image'}.{item.arch}.spdx.json", sbom.read_bytes())
    elif attached:
        log.get().info(f"{ref}: {ref.transport}: keeps no referrers, so the SBOM is not attached there")


def _layer(manifest: dict[str, Any], shown: str) -> Descriptor:
    layers = manifest.get("layers") or []
    if len(layers) != 1:
        raise SbomError(f"{shown}: the SBOM artifact has {len(layers)} layers, not one")
    return Descriptor.from_json(layers[0])


# --- reading it back ------------------------------------------------------------------------


def read(ref: Reference, *, platform_arch: str | None = None, tls_verify: bool | None = None) -> bytes:
    """The SPDX document attached to the image REF names (for an index, to PLATFORM_ARCH's image)."""
    if ref.transport == "docker":
        return _read_registry(ref, platform_arch, tls_verify)
    if ref.transport == "oci":
        return _read_layout(ref, platform_arch)
    raise SbomError(f"cannot read SBOMs from {ref.transport}: images", hint="use oci:DIR[:TAG] or docker://REF")


def _pick(index: dict[str, Any], arch: str | None, shown: str) -> Descriptor:
    """The entry of an image index for the Debian architecture ARCH (required when there are several)."""
    entries = [Descriptor.from_json(d) for d in index.get("manifests") or []]
    if arch is None and len(entries) == 1:
        return entries[0]
    if arch is None:
        raise SbomError(f"{shown} is a multi-architecture index", hint="name one with --arch")
    wanted = debian_platform(arch)
    for entry in entries:
        if entry.platform == wanted:
            return entry
    raise SbomError(f"{shown} has no image for {arch} ({wanted})")


def _read_registry(ref: Reference, arch: str | None, tls_verify: bool | None) -> bytes:
    repo, target = registry.open_repository(ref, tls_verify=tls_verify)
    found = repo.get_manifest(target.digest or target.tag or "latest")
    if found is None:
        raise SbomError(f"{target}: no such image")
    data, media_type = found
    subject = Descriptor.of(data, media_type)
    if media_type in INDEX_MEDIA_TYPES:
        subject = _pick(json.loads(data), arch, str(target))
    pinned = Reference("docker", name=ref.name, digest=subject.digest)
    entries = registry.list_referrers(pinned, artifact_type=MEDIA_TYPE_SPDX, tls_verify=tls_verify)
    if not entries:
        raise SbomError(f"{target}: no SPDX SBOM is attached to {subject.digest}",
                        hint="build with --sbom spdx to attach one")
    artifact = Descriptor.from_json(sorted(entries, key=lambda e: e["digest"])[0])
    manifest = repo.get_manifest(artifact.digest, accept=artifact.media_type)
    if manifest is None or Descriptor.of(manifest[0], artifact.media_type).digest != artifact.digest:
        raise SbomError(f"{target}: the SBOM manifest {artifact.digest} is missing or damaged")
    layer = _layer(json.loads(manifest[0]), str(target))
    with repo.open_blob(layer.digest) as stream:
        content = stream.read(layer.size + 1)
    return _checked(content, layer, str(target))


def _read_layout(ref: Reference, arch: str | None) -> bytes:
    assert ref.path is not None
    entries = [Descriptor.from_json(d) for d in oci.load_index(ref.path)["manifests"]]
    images = [e for e in entries if e.ref_name == ref.tag] if ref.tag else \
        [e for e in entries if not _is_artifact(ref.path, e)]
    if len(images) != 1:
        raise SbomError(f"{ref}: names {len(images)} images", hint="name one as oci:DIR:TAG")
    subject = images[0]
    if subject.media_type in INDEX_MEDIA_TYPES:
        subject = _pick(oci.read_json(ref.path, subject), arch, str(ref))
    for entry in entries:
        if entry.media_type not in MANIFEST_MEDIA_TYPES:
            continue
        manifest = oci.read_json(ref.path, entry)
        if (manifest.get("subject") or {}).get("digest") == subject.digest and \
                manifest.get("artifactType") == MEDIA_TYPE_SPDX:
            layer = _layer(manifest, str(ref))
            return _checked(oci.blob_path(ref.path, layer.digest).read_bytes(), layer, str(ref))
    raise SbomError(f"{ref}: no SPDX SBOM is attached to {subject.digest}", hint="build with --sbom spdx")


def _is_artifact(root: Path, desc: Descriptor) -> bool:
    if desc.media_type not in MANIFEST_MEDIA_TYPES:
        return False
    try:
        return "subject" in oci.read_json(root, desc)
    except TransportError:
        return False


def _checked(content: bytes, layer: Descriptor, shown: str) -> bytes:
    if "sha256:" + hashlib.sha256(content).hexdigest() != layer.digest:
        raise SbomError(f"{shown}: the SBOM {layer.digest} does not match its digest")
    return content


def attach_all(layout: Path, lock: Lockfile, manifests: Sequence[tuple[str, Descriptor]], *,
               created: str) -> list[Attached]:
    """An SBOM artifact in LAYOUT for each (arch, image manifest) of the build."""
    return [Attached(write_artifact(layout, spdx(lock, arch, created=created), desc, created=created), desc, arch)
            for arch, desc in manifests]

