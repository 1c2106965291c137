"""SLSA v1 provenance of an image, from its lockfile: an in-toto Statement in a signed DSSE envelope.

Everything the build consumed is in the lock: every .deb with its pool URI and
SHA-256, and each signed Release with the OpenPGP keys that verified it. Pure
apart from the signature the key makes; ``verify`` gives back the statement
only when the key signed it, it matches the schemas and it is about the image.
"""

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ocistrap import __version__, schema
from ocistrap.debian.lock import Lockfile
from ocistrap.errors import ImageError
from ocistrap.oci import ocilayout, signature
from ocistrap.oci.image import Descriptor, canonical_json, parse_digest, rfc3339
from ocistrap.oci.keys import PrivateKey, PublicKey

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://ocistrap.dev/buildtypes/debian-image/v1"
BUILDER_ID = "https://ocistrap.dev/builder/local"
MEDIA_TYPE_ENVELOPE = "application/vnd.dsse.envelope.v1+json"
MEDIA_TYPE_LOCKFILE = "application/vnd.ocistrap.lockfile.v1+json"
LOCKFILE_NAME = "ocistrap.debian.lock"
ANNOTATION_PREDICATE_TYPE = "in-toto.io/predicate-type"
FILE_NAME = "provenance.dsse.json"


@dataclass(frozen=True)
class Run:
    """Who ran the build and when: SLSA's runDetails."""

    started_on: datetime | int
    invocation_id: str
    builder_id: str = BUILDER_ID
    version: str = __version__


def new_run(started_on: datetime | int) -> Run:
    """A run with a fresh invocation id; STARTED_ON is SOURCE_DATE_EPOCH when the build has one."""
    return Run(started_on=started_on, invocation_id=str(uuid.uuid4()))


def parameters_from_lock(lock: Lockfile) -> dict[str, Any]:
    """The settings the lock decided, keyed as a spec file writes them."""
    return {
        "suite": lock.suite, "mirror": lock.mirror, "components": list(lock.components),
        "architectures": sorted(lock.architectures), "variant": lock.variant, "include": list(lock.include),
        "install_recommends": lock.install_recommends, "slim": lock.slim,
        "layers": [{"name": layer.name, "packages": list(layer.include)} for layer in lock.layers],
    }


def statement(name: str, digest: str, lock: Lockfile, parameters: Mapping[str, Any], run: Run) -> dict[str, Any]:
    """The in-toto Statement v1 whose subject is the image NAME at DIGEST, built from LOCK with PARAMETERS."""
    document = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": parse_digest(digest)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {**parameters, "lockfile": lockfile_resource(lock)},
                "internalParameters": {"lockfile": {"sha256": parse_digest(lock.digest())}},
                "resolvedDependencies": resolved_dependencies(lock),
            },
            "runDetails": {
                "builder": {"id": run.builder_id, "version": {"ocistrap": run.version}},
                "metadata": {"invocationId": run.invocation_id, "startedOn": rfc3339(run.started_on)},
            },
        },
    }
    validate(document)
    return document


def lockfile_resource(lock: Lockfile) -> dict[str, Any]:
    """The lockfile itself, its canonical bytes inline: all a rebuild needs (`verify --rebuild`),
    where the dependencies below name only what it pins."""
    data = lock.dumps()
    return {"name": LOCKFILE_NAME, "mediaType": MEDIA_TYPE_LOCKFILE,
            "digest": {"sha256": hashlib.sha256(data).hexdigest()}, "content": base64.b64encode(data).decode()}


def lockfile_bytes(document: Mapping[str, Any]) -> bytes:
    """The lockfile a statement carries, checked against the digests it states for it."""
    definition = document.get("predicate", {}).get("buildDefinition", {})
    resource = definition.get("externalParameters", {}).get("lockfile")
    if not isinstance(resource, dict) or not isinstance(resource.get("content"), str):
        raise ImageError("the provenance statement carries no lockfile",
                         hint="give the lockfile with --lock FILE")
    try:
        data = base64.b64decode(resource["content"], validate=True)
    except binascii.Error:
        raise ImageError("the provenance statement's lockfile is not base64") from None
    digest = hashlib.sha256(data).hexdigest()
    stated = {resource.get("digest", {}).get("sha256"), definition.get("internalParameters", {})
              .get("lockfile", {}).get("sha256")}
    if stated != {digest}:
        raise ImageError(f"the provenance statement's lockfile hashes to sha256:{digest}, not to the digest "
                         f"the statement gives for it")
    return data


