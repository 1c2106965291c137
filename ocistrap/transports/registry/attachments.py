"""Referrers: attaching artifacts to an image (the referrers API or its tag fallback) and listing them."""

import hashlib
from pathlib import Path
from typing import Any

from ocistrap import log
from ocistrap.errors import TransportError
from ocistrap.oci import ocilayout
from ocistrap.oci.image import MEDIA_TYPE_INDEX, Descriptor, canonical_json
from ocistrap.transports import Reference
from ocistrap.transports.registry.api import Repository, Target, _index_entries, open_repository
from ocistrap.transports.registry.upload import MountRecord, _Pusher


def referrers_tag(digest: str) -> str:
    """The fallback tag under which a registry without the referrers API keeps DIGEST's referrers."""
    algorithm, _, hex_part = digest.partition(":")
    return f"{algorithm}-{hex_part}"[:128]



def _referrer_entry(layout: Path, desc: Descriptor) -> tuple[dict[str, Any], Descriptor]:
    """The referrers-index entry for artifact manifest DESC, and the subject it refers to."""
    doc = ocilayout.read_json(layout, desc)
    subject = doc.get("subject")
    if not isinstance(subject, dict):
        raise TransportError(f"manifest {desc.digest} has no subject: it does not refer to any image")
    entry = desc.to_json()
    entry.pop("platform", None)
    artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
    if artifact_type:
        entry["artifactType"] = artifact_type
    if doc.get("annotations"):
        entry["annotations"] = doc["annotations"]
    return entry, Descriptor.from_json(subject)


def push_referrer(layout: Path, desc: Descriptor, ref: Reference, *, tls_verify: bool | None = None) -> str:
    """Push artifact manifest DESC of LAYOUT (an SBOM, a signature) into REF's repository.

    DESC's ``subject`` names the image it is about. Registries with the
    referrers API index it themselves (they answer ``OCI-Subject``); for the
    others the ``sha256-<hex>`` tag's index is extended, as OCI 1.1 specifies.
    REF's tag is not touched. Returns DESC's digest.
    """
    entry, subject = _referrer_entry(layout, desc)
    repo, target = open_repository(ref, tls_verify=tls_verify)
    answer = _Pusher(repo, layout, MountRecord()).push(desc, desc.digest)
    if answer.headers.get("OCI-Subject") != subject.digest:
        _add_to_referrers_tag(repo, subject.digest, entry)
    log.get().info(f"attached {entry.get('artifactType', desc.media_type)} {desc.digest} to {subject.digest}")
    return desc.digest


def _add_to_referrers_tag(repo: Repository, subject: str, entry: dict[str, Any]) -> None:
    """Add ENTRY to the fallback index tagged ``sha256-<hex>`` (created if missing).

    Two clients extending it at the same moment can lose an entry: the
    fallback schema has no locking, which the OCI spec accepts.
    """
    tag = referrers_tag(subject)
    found = repo.get_manifest(tag, accept=MEDIA_TYPE_INDEX)
    entries = _index_entries(found[0], f"{repo.registry.name}/{repo.name}:{tag}") if found else []
    if any(e.get("digest") == entry["digest"] for e in entries):
        return
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": [*entries, entry]}
    repo.put_manifest(tag, canonical_json(index), MEDIA_TYPE_INDEX)


def list_referrers(
    ref: Reference, *, artifact_type: str | None = None, tls_verify: bool | None = None
) -> list[dict[str, Any]]:
    """The descriptors (JSON) of artifacts referring to the image REF names, optionally of one type.

    Uses the referrers API when the registry has it, the ``sha256-<hex>`` tag otherwise.
    """
    repo, target = open_repository(ref, tls_verify=tls_verify)
    subject = target.digest or _resolve_digest(repo, target)
    entries = repo.referrers_api(subject, artifact_type)
    if entries is None:
        found = repo.get_manifest(referrers_tag(subject), accept=MEDIA_TYPE_INDEX)
        entries = _index_entries(found[0], f"{target.registry}/{target.repository}:{referrers_tag(subject)}") if found else []
    if artifact_type:
        entries = [e for e in entries if e.get("artifactType") == artifact_type]
    return entries


def _resolve_digest(repo: Repository, target: Target) -> str:
    assert target.tag is not None
    found = repo.get_manifest(target.tag)
    if found is None:
        raise TransportError(f"{target}: no such image")
    return "sha256:" + hashlib.sha256(found[0]).hexdigest()
