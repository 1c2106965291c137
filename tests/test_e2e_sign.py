"""Signed images end to end as an unprivileged user: bookworm minbase built with --sign and pushed
to a docker-registry on 127.0.0.1, then judged by a real containers/image client under a policy.json
that requires ``sigstoreSigned`` with the public key, and by `ocistrap verify --key`, case by case.

The real client is trixie's skopeo (1.18), run from a trixie root file system made once per session
with mmdebstrap and entered with ``unshare --map-root-user chroot`` (the host network, so the
loopback registry, is shared): bookworm's skopeo 1.9 and podman 4.3 carry a Debian change that
refuses every sigstore signature ("Debian-local change: sigstore disabled").
"""

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import cache_dir, locked, ocistrap, printed_digests, work  # noqa: F401  (shared fixtures)
from image_helpers import build, lockfile
from registry_fixture import RealRegistry, free_port

from ocistrap.oci import keys, signature
from ocistrap.transports import parse_reference
from ocistrap.transports.registry import api, upload

pytestmark = [pytest.mark.e2e, pytest.mark.network]

CLIENT_SUITE = "trixie"
DEBIAN_REFUSAL = "Debian-local change: sigstore disabled"


@dataclass(frozen=True)
class Keys:
    key: Path
    pub: Path
    passphrase: Path
    other_key: Path
    other_pub: Path


@dataclass(frozen=True)
class Skopeo:
    """trixie's skopeo in a root file system ROOT of this account's, with a sigstoreSigned policy."""

    root: Path

    def copy(self, ref: str, *options: str) -> subprocess.CompletedProcess[str]:
        target = f"/tmp/copy-{uuid.uuid4().hex}"
        return subprocess.run(
            ["unshare", "--map-root-user", "chroot", str(self.root), "skopeo", "--policy", "/cfg/policy.json",
             "--registries.d", "/cfg/registries.d", "copy", "--quiet", "--src-tls-verify=false", *options,
             f"docker://{ref}", f"dir:{target}"], capture_output=True, text=True, timeout=300)

    def require(self, registry: str, pub: Path) -> None:
        """Require sigstore signatures by PUB for REGISTRY, read from its sha256-<hex>.sig tags."""
        config = self.root / "cfg"
        (config / "registries.d").mkdir(parents=True, exist_ok=True)
        shutil.copy(pub, config / "key.pub")
        policy = {"default": [{"type": "reject"}],
                  "transports": {"docker": {registry: [{"type": "sigstoreSigned", "keyPath": "/cfg/key.pub",
                                                        "signedIdentity": {"type": "matchRepoDigestOrExact"}}]},
                                 "dir": {"": [{"type": "insecureAcceptAnything"}]}}}
        (config / "policy.json").write_text(json.dumps(policy))
        (config / "registries.d" / "loopback.yaml").write_text(
            f"docker:\n  {registry}:\n    use-sigstore-attachments: true\n")