def unverified_statement(envelope: bytes) -> dict[str, Any]:
    """The statement of a DSSE ENVELOPE without checking who signed it: for a rebuild, whose verdict
    comes from comparing digests, not from trusting the signer (`verify --key` checks the signer)."""
    try:
        document = json.loads(envelope)
        body = json.loads(base64.b64decode(document["payload"], validate=True))
        kind = document["payloadType"]
    except (ValueError, KeyError, TypeError):
        raise ImageError("the attestation is not a DSSE envelope of a JSON statement") from None
    if kind != signature.DSSE_PAYLOAD_TYPE:
        raise ImageError(f"the attestation's payload type is {kind!r}, not {signature.DSSE_PAYLOAD_TYPE!r}")
    try:
        validate(body)
    except schema.SchemaError as e:
        raise ImageError(e.message) from None
    return body


def resolved_dependencies(lock: Lockfile) -> list[dict[str, Any]]:
    """Each signed Release (with the keys that verified it), then each .deb, once each, in a stable order."""
    found: dict[str, dict[str, Any]] = {}
    for _, locked in sorted(lock.architectures.items()):
        for archive, release in zip(lock.archives, locked.releases):
            found.setdefault(archive.url(release.path), {
                "uri": archive.url(release.path), "digest": {"sha256": release.sha256},
                "name": f"{archive.suite} {release.path.rsplit('/', 1)[-1]}",
                "annotations": {"keyringFingerprints": list(release.keys)},
            })
    debs: dict[str, dict[str, Any]] = {}
    for _, locked in sorted(lock.architectures.items()):
        for package in locked.packages:
            debs.setdefault(lock.package_url(package), {
                "uri": lock.package_url(package), "digest": {"sha256": package.sha256}, "name": package.name,
                "annotations": {"version": package.version, "architecture": package.architecture},
            })
    return list(found.values()) + [debs[uri] for uri in sorted(debs)]


def validate(document: Any) -> None:
    """Raise schema.SchemaError unless DOCUMENT is an in-toto Statement v1 with a SLSA v1 provenance predicate."""
    schema.validate(document, "in-toto-statement", what="the provenance statement")
    if document["predicateType"] != PREDICATE_TYPE:
        raise schema.SchemaError(f"the statement's predicateType is {document['predicateType']!r}, "
                                 f"not {PREDICATE_TYPE!r}")
    schema.validate(document.get("predicate"), "slsa-provenance", what="the provenance predicate")


def attest(key: PrivateKey, document: Mapping[str, Any]) -> bytes:
    """DOCUMENT in a DSSE envelope signed by KEY."""
    return signature.dsse_envelope(key, canonical_json(document))


def write_artifact(layout: Path, envelope: bytes, subject: Descriptor) -> Descriptor:
    """Store ENVELOPE in LAYOUT as an artifact referring to SUBJECT (attached as the SBOM is)."""
    layer = Descriptor.of(envelope, MEDIA_TYPE_ENVELOPE, annotations={ANNOTATION_PREDICATE_TYPE: PREDICATE_TYPE})
    ocilayout.put_bytes(layout, envelope)
    return ocilayout.put_artifact(layout, MEDIA_TYPE_ENVELOPE, [layer], {ANNOTATION_PREDICATE_TYPE: PREDICATE_TYPE},
                                  subject=subject)


def verify(envelope: bytes, key: PublicKey, digest: str) -> dict[str, Any]:
    """The statement in ENVELOPE if KEY signed it, it is valid SLSA v1 provenance, and its subject is DIGEST."""
    body = signature.verify_dsse(envelope, key)
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise signature.ImageSignatureError("the attestation's statement is not JSON") from None
    try:
        validate(document)
    except schema.SchemaError as e:
        raise signature.ImageSignatureError(e.message) from None
    if not any(s.get("digest", {}).get("sha256") == parse_digest(digest) for s in document["subject"]):
        raise signature.ImageSignatureError(f"the attestation is about another image, not {digest}")
    return document
