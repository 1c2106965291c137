"""Simple signing as cosign and podman read it, and DSSE envelopes: bytes, round trips, every refusal."""

import base64
import json

import pytest

from ocistrap.oci import keys, signature
from ocistrap.oci.image import MEDIA_TYPE_CONFIG, Descriptor, canonical_json, sha256_digest

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
REF = "registry.example:5000/debian:bookworm"


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> keys.PrivateKey:
    directory = tmp_path_factory.mktemp("key")
    keys.generate(directory / "s.key", directory / "s.pub", "")
    return keys.load_private(directory / "s.key")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> keys.PrivateKey:
    directory = tmp_path_factory.mktemp("other")
    keys.generate(directory / "o.key", directory / "o.pub", "")
    return keys.load_private(directory / "o.key")


def test_payload_bytes_are_cosigns() -> None:
    """Go's json.Marshal of cosign's SimpleContainerImage: declared key order, no spaces, optional null."""
    assert signature.payload(REF, DIGEST) == (
        b'{"critical":{"identity":{"docker-reference":"registry.example:5000/debian:bookworm"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}')


def test_payload_names_the_normalised_reference() -> None:
    assert json.loads(signature.payload("debian:12", DIGEST))["critical"]["identity"]["docker-reference"] \
        == "docker.io/library/debian:12"


def test_payload_refuses_a_bare_name() -> None:
    with pytest.raises(signature.ImageSignatureError, match="names no tag or digest"):
        signature.payload("registry.example/debian", DIGEST)


def test_signature_tag() -> None:
    assert signature.signature_tag(DIGEST) == "sha256-" + "ab" * 32 + ".sig"


def test_signature_image_is_shaped_as_cosign_writes_it(signer: keys.PrivateKey) -> None:
    signed = signature.sign(signer, REF, DIGEST)
    image = signature.signature_image(DIGEST, [signed])
    manifest = json.loads(image.manifest)
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert layer["digest"] == sha256_digest(signed.payload) and layer["size"] == len(signed.payload)
    assert base64.b64decode(layer["annotations"]["dev.cosignproject.cosign/signature"])[0] == 0x30
    assert manifest["config"]["mediaType"] == MEDIA_TYPE_CONFIG
    config = image.blobs[manifest["config"]["digest"]]
    assert config == (b'{"architecture":"","created":"0001-01-01T00:00:00Z","history":[{"created":'
                      b'"0001-01-01T00:00:00Z"}],"os":"","rootfs":{"type":"layers","diff_ids":["'
                      + layer["digest"].encode() + b'"]},"config":{}}')
    assert image.blobs[layer["digest"]] == signed.payload
    assert image.tag == signature.signature_tag(DIGEST)
    assert image.manifest == canonical_json(manifest)


def judge(image: signature.SignatureImage | None, key: keys.PublicKey, digest: str = DIGEST,
          reference: str = REF) -> signature.Verdict:
    return signature.verify_image(image.manifest if image else None,
                                  lambda d: image.blobs[d.digest] if image else b"", key, digest, reference)


def test_verify_accepts_the_signed_image(signer: keys.PrivateKey) -> None:
    image = signature.signature_image(DIGEST, [signature.sign(signer, REF, DIGEST)])
    verdict = judge(image, signer.public)
    assert verdict.ok, verdict.reason


def test_verify_accepts_one_good_signature_among_others(signer: keys.PrivateKey, stranger: keys.PrivateKey) -> None:
    image = signature.signature_image(DIGEST, [signature.sign(stranger, REF, DIGEST), signature.sign(signer, REF, DIGEST)])
    assert judge(image, signer.public).ok


def test_unsigned(signer: keys.PrivateKey) -> None:
    verdict = judge(None, signer.public)
    assert not verdict.ok and "is unsigned" in verdict.reason and signature.signature_tag(DIGEST) in verdict.reason


def test_another_keys_signature(signer: keys.PrivateKey, stranger: keys.PrivateKey) -> None:
    image = signature.signature_image(DIGEST, [signature.sign(stranger, REF, DIGEST)])
    verdict = judge(image, signer.public)
    assert not verdict.ok and "not by the given key" in verdict.reason


