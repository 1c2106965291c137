"""Key-based image signatures as cosign writes them and containers/image (podman, skopeo) checks them.

A "simple signing" payload names the manifest digest and the reference it was
signed for; its ECDSA signature rides in an annotation of the layer that holds
the payload, in a small image tagged ``sha256-<hex>.sig`` beside the signed
one. DSSE envelopes (in-toto attestations) are signed over the DSSE
pre-authentication encoding with the same key. Pure apart from the openssl
calls the key makes.
"""

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ocistrap.errors import BadReference
from ocistrap.oci.image import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    ImageError,
    canonical_json,
    make_manifest,
    parse_digest,
    split_docker_reference,
    split_name,
)
from ocistrap.oci.keys import PrivateKey, PublicKey

MEDIA_TYPE_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
ANNOTATION_SIGNATURE = "dev.cosignproject.cosign/signature"
COSIGN_TYPE = "cosign container image signature"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
_ZERO_TIME = "0001-01-01T00:00:00Z"


class ImageSignatureError(ImageError):
    """A signature or attestation is malformed, or not one the given key made."""


@dataclass(frozen=True)
class Verdict:
    """Whether an image's signatures vouch for it, and why not in one line."""

    ok: bool
    reason: str


def docker_reference(text: str) -> str:
    """TEXT as containers/image writes a signed identity: registry/repository, then :tag and/or @digest.

    A bare name is refused: podman's default policy never accepts a signature for one.
    """
    try:
        name, tag, digest = split_docker_reference(text)
    except BadReference as e:
        raise ImageSignatureError(e.message, hint=e.hint) from None
    if tag is None and digest is None:
        raise ImageSignatureError(f"{text!r} names no tag or digest; a signature must name one")
    registry, repository = split_name(name)
    return f"{registry}/{repository}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def payload(reference: str, digest: str) -> bytes:
    """The simple signing payload for the manifest DIGEST pushed as REFERENCE, byte for byte as cosign emits it.

    Go's json.Marshal of cosign's struct writes the keys in the order they are
    declared, which here is alphabetical, with no spaces and no newline: what
    canonical_json writes for a reference the grammar allows.
    """
    parse_digest(digest)
    return canonical_json({
        "critical": {"identity": {"docker-reference": docker_reference(reference)},
                     "image": {"docker-manifest-digest": digest}, "type": COSIGN_TYPE},
        "optional": None,
    })


def signature_tag(digest: str) -> str:
    """Where cosign looks for the signatures of DIGEST: the tag ``sha256-<hex>.sig``."""
    return f"sha256-{parse_digest(digest)}.sig"


@dataclass(frozen=True)
class SignedPayload:
    """One signature: the payload and its base64 ECDSA signature."""

    payload: bytes
    signature: str

    def descriptor(self) -> Descriptor:
        return Descriptor.of(self.payload, MEDIA_TYPE_SIMPLESIGNING, annotations={ANNOTATION_SIGNATURE: self.signature})

    def verifies(self, key: PublicKey) -> bool:
        """Whether KEY made this signature over the payload."""
        try:
            return key.verify(self.payload, base64.b64decode(self.signature, validate=True))
        except binascii.Error:
            return False


def sign(key: PrivateKey, reference: str, digest: str) -> SignedPayload:
    """Sign the manifest DIGEST as pushed under REFERENCE."""
    data = payload(reference, digest)
    return SignedPayload(payload=data, signature=base64.b64encode(key.sign(data)).decode())


@dataclass(frozen=True)
class SignatureImage:
    """The image stored under ``signature_tag(digest)``: its manifest and every blob it refers to."""

    tag: str
    manifest: bytes
    blobs: Mapping[str, bytes]

    @property
    def descriptor(self) -> Descriptor:
        return Descriptor.of(self.manifest, MEDIA_TYPE_MANIFEST)


