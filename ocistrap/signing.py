"""Signing what a command wrote: a simple-signing signature beside every manifest and index,
and the build's SLSA provenance as a signed referrer.

Which identity a signature names and where it is kept is each transport's business
(``transports.signature_place``); this module signs digests and hands the signature
images to the transports. The private key stays in its file (``oci.keys``).
"""

import tempfile
from collections.abc import Sequence
from pathlib import Path

from ocistrap import log, transports
from ocistrap.debian.lock import Lockfile
from ocistrap.errors import UsageError
from ocistrap.oci import keys, ocilayout, provenance, signature
from ocistrap.oci.image import Descriptor, split_docker_reference
from ocistrap.oci.ocilayout import Referrer
from ocistrap.transports import Context, ImageStore, Reference, SignaturePlace
from ocistrap.verify import index_members

NO_PLACE_HINT = ("sign registry references, or oci:DIR:NAME:TAG whose tag is the reference the image will be "
                 "pulled as, e.g. oci:out:registry.example/debian:bookworm")


def places(refs: Sequence[Reference]) -> list[SignaturePlace]:
    """Where each of REFS keeps signatures; refused, before anything is built, where one keeps none."""
    if not refs:
        raise UsageError("--sign needs an output to sign", hint=NO_PLACE_HINT)
    found = []
    for ref in refs:
        place = transports.signature_place(ref)
        if place is None:
            raise UsageError(f"--sign: {ref} names no image reference for a signature to name", hint=NO_PLACE_HINT)
        found.append(place)
    return found


def load_key(path: Path | None, passphrase_file: Path | None) -> keys.PrivateKey | None:
    """The signing key --sign names (checked and unlocked once, before any work), or None."""
    return None if path is None else keys.load_private(path, passphrase_file=passphrase_file)


def attest(key: keys.PrivateKey, layout: Path, lock: Lockfile, top: Descriptor, place: SignaturePlace,
           run: provenance.Run) -> Referrer:
    """The SLSA provenance of the image TOP, signed by KEY, as an artifact of LAYOUT referring to it."""
    name = split_docker_reference(place.identity)[0]
    document = provenance.statement(name, top.digest, lock, provenance.parameters_from_lock(lock), run)
    return Referrer(provenance.write_artifact(layout, provenance.attest(key, document), top), provenance.FILE_NAME)


def attestations(store: ImageStore, top: Descriptor) -> list[Referrer]:
    """The provenance artifacts STORE keeps about TOP, to carry along when it is copied."""
    return [Referrer(entry, provenance.FILE_NAME) for entry in store.referrers(top, provenance.MEDIA_TYPE_ENVELOPE) or []]


def sign_image(key: keys.PrivateKey, ref: Reference, top: Descriptor, ctx: Context) -> list[str]:
    """Sign the image TOP written at REF, and for an index each manifest in it, as REF's identity.

    Each signature image keeps the signatures already stored for that digest (as
    cosign appends), less an earlier one of KEY over the same payload. Returns the
    digests signed.
    """
    place = places([ref])[0]
    with transports.open_image(ref, ctx) as store:
        digests = [top.digest, *index_members(store, top)]
        kept = {digest: _kept(store, digest, key, place.identity) for digest in digests}
    with tempfile.TemporaryDirectory(prefix="ocistrap-signatures-") as tmp:
        layout = Path(tmp)
        ocilayout.init_layout(layout)
        for digest in digests:
            image = signature.signature_image(digest, [*kept[digest], signature.sign(key, place.identity, digest)])
            for blob in [*image.blobs.values(), image.manifest]:
                ocilayout.put_bytes(layout, blob)
            transports.write_signature(layout, image.descriptor, place, image.tag, ctx)
    log.get().info(f"signed {place.identity} ({len(digests)} digest(s)) at {ref}")
    return digests


def _kept(store: ImageStore, digest: str, key: keys.PrivateKey, identity: str) -> list[signature.SignedPayload]:
    """The signatures already stored for DIGEST, without KEY's own over the payload about to be signed."""
    desc = store.signatures(digest)
    if desc is None:
        return []
    ours = signature.payload(identity, digest)
    found = signature.stored_signatures(store.read(desc, "the stored signatures"),
                                        lambda layer: store.read(layer, "a stored signature"))
    return [s for s in found if not (s.payload == ours and s.verifies(key.public))]
