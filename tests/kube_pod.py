"""examples/kubernetes-job.yaml read as a test needs it: its pod's security settings as `docker
run` flags (the Docker tests run the restricted pod so), and the checks of Kubernetes' "restricted"
Pod Security Standard that the example claims to pass."""

from pathlib import Path
from typing import Any

import yaml

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kubernetes-job.yaml"
# Volume types the restricted standard allows (kubernetes.io/docs/concepts/security/pod-security-standards).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SIZES = {"Ki": "k", "Mi": "m", "Gi": "g"}


def job(path: Path = EXAMPLE) -> dict[str, Any]:
    """The Job of the example file (it holds the cache's PersistentVolumeClaim too)."""
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "Job")


def pod(document: dict[str, Any]) -> dict[str, Any]:
    return document["spec"]["template"]["spec"]


def container(document: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod(document)["containers"]
    return only


def security(document: dict[str, Any]) -> dict[str, Any]:
    """The container's security context over the pod's, as the kubelet merges them."""
    return {**pod(document).get("securityContext", {}), **container(document).get("securityContext", {})}


def restricted_violations(document: dict[str, Any]) -> list[str]:
    """What of the restricted standard (and the baseline under it) DOCUMENT's pod breaks."""
    spec, ctx = pod(document), security(document)
    capabilities = ctx.get("capabilities", {})
    checks = {
        "host namespaces": not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")),
        "privileged": not ctx.get("privileged"),
        "privilege escalation": ctx.get("allowPrivilegeEscalation") is False,
        "non-root": ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 1) != 0,
        "seccomp": ctx.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"),
        "capabilities": capabilities.get("drop") == ["ALL"] and set(capabilities.get("add", [])) <= {"NET_BIND_SERVICE"},
        "volume types": all(set(v) - {"name"} <= RESTRICTED_VOLUMES for v in spec.get("volumes", [])),
        "host ports": not any(p.get("hostPort") for p in container(document).get("ports", [])),
        "proc mount": ctx.get("procMount", "Default") == "Default",
    }
    return [name for name, ok in checks.items() if not ok]


def docker_flags(document: dict[str, Any]) -> list[str]:
    """`docker run` flags for DOCUMENT's pod: its user, capabilities, no-new-privileges, read-only
    root, environment and emptyDir volumes, as tmpfs mounts that allow exec and devices as the
    kubelet's do (one on /dev/shm replaces Docker's noexec one). RuntimeDefault stands for Docker's
    default profile, from which containerd's and CRI-O's are derived; other volumes are the caller's."""
    ctx, box = security(document), container(document)
    flags = ["--user", f"{ctx['runAsUser']}:{ctx.get('runAsGroup', ctx['runAsUser'])}"]
    flags += [f"--cap-drop={c}" for c in ctx.get("capabilities", {}).get("drop", [])]
    flags += [f"--cap-add={c}" for c in ctx.get("capabilities", {}).get("add", [])]
    if ctx.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    if ctx.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    if ctx.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        raise ValueError("only RuntimeDefault has a Docker counterpart here")
    for env in box.get("env", []):
        flags += ["--env", f"{env['name']}={env['value']}"]
    volumes = {v["name"]: v for v in pod(document).get("volumes", [])}
    for mount in box.get("volumeMounts", []):
        empty = volumes[mount["name"]].get("emptyDir")
        if empty is None:
            continue
        size = f",size={_docker_size(empty['sizeLimit'])}" if "sizeLimit" in empty else ""
        flags += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777{size}"]
    return flags


def _docker_size(quantity: str) -> str:
    number, unit = quantity[:-2], quantity[-2:]
    return f"{number}{SIZES[unit]}"