def signature_image(digest: str, signed: Sequence[SignedPayload]) -> SignatureImage:
    """The signature image of DIGEST holding SIGNED, one layer each (cosign appends a layer per signature)."""
    if not signed:
        raise ImageSignatureError("a signature image needs at least one signature")
    config = cosign_config([s.descriptor().digest for s in signed])
    manifest = canonical_json(make_manifest(Descriptor.of(config, MEDIA_TYPE_CONFIG), [s.descriptor() for s in signed],
                                            layer_types={MEDIA_TYPE_SIMPLESIGNING}))
    blobs = {Descriptor.of(config, MEDIA_TYPE_CONFIG).digest: config, **{s.descriptor().digest: s.payload for s in signed}}
    return SignatureImage(tag=signature_tag(digest), manifest=manifest, blobs=blobs)


def cosign_config(diff_ids: Sequence[str]) -> bytes:
    """The config cosign gives a signature image: go-containerregistry's empty image, zero times, in its field order."""
    return json.dumps({
        "architecture": "", "created": _ZERO_TIME, "history": [{"created": _ZERO_TIME} for _ in diff_ids],
        "os": "", "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}, "config": {},
    }, separators=(",", ":")).encode()


def verify_image(manifest: bytes | None, read_blob: Callable[[Descriptor], bytes], key: PublicKey,
                 digest: str, reference: str) -> Verdict:
    """Judge the signature image MANIFEST (None: there is none) of the image DIGEST pulled as REFERENCE.

    Accepted when one signature verifies with KEY, names DIGEST and a
    reference that matches REFERENCE as podman's default ``matchRepoDigestOrExact``
    does. Otherwise the reason comes from the signature that got furthest.
    """
    tag = signature_tag(digest)
    layers = _signature_layers(manifest) if manifest is not None else []
    if not layers:
        return Verdict(False, f"{reference} is unsigned: no signature in {tag}")
    reasons = []
    for layer in layers:
        reason = _judge(layer, read_blob, key, digest, reference)
        if reason is None:
            return Verdict(True, f"{reference}: signed by the given key for {digest}")
        reasons.append(reason)
    return Verdict(False, min(reasons)[1])


_KEY, _PAYLOAD, _DIGEST, _REFERENCE = 3, 2, 1, 0
"""How far a signature got before it failed: the smaller, the more telling its reason."""


def _judge(layer: Descriptor, read_blob: Callable[[Descriptor], bytes], key: PublicKey,
           digest: str, reference: str) -> tuple[int, str] | None:
    data = read_blob(layer)
    signed = SignedPayload(payload=data, signature=layer.annotations.get(ANNOTATION_SIGNATURE, ""))
    if Descriptor.of(data, layer.media_type).digest != layer.digest or not signed.verifies(key):
        return _KEY, f"{reference}: signed, but not by the given key"
    try:
        signed_reference, signed_digest = parse_payload(data)
    except ImageSignatureError as e:
        return _PAYLOAD, f"{reference}: {e.message}"
    if signed_digest != digest:
        return _DIGEST, f"{reference}: the signature is for {signed_digest}, not {digest}"
    if not reference_matches(signed_reference, reference):
        return _REFERENCE, f"{reference}: the signature is for {signed_reference}, which does not match"
    return None


def stored_signatures(manifest: bytes, read_blob: Callable[[Descriptor], bytes]) -> list[SignedPayload]:
    """The signatures of the signature image MANIFEST whose payloads match their digests (to keep
    them when another is added)."""
    found = []
    for layer in _signature_layers(manifest):
        data = read_blob(layer)
        if Descriptor.of(data, layer.media_type).digest == layer.digest and ANNOTATION_SIGNATURE in layer.annotations:
            found.append(SignedPayload(payload=data, signature=layer.annotations[ANNOTATION_SIGNATURE]))
    return found


