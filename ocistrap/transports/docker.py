"""``docker://[HOST[:PORT]/]NAME[:TAG][@DIGEST]`` (``docker://`` optional): registries, as a transport.

A thin adapter: the distribution protocol itself (push, referrers, reading,
credentials, TLS) is ``transports.registry``; this module fits it to the
``Transport`` protocol and reads images for ``verify`` and ``sbom``.
"""

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any

from ocistrap.oci.image import (
    ANNOTATION_REF_NAME,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    Descriptor,
    split_docker_reference,
)
from ocistrap.oci.ocilayout import Referrer
from ocistrap.oci.signature import signature_tag
from ocistrap.transports import BadReference, Context, Reference, Shape, SignaturePlace, TransportError
from ocistrap.transports.registry import api, attachments, upload


def parse(details: str, text: str) -> Reference:
    if not details.startswith("//") or len(details) == 2:
        raise BadReference(f"{text!r}: expected docker://[HOST[:PORT]/]NAME[:TAG][@DIGEST]")
    name, tag, digest = split_docker_reference(details[2:], text)
    return Reference("docker", name=name, tag=tag or (None if digest else "latest"), digest=digest)


def show(ref: Reference) -> str:
    return f"docker://{ref.image()}"


def check(ref: Reference, shape: Shape) -> None:
    """A registry holds any image."""


def write_image(layout: Path, desc: Descriptor, ref: Reference, ctx: Context) -> None:
    upload.push(layout, desc, ref, tls_verify=ctx.tls_verify)


@contextmanager
def open_image(ref: Reference, ctx: Context) -> Iterator["RegistryStore"]:
    yield RegistryStore(ref, ctx)


def signature_place(ref: Reference) -> SignaturePlace:
    """Signatures name the reference as pushed or pulled (``NAME:TAG``, else ``NAME@DIGEST``) and
    live in the same repository under cosign's ``sha256-<hex>.sig`` tags."""
    identity = f"{ref.name}:{ref.tag}" if ref.tag else ref.image()
    return SignaturePlace(identity, ref)


def attach(layout: Path, referrer: Referrer, ref: Reference, ctx: Context) -> bool:
    attachments.push_referrer(layout, referrer.manifest, ref, tls_verify=ctx.tls_verify)
    return True


class RegistryStore:
    """The image a registry reference names, read document by document; blobs stream."""

    layout: Path | None = None

    def __init__(self, ref: Reference, ctx: Context) -> None:
        self.ref = ref
        self.ctx = ctx
        self.repo, self.target = api.open_repository(ref, tls_verify=ctx.tls_verify)
        self.shown = str(self.target)
        self.fetched: dict[str, bytes] = {}

    def roots(self) -> list[Descriptor]:
        reference = self.target.digest or self.target.tag or "latest"
        found = self.repo.get_manifest(reference)
        if found is None:
            raise TransportError(f"{self.shown}: no such image in the registry")
        data, media_type = found
        root = Descriptor.of(data, media_type)
        if self.target.digest is not None and root.digest != self.target.digest:
            raise TransportError(f"{self.shown}: digest mismatch: manifest hashes to {root.digest}")
        self.fetched[root.digest] = data
        return [root if self.target.digest else root.with_annotations({ANNOTATION_REF_NAME: reference})]

    def read(self, desc: Descriptor, where: str) -> bytes:
        if desc.digest in self.fetched:
            return self.fetched.pop(desc.digest)
        if desc.media_type in INDEX_MEDIA_TYPES or desc.media_type in MANIFEST_MEDIA_TYPES:
            found = self.repo.get_manifest(desc.digest, accept=desc.media_type)
            if found is None:
                raise TransportError(f"{self.blob_name(desc)} ({where}): manifest is missing")
            return found[0]
        with self.open_blob(desc, where) as handle:
            return handle.read(desc.size + 1)

    def open_blob(self, desc: Descriptor, where: str) -> AbstractContextManager[IO[bytes]]:
        return self.repo.open_blob(desc.digest)

    def blob_name(self, desc: Descriptor) -> str:
        return f"{self.shown}@{desc.digest}"

    def referrers(self, subject: Descriptor, artifact_type: str) -> list[Descriptor]:
        pinned = Reference("docker", name=self.ref.name, digest=subject.digest)
        entries = attachments.list_referrers(pinned, artifact_type=artifact_type, tls_verify=self.ctx.tls_verify)
        return [Descriptor.from_json(e) for e in entries]

    def saved_images(self) -> list[Any]:
        return []

    def signatures(self, digest: str) -> Descriptor | None:
        found = self.repo.get_manifest(signature_tag(digest))
        if found is None:
            return None
        desc = Descriptor.of(*found)
        self.fetched[desc.digest] = found[0]
        return desc