@pytest.fixture(scope="session")
def skopeo(tmp_path_factory: pytest.TempPathFactory) -> Skopeo:
    """trixie's skopeo, or a skip saying why there is none."""
    for tool in ("mmdebstrap", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: no skopeo that checks sigstore signatures")
    directory = tmp_path_factory.mktemp("skopeo")
    made = subprocess.run(["mmdebstrap", "--quiet", "--mode=unshare", "--variant=apt", "--include=skopeo",
                           CLIENT_SUITE, str(directory / "root.tar")], capture_output=True, text=True, timeout=900)
    if made.returncode != 0:
        pytest.skip(f"mmdebstrap could not make a {CLIENT_SUITE} root file system for skopeo: "
                    f"{made.stderr.strip().splitlines()[-1:]}")
    root = directory / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--exclude=./dev/*", "-xf", str(directory / "root.tar")], check=True)
    (directory / "root.tar").unlink()
    return Skopeo(root)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRegistry]:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt-get install docker-registry)")
    server = RealRegistry(tmp_path_factory.mktemp("sign-registry"), free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """The signing key (encrypted, as `ocistrap key generate` writes it) and another one."""
    directory = tmp_path_factory.mktemp("keys")
    (directory / "passphrase").write_text("correct horse\n")
    keys.generate(directory / "signer.key", directory / "signer.pub", "correct horse")
    keys.generate(directory / "other.key", directory / "other.pub", "")
    return Keys(directory / "signer.key", directory / "signer.pub", directory / "passphrase",
                directory / "other.key", directory / "other.pub")


@dataclass(frozen=True)
class Pushed:
    """The images of the module, by case: REFS[case] is the reference a consumer pulls."""

    refs: dict[str, str]
    digest: str
    layout: Path


@pytest.fixture(scope="module")
def pushed(registry: RealRegistry, pair: Keys, work: Path, cache_dir: Path, locked) -> Pushed:
    """bookworm minbase built once with --sign into the registry and an oci: layout, then copied as
    each case needs: unsigned, signed by another key, the signature copied onto another image's tag,
    and a signed multi-architecture index over it and a small arm64 image."""
    host = registry.host
    refs = {"signed": f"{host}/test/debian:bookworm", "unsigned": f"{host}/test/unsigned:bookworm",
            "other key": f"{host}/test/other:bookworm", "copied signature": f"{host}/test/debian:copied",
            "index": f"{host}/test/debian:multi"}
    layout = work / "signed"
    result = ocistrap("build", "--lock", str(locked("bookworm")), "--cache-dir", str(cache_dir),
                      "--sign", str(pair.key), "--passphrase-file", str(pair.passphrase),
                      "--push", refs["signed"], "-o", f"oci:{layout}:{refs['signed']}")
    digest, = set(printed_digests(result.stdout).values())
    source = f"oci:{layout}:{refs['signed']}"
    ocistrap("push", source, refs["unsigned"])
    ocistrap("push", source, refs["other key"], "--sign", str(pair.other_key))

    another = build(work / "another", "arm64", lockfile(("arm64",)), annotations={"case": "copied signature"})
    upload.push(work / "another", another, parse_reference(refs["copied signature"]))
    repo, _ = api.open_repository(parse_reference(refs["signed"]))
    data, media_type = repo.get_manifest(signature.signature_tag(digest))
    repo.put_manifest(signature.signature_tag(another.digest), data, media_type)

    build(work / "small", "arm64", lockfile(("arm64",)))
    ocistrap("push", f"oci:{work / 'small'}:arm64", f"{host}/test/debian:arm64", "--sign", str(pair.key),
             env={**os.environ, keys.PASSPHRASE_ENV: "correct horse"})
    ocistrap("index", refs["index"], refs["signed"], f"{host}/test/debian:arm64",
             "--sign", str(pair.key), "--passphrase-file", str(pair.passphrase))
    return Pushed(refs, digest, layout)


VERDICTS = {
    "signed": None,
    "index": None,
    "unsigned": "is unsigned",
    "other key": "signed, but not by the given key",
    "copied signature": "the signature is for sha256:",  # ...the bookworm image's digest, not this one's
}


@pytest.mark.parametrize("case", VERDICTS)
def test_ocistrap_verify_key_verdicts(pushed: Pushed, pair: Keys, case: str) -> None:
    result = ocistrap("verify", pushed.refs[case], "--key", str(pair.pub), check=False)
    if VERDICTS[case] is None:
        assert result.returncode == 0, result.stderr
        assert "signed by the given key" in result.stdout
    else:
        assert result.returncode == 1 and VERDICTS[case] in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_build_attests_its_provenance_in_the_registry_and_the_layout(pushed: Pushed, pair: Keys, locked) -> None:
    for ref in (pushed.refs["signed"], f"oci:{pushed.layout}:{pushed.refs['signed']}"):
        result = ocistrap("verify", ref, "--key", str(pair.pub), "--lock", str(locked("bookworm")))
        assert "SLSA v1 provenance signed by the given key" in result.stdout, result.stdout


@pytest.mark.parametrize("case", VERDICTS)
def test_skopeo_gives_the_same_verdicts(pushed: Pushed, pair: Keys, skopeo: Skopeo, registry: RealRegistry,
                                        case: str) -> None:
    skopeo.require(registry.host, pair.pub)
    for options in ((), ("--all",)) if case == "index" else ((),):
        result = skopeo.copy(pushed.refs[case], *options)
        if VERDICTS[case] is None:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode != 0 and "Source image rejected" in result.stderr, result.stderr


def test_bookworms_own_skopeo_refuses_every_sigstore_signature(pushed: Pushed, pair: Keys, tmp_path: Path,
                                                               registry: RealRegistry) -> None:
    """Why the real client comes from trixie: if this starts failing, bookworm's skopeo and podman can
    check the signatures themselves, and the tests above can use them."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    local = Skopeo(tmp_path)
    local.require(registry.host, pair.pub)
    policy = json.loads((tmp_path / "cfg" / "policy.json").read_text())
    policy["transports"]["docker"][registry.host][0]["keyPath"] = str(tmp_path / "cfg" / "key.pub")
    (tmp_path / "cfg" / "policy.json").write_text(json.dumps(policy))
    result = subprocess.run(["skopeo", "--policy", str(tmp_path / "cfg" / "policy.json"), "--registries.d",
                             str(tmp_path / "cfg" / "registries.d"), "copy", "--src-tls-verify=false",
                             f"docker://{pushed.refs['signed']}", f"dir:{tmp_path / 'copy'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and DEBIAN_REFUSAL in result.stderr, result.stderr