def test_a_signature_copied_onto_another_image(signer: keys.PrivateKey) -> None:
    image = signature.signature_image(DIGEST, [signature.sign(signer, REF, DIGEST)])
    verdict = judge(image, signer.public, digest=OTHER)
    assert not verdict.ok and f"the signature is for {DIGEST}, not {OTHER}" in verdict.reason


def test_a_reference_that_does_not_match(signer: keys.PrivateKey) -> None:
    image = signature.signature_image(DIGEST, [signature.sign(signer, REF, DIGEST)])
    verdict = judge(image, signer.public, reference="registry.example:5000/debian:trixie")
    assert not verdict.ok and "does not match" in verdict.reason


def test_a_changed_payload_is_refused(signer: keys.PrivateKey) -> None:
    image = signature.signature_image(DIGEST, [signature.sign(signer, REF, DIGEST)])
    blobs = {d: b.replace(b"bookworm", b"trixie") for d, b in image.blobs.items()}
    changed = signature.SignatureImage(image.tag, image.manifest, blobs)
    assert not judge(changed, signer.public).ok


def test_a_signed_payload_with_unknown_critical_fields_is_refused(signer: keys.PrivateKey) -> None:
    document = json.loads(signature.payload(REF, DIGEST))
    document["critical"]["extra"] = "x"
    data = canonical_json(document)
    signed = signature.SignedPayload(data, base64.b64encode(signer.sign(data)).decode())
    verdict = judge(signature.signature_image(DIGEST, [signed]), signer.public)
    assert not verdict.ok and "exactly the fields" in verdict.reason


@pytest.mark.parametrize(("signed", "pulled", "matches"), [
    ("docker.io/library/debian:12", "debian:12", True),
    ("registry.example/debian:12", "registry.example/debian:12", True),
    ("registry.example/debian:12", "registry.example/debian:13", False),
    ("registry.example/debian:12", f"registry.example/debian@{DIGEST}", True),
    ("registry.example/debian:12", f"registry.example/ubuntu@{DIGEST}", False),
    ("registry.example/debian", "registry.example/debian:12", False),
    ("registry.example/debian", f"registry.example/debian@{DIGEST}", False),
])
def test_reference_matching_is_podmans_default(signed: str, pulled: str, matches: bool) -> None:
    assert signature.reference_matches(signed, pulled) is matches


def test_dsse_pae_is_the_specs_vector() -> None:
    """The example of the DSSE protocol specification."""
    assert signature.pae("http://example.com/HelloWorld", b"hello world") == \
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_dsse_round_trip_and_refusals(signer: keys.PrivateKey, stranger: keys.PrivateKey) -> None:
    envelope = signature.dsse_envelope(signer, b'{"a":1}')
    document = json.loads(envelope)
    assert document["payloadType"] == "application/vnd.in-toto+json"
    assert base64.b64decode(document["payload"]) == b'{"a":1}'
    assert signer.public.verify(signature.pae(document["payloadType"], b'{"a":1}'),
                                base64.b64decode(document["signatures"][0]["sig"]))
    assert signature.verify_dsse(envelope, signer.public) == b'{"a":1}'
    with pytest.raises(signature.ImageSignatureError, match="not signed by the given key"):
        signature.verify_dsse(envelope, stranger.public)
    with pytest.raises(signature.ImageSignatureError, match="payload type"):
        signature.verify_dsse(signature.dsse_envelope(signer, b"{}", "text/plain"), signer.public)
    document["payload"] = base64.b64encode(b'{"a":2}').decode()
    with pytest.raises(signature.ImageSignatureError, match="not signed by the given key"):
        signature.verify_dsse(json.dumps(document).encode(), signer.public)
    with pytest.raises(signature.ImageSignatureError, match="not a DSSE envelope"):
        signature.verify_dsse(b"[]", signer.public)


def test_descriptor_of_the_payload_carries_the_signature(signer: keys.PrivateKey) -> None:
    signed = signature.sign(signer, REF, DIGEST)
    assert signed.descriptor().digest == Descriptor.of(signed.payload, signature.MEDIA_TYPE_SIMPLESIGNING).digest
    assert signed.descriptor().annotations == {signature.ANNOTATION_SIGNATURE: signed.signature}
