"""Signed images end to end as an unprivileged user: bookworm minbase built with --sign and pushed
to a docker-registry on 127.0.0.1, then judged by a real containers/image client under a policy.json
that requires ``sigstoreSigned`` with the public key, and by `ocistrap verify --key`, case by case.

The real clients are trixie's skopeo (1.18) and podman (5.4), run from a trixie root file system
made once per session with mmdebstrap and entered with ``unshare --map-root-user chroot`` (the host
network, so the loopback registry, is shared): bookworm's skopeo 1.9 and podman 4.3 carry a Debian
change that refuses every sigstore signature ("Debian-local change: sigstore disabled").
"""

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_helpers import cache_dir, locked, ocistrap, printed_digests, work  # noqa: F401  (shared fixtures)
from image_helpers import build, lockfile
from registry_fixture import RealRegistry, free_port

from ocistrap.debian import lock
from ocistrap.oci import keys, provenance, signature
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
class Clients:
    """trixie's skopeo and podman in a root file system ROOT of this account's, entered as root of
    a user namespace of its own (podman's storage is vfs in ROOT, owners it cannot set ignored; a
    /dev/shm of its own, as podman as "root" takes the host's /dev/shm/libpod_lock, which another
    account's podman may own)."""

    root: Path

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        enter = (f"mount --rbind {self.root} {self.root} && mount -t proc proc {self.root}/proc && "
                 f"mount --rbind /dev {self.root}/dev && mount --rbind /sys {self.root}/sys && "
                 f"mount -t tmpfs run {self.root}/run && mount -t tmpfs shm {self.root}/dev/shm && "
                 f'exec chroot {self.root} env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"')
        return subprocess.run(["unshare", "--map-root-user", "--mount", "--pid", "--fork", "sh", "-c", enter,
                               "sh", *argv], capture_output=True, text=True, timeout=300)

    def pull(self, tool: str, ref: str, *options: str) -> subprocess.CompletedProcess[str]:
        if tool == "podman":
            return self.run("podman", "pull", "--quiet", "--tls-verify=false", *options, ref)
        return self.run("skopeo", "copy", "--quiet", "--src-tls-verify=false", *options, f"docker://{ref}",
                        f"dir:/tmp/copy-{uuid.uuid4().hex}")

    def require(self, registry: str, pub: Path) -> None:
        """Require sigstore signatures by PUB for REGISTRY, read from its sha256-<hex>.sig tags."""
        config = self.root / "etc" / "containers"
        (config / "registries.d").mkdir(parents=True, exist_ok=True)
        shutil.copy(pub, config / "ocistrap-test.pub")
        (config / "policy.json").write_text(json.dumps(policy(registry, "/etc/containers/ocistrap-test.pub")))
        (config / "registries.d" / "ocistrap-test.yaml").write_text(attachments(registry))
        (config / "storage.conf").write_text('[storage]\ndriver = "vfs"\nrunroot = "/run/containers/storage"\n'
                                             'graphroot = "/var/lib/containers/storage"\n'
                                             '[storage.options]\nignore_chown_errors = "true"\n')
        (config / "containers.conf").write_text('[containers]\nnetns = "host"\n'
                                                '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n')


def policy(registry: str, key_path: str) -> dict:
    """containers-policy.json(5): REGISTRY's images must carry a sigstore signature by KEY_PATH."""
    return {"default": [{"type": "reject"}],
            "transports": {"docker": {registry: [{"type": "sigstoreSigned", "keyPath": key_path,
                                                  "signedIdentity": {"type": "matchRepoDigestOrExact"}}]},
                           "dir": {"": [{"type": "insecureAcceptAnything"}]}}}


def attachments(registry: str) -> str:
    """containers-registries.d(5): look for REGISTRY's signatures under cosign's tags."""
    return f"docker:\n  {registry}:\n    use-sigstore-attachments: true\n"