def is_signature_image(document: Any) -> bool:
    """Whether the manifest DOCUMENT is a signature image (its layers are simple-signing payloads)."""
    layers = document.get("layers") if isinstance(document, dict) else None
    return bool(layers) and all(isinstance(d, dict) and d.get("mediaType") == MEDIA_TYPE_SIMPLESIGNING
                                for d in layers)


def _signature_layers(manifest: bytes) -> list[Descriptor]:
    try:
        document = json.loads(manifest)
        layers = [Descriptor.from_json(d) for d in document.get("layers", [])]
    except (ValueError, AttributeError, ImageError):
        return []
    return [layer for layer in layers if layer.media_type == MEDIA_TYPE_SIMPLESIGNING]


def parse_payload(data: bytes) -> tuple[str, str]:
    """(docker-reference, docker-manifest-digest) of a payload, refused as containers/image refuses it:
    any missing, unknown or mistyped field of ``critical``, or another ``critical.type``."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ImageSignatureError("the signed payload is not JSON") from None
    critical = _exact(document, {"critical", "optional"}, "the payload").get("critical")
    _exact(critical, {"identity", "image", "type"}, "critical")
    if critical["type"] != COSIGN_TYPE:
        raise ImageSignatureError(f"the signed payload has type {critical['type']!r}, not {COSIGN_TYPE!r}")
    if not isinstance(document["optional"], dict | None):
        raise ImageSignatureError("the signed payload's optional part is not an object")
    reference = _exact(critical["identity"], {"docker-reference"}, "critical.identity")["docker-reference"]
    digest = _exact(critical["image"], {"docker-manifest-digest"}, "critical.image")["docker-manifest-digest"]
    if not isinstance(reference, str) or not isinstance(digest, str):
        raise ImageSignatureError("the signed payload's reference or digest is not a string")
    return reference, digest


def _exact(document: Any, fields: set[str], what: str) -> dict[str, Any]:
    if not isinstance(document, dict) or set(document) != fields:
        raise ImageSignatureError(f"the signed payload's {what} does not have exactly the fields "
                                  f"{', '.join(sorted(fields))}")
    return document


def reference_matches(signed: str, pulled: str) -> bool:
    """containers/image's ``matchRepoDigestOrExact``: a tag must match exactly, a digest by repository."""
    try:
        signed_name, signed_tag, signed_digest = split_docker_reference(signed)
        name, tag, digest = split_docker_reference(pulled)
    except BadReference:
        return False
    if signed_tag is None and signed_digest is None:
        return False
    if tag is not None:
        return docker_reference(signed) == docker_reference(pulled)
    return digest is not None and split_name(signed_name) == split_name(name)


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def dsse_envelope(key: PrivateKey, body: bytes, payload_type: str = DSSE_PAYLOAD_TYPE) -> bytes:
    """A DSSE envelope of BODY with one signature by KEY, as cosign attest writes it (keyid empty)."""
    signature = key.sign(pae(payload_type, body))
    return canonical_json({
        "payload": base64.b64encode(body).decode(), "payloadType": payload_type,
        "signatures": [{"keyid": "", "sig": base64.b64encode(signature).decode()}],
    })


def verify_dsse(envelope: bytes, key: PublicKey, payload_type: str = DSSE_PAYLOAD_TYPE) -> bytes:
    """The body of ENVELOPE if one of its signatures is KEY's and its type is PAYLOAD_TYPE."""
    try:
        document = json.loads(envelope)
        body = base64.b64decode(document["payload"], validate=True)
        kind = document["payloadType"]
        signatures = [base64.b64decode(s["sig"], validate=True) for s in document["signatures"]]
    except (ValueError, KeyError, TypeError):
        raise ImageSignatureError("the attestation is not a DSSE envelope") from None
    if kind != payload_type:
        raise ImageSignatureError(f"the attestation's payload type is {kind!r}, not {payload_type!r}")
    if not any(key.verify(pae(kind, body), signature) for signature in signatures):
        raise ImageSignatureError("the attestation is not signed by the given key")
    return body
