"""``containers-storage:NAME[:TAG]``: the user's podman/buildah image store, written by its own tools.

The store's on-disk format belongs to containers/storage (layer drivers,
locks, rootless id mappings), so ocistrap never writes it itself. skopeo copies
the OCI image in unchanged, keeping its manifest digest; without skopeo,
``podman load`` reads a docker-archive of it instead (one platform only, and the
stored manifest is then docker's, so its digest differs from ours).

Names follow podman: one without a registry gets ``localhost/`` (as
``podman build -t`` does), one without a tag gets ``latest``. Like skopeo, an
image cannot be stored without a name.
"""

import shutil
import subprocess
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path

from ocistrap.oci import ocilayout
from ocistrap.oci.image import Descriptor, split_docker_reference
from ocistrap.oci.ocilayout import Referrer
from ocistrap.transports import (
    BadReference,
    Context,
    ImageStore,
    Reference,
    Shape,
    TransportError,
    docker_archive,
    not_readable,
)

TOOLS = ("skopeo", "podman")


def storage_name(ref: Reference) -> str:
    """The fully qualified ``registry/path:tag`` REF is stored under."""
    if not ref.name:
        raise TransportError(
            f"{ref}: an image needs a name to be stored",
            hint="e.g. containers-storage:localhost/debian:bookworm",
        )
    if ref.digest:
        raise TransportError(f"{ref}: name the stored image with a tag, not a digest")
    first, sep, _ = ref.name.partition("/")
    qualified = ref.name if sep and ("." in first or ":" in first or first == "localhost") else f"localhost/{ref.name}"
    return f"{qualified}:{ref.tag or 'latest'}"


def find_tool() -> str:
    """The first of skopeo and podman on PATH."""
    for tool in TOOLS:
        if shutil.which(tool):
            return tool
    raise TransportError(
        "cannot write to containers-storage: neither skopeo nor podman is installed",
        hint="install one (apt-get install skopeo), or write oci:DIR:TAG and copy it yourself",
    )


def store(layout: Path, desc: Descriptor, name: str) -> str:
    """Put the image DESC of LAYOUT into the user's containers storage as NAME; return the tool used."""
    tool = find_tool()
    with tempfile.TemporaryDirectory(prefix=".ocistrap-storage-", dir=layout.parent) as tmp:
        staging = Path(tmp)
        if tool == "skopeo":
            ocilayout.write(layout, desc, staging / "layout", "image")
            argv = ["skopeo", "copy", "--quiet", f"oci:{staging / 'layout'}:image", f"containers-storage:{name}"]
        else:
            docker_archive.write(layout, desc, staging / "image.tar", [name])
            argv = ["podman", "load", "--quiet", "--input", str(staging / "image.tar")]
        _run(argv, name)
    return tool


def _run(argv: list[str], name: str) -> None:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        detail = " ".join(result.stderr.strip().splitlines()[-3:]) or f"exit status {result.returncode}"
        raise TransportError(f"{argv[0]} could not store the image as {name}: {detail}")


# --- the transport -----------------------------------------------------------------------------


def parse(details: str, text: str) -> Reference:
    if not details:
        return Reference("containers-storage")
    if details.startswith("["):
        raise BadReference(f"{text!r}: containers-storage store specifications are not supported")
    name, tag, digest = split_docker_reference(details, text)
    return Reference("containers-storage", name=name, tag=tag, digest=digest)


def show(ref: Reference) -> str:
    return f"containers-storage:{ref.image()}"


def check(ref: Reference, shape: Shape) -> None:
    """The name is needed, and a tool to store with; podman loads one platform only."""
    storage_name(ref)
    if find_tool() == "podman" and shape.platforms != 1:
        raise TransportError(f"{ref}: without skopeo, podman loads one platform, this build makes "
                             f"{shape.platforms}", hint="install skopeo, or build one architecture")


def write_image(layout: Path, desc: Descriptor, ref: Reference, ctx: Context) -> None:
    store(layout, desc, storage_name(ref))


def open_image(ref: Reference, ctx: Context) -> AbstractContextManager[ImageStore]:
    not_readable(ref)


def signature_place(ref: Reference) -> None:
    """Signatures in containers-storage are podman's own business (podman push --sign-by-sigstore)."""
    return None


def attach(layout: Path, referrer: Referrer, ref: Reference, ctx: Context) -> bool:
    """containers/storage keeps referrers only through its own tools' signature stores."""
    return False