@pytest.fixture(scope="session")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Clients:
    """trixie's skopeo and podman, or a skip saying why there are none."""
    for tool in ("mmdebstrap", "unshare"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: no skopeo or podman that checks sigstore signatures")
    directory = tmp_path_factory.mktemp("clients")
    made = subprocess.run(["mmdebstrap", "--quiet", "--mode=unshare", "--variant=apt", "--include=skopeo,podman",
                           CLIENT_SUITE, str(directory / "root.tar")], capture_output=True, text=True, timeout=900)
    if made.returncode != 0:
        pytest.skip(f"mmdebstrap could not make a {CLIENT_SUITE} root file system for skopeo and podman: "
                    f"{made.stderr.strip().splitlines()[-1:]}")
    root = directory / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--exclude=./dev/*", "-xf", str(directory / "root.tar")], check=True)
    (directory / "root.tar").unlink()
    return Clients(root)


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
            "index": f"{host}/test/debian:multi", "unsigned index": f"{host}/test/unsigned:multi",
            "index by another key": f"{host}/test/other:multi",
            "index signature copied": f"{host}/test/debian:multi-copied"}
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
    members = (refs["signed"], f"{host}/test/debian:arm64")
    printed = ocistrap("index", refs["index"], *members, "--sign", str(pair.key),
                       "--passphrase-file", str(pair.passphrase)).stdout
    ocistrap("index", refs["unsigned index"], *members)
    ocistrap("index", refs["index by another key"], *members, "--sign", str(pair.other_key))
    copied = ocistrap("index", refs["index signature copied"], members[0]).stdout  # an index clients can choose from
    data, media_type = repo.get_manifest(signature.signature_tag(printed.split()[-1]))
    repo.put_manifest(signature.signature_tag(copied.split()[-1]), data, media_type)
    return Pushed(refs, digest, layout)


VERDICTS = {
    "signed": None,
    "index": None,
    "unsigned": "is unsigned",
    "other key": "signed, but not by the given key",
    "copied signature": "the signature is for sha256:",  # ...the bookworm image's digest, not this one's
    "unsigned index": "is unsigned",
    "index by another key": "signed, but not by the given key",
    "index signature copied": "the signature is for sha256:",
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
    envelope = (pushed.layout / f"{pushed.refs['signed'].replace('/', '_')}.{provenance.FILE_NAME}").read_bytes()
    statement = provenance.verify(envelope, keys.load_public(pair.pub), pushed.digest)
    lockfile_ = lock.read(locked("bookworm"))
    debs = {d["uri"]: d["digest"]["sha256"] for d in statement["predicate"]["buildDefinition"]["resolvedDependencies"]
            if d["uri"].endswith(".deb")}
    assert debs == {lockfile_.package_url(p): p.sha256 for a in lockfile_.architectures.values() for p in a.packages}
    assert statement["subject"][0]["name"] == pushed.refs["signed"].rsplit(":", 1)[0]


def test_verify_rebuild_takes_the_lock_from_the_signed_attestation(pushed: Pushed, pair: Keys,
                                                                   cache_dir: Path) -> None:
    result = ocistrap("verify", pushed.refs["signed"], "--key", str(pair.pub), "--rebuild",
                      "--cache-dir", str(cache_dir))
    assert "SLSA v1 provenance signed by the given key" in result.stdout
    assert f"reproduced {pushed.digest} from the lockfile of its provenance attestation" in result.stdout, \
        result.stdout


@pytest.mark.parametrize("tool", ["skopeo", "podman"])
@pytest.mark.parametrize("case", VERDICTS)
def test_skopeo_and_podman_give_the_same_verdicts(pushed: Pushed, pair: Keys, clients: Clients,
                                                  registry: RealRegistry, case: str, tool: str) -> None:
    clients.require(registry.host, pair.pub)
    for options in ((), ("--all",)) if "index" in case and tool == "skopeo" else ((),):
        result = clients.pull(tool, pushed.refs[case], *options)
        if VERDICTS[case] is None:
            assert result.returncode == 0, result.stderr
        else:
            assert result.returncode != 0 and "Source image rejected" in result.stderr, result.stderr


@pytest.mark.parametrize("tool", ["skopeo", "podman"])
def test_bookworms_own_clients_refuse_every_sigstore_signature(pushed: Pushed, pair: Keys, tmp_path: Path,
                                                               registry: RealRegistry, tool: str) -> None:
    """Why the real clients come from trixie: if this starts failing, bookworm's skopeo and podman
    check the signatures themselves, and the tests above can use them."""
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    registries_d = tmp_path / ".config" / "containers" / "registries.d"  # where both look under $HOME
    registries_d.mkdir(parents=True)
    (tmp_path / "policy.json").write_text(json.dumps(policy(registry.host, str(pair.pub))))
    (registries_d / "ocistrap-test.yaml").write_text(attachments(registry.host))
    argv = {"skopeo": ["skopeo", "--policy", str(tmp_path / "policy.json"), "copy", "--src-tls-verify=false",
                       f"docker://{pushed.refs['signed']}", f"dir:{tmp_path / 'copy'}"],
            "podman": ["podman", "--root", str(tmp_path / "storage"), "--runroot", "RUNROOT",
                       "--storage-driver", "vfs", "pull", "--tls-verify=false", "--signature-policy",
                       str(tmp_path / "policy.json"), pushed.refs["signed"]]}[tool]
    env = {**os.environ, "HOME": str(tmp_path)}
    with tempfile.TemporaryDirectory(dir="/tmp") as runroot:  # podman takes at most 50 characters
        argv = [runroot if arg == "RUNROOT" else arg for arg in argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0 and DEBIAN_REFUSAL in result.stderr, result.stderr
