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

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ocistrap import __version__
from ocistrap.debian.lock import LockedPackage, Lockfile
from ocistrap.errors import ImageError
from ocistrap.oci import ocilayout
from ocistrap.oci.image import (
    ANNOTATION_CREATED,
    Descriptor,
    debian_platform,
)
from ocistrap.oci.ocilayout import Referrer

FORMATS = ("spdx",)
MEDIA_TYPE_SPDX = "application/spdx+json"
_SPDX_ID = re.compile(r"[^A-Za-z0-9.-]")


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
        raise ImageError(f"the lockfile has no {arch} packages")
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


def write_artifact(layout: Path, document: dict[str, Any], subject: Descriptor, *, created: str) -> Descriptor:
    """Store DOCUMENT and an artifact manifest referring to SUBJECT in LAYOUT; return the manifest's descriptor."""
    data = document_bytes(document)
    ocilayout.put_bytes(layout, data)
    return ocilayout.put_artifact(layout, MEDIA_TYPE_SPDX, [Descriptor.of(data, MEDIA_TYPE_SPDX)],
                                  {ANNOTATION_CREATED: created}, subject=subject)


def attach_all(layout: Path, lock: Lockfile, manifests: Sequence[tuple[str, Descriptor]], *,
               created: str) -> list[Referrer]:
    """An SBOM artifact in LAYOUT for each (arch, image manifest) of the build, to attach to outputs."""
    return [Referrer(write_artifact(layout, spdx(lock, arch, created=created), desc, created=created),
                     f"{arch}.spdx.json")
            for arch, desc in manifests]
