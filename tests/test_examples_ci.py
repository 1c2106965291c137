"""The examples for CI jobs and Kubernetes (examples/ci/, examples/kubernetes-job.yaml,
examples/runner.Containerfile): every ocistrap command in them is one the CLI takes, the pod is
one the "restricted" Pod Security Standard admits and can build in, the runner image holds what
installing ocistrap needs. tests/test_e2e_docker.py runs the pod's security settings for real."""

import copy
import re
import shlex
import tomllib
from pathlib import Path

import kube_pod
import pytest
import yaml

from ocistrap import cli, settings
from ocistrap.rootfs.plainroot import MEMORY_STAGING_FREE

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GITLAB = EXAMPLES / "ci" / "gitlab-ci.yml"
GITHUB = EXAMPLES / "ci" / "github-workflow.yml"
RUNNER = EXAMPLES / "runner.Containerfile"
# What the CI services put in the environment, as a job would see it.
CI_ENV = {"CI_REGISTRY": "registry.example", "CI_REGISTRY_IMAGE": "registry.example/group/project",
          "CI_REGISTRY_USER": "gitlab-ci-token", "CI_REGISTRY_PASSWORD": "secret", "REGISTRY_PASSWORD": "secret",
          "HOME": "/home/runner", "GITHUB_PATH": "/home/runner/work/_temp/path"}
GITHUB_EXPRESSION = re.compile(r"\$\{\{\s*([^}]*?)\s*\}\}")
SEPARATORS = {"|", "||", "&&", ";", "&"}


def expand(text: str, env: dict[str, str]) -> str:
    """TEXT with GitHub's ${{ a.b }} as `b` and $NAME or ${NAME} from ENV (a name not there is an error)."""
    text = GITHUB_EXPRESSION.sub(lambda m: m[1].split(".")[-1].replace("_", "-"), text)
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env[m[1]], text)


def ocistrap_commands(script: str, env: dict[str, str]) -> list[list[str]]:
    """The ocistrap command lines of a shell SCRIPT, split as the shell would, after expansion."""
    commands = []
    for line in script.splitlines():
        lexer = shlex.shlex(expand(line, env), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for word in [*lexer, ";"]:
            if word in SEPARATORS:
                if words[:1] == ["ocistrap"]:
                    commands.append(words[1:])
                words = []
            else:
                words.append(word)
    return commands


def taken(argv: list[str]) -> None:
    """Fail unless the CLI parses ARGV (and resolves its settings, for the commands that have them)."""
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"ocistrap does not take `ocistrap {shlex.join(argv)}`")
    if args.command in ("lock", "build"):
        settings.resolve(args, args.command)


def gitlab_commands() -> list[list[str]]:
    document = yaml.safe_load(GITLAB.read_text())
    env = dict(CI_ENV)
    for name, value in document["variables"].items():
        env[name] = expand(value, env)
    jobs = [job for name, job in document.items() if isinstance(job, dict) and "script" in job]
    return [c for job in jobs for c in ocistrap_commands("\n".join(job["script"]), env)]


def github_commands() -> list[list[str]]:
    document = yaml.safe_load(GITHUB.read_text())
    commands = []
    for job in document["jobs"].values():
        env = {**CI_ENV, **{k: expand(v, CI_ENV) for k, v in job.get("env", {}).items()}}
        for step in job["steps"]:
            commands += ocistrap_commands(step.get("run", ""), {**env, **step.get("env", {})})
    return commands


@pytest.mark.parametrize("commands", [gitlab_commands, github_commands], ids=["gitlab", "github"])
def test_every_ocistrap_command_of_a_ci_example_is_taken(commands) -> None:
    found = commands()
    assert [c[0] for c in found] == ["doctor", "login", "lock", "build", "verify"]
    for argv in found:
        taken(argv)
    build = next(c for c in found if c[0] == "build")
    verify = next(c for c in found if c[0] == "verify")
    assert build[build.index("--push") + 1] == verify[1], "verify checks what build pushed"


def test_the_kubernetes_job_s_command_is_taken_and_pushes() -> None:
    argv = kube_pod.container(kube_pod.job())["command"]
    assert argv[0] == "ocistrap"
    taken(argv[1:])
    assert "--push" in argv


def test_the_kubernetes_job_passes_the_restricted_standard() -> None:
    assert kube_pod.restricted_violations(kube_pod.job()) == []


@pytest.mark.parametrize("change, broken", [
    (lambda c, p: c["securityContext"].pop("allowPrivilegeEscalation"), "privilege escalation"),
    (lambda c, p: c["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "capabilities"),
    (lambda c, p: p["securityContext"].update(runAsUser=0), "non-root"),
    (lambda c, p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "volume types"),
    (lambda c, p: p["securityContext"].pop("seccompProfile"), "seccomp"),
])
def test_the_restricted_check_finds_what_breaks_it(change, broken: str) -> None:
    job = copy.deepcopy(kube_pod.job())
    change(kube_pod.container(job), kube_pod.pod(job))
    assert kube_pod.restricted_violations(job) == [broken]


def mounted(path: str) -> bool:
    points = [m["mountPath"] for m in kube_pod.container(kube_pod.job())["volumeMounts"]]
    return any(path == p or path.startswith(p.rstrip("/") + "/") for p in points)


def test_what_the_pod_writes_is_on_a_volume() -> None:
    """The root file system is read-only: home (the cache's key), the temporary directory, the
    cache, /dev/shm (staging) and the registry credentials are volumes."""
    box = kube_pod.container(kube_pod.job())
    assert kube_pod.security(kube_pod.job())["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in box["env"]}
    command = box["command"]
    for path in (env["HOME"], env["TMPDIR"], env["REGISTRY_AUTH_FILE"], command[command.index("--cache-dir") + 1],
                 "/dev/shm"):
        assert mounted(path), path


def test_the_pod_s_dev_shm_is_large_enough_to_stage_in() -> None:
    volumes = {v["name"]: v for v in kube_pod.pod(kube_pod.job())["volumes"]}
    (shm,) = [m for m in kube_pod.container(kube_pod.job())["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    empty = volumes[shm["name"]]["emptyDir"]
    assert empty["medium"] == "Memory"
    number, unit = re.fullmatch(r"(\d+)(Gi|Mi)", empty["sizeLimit"]).groups()
    assert int(number) << {"Gi": 30, "Mi": 20}[unit] > MEMORY_STAGING_FREE


def test_docker_flags_of_the_pod() -> None:
    flags = kube_pod.docker_flags(kube_pod.job())
    assert flags[:7] == ["--user", "1000:1000", "--cap-drop=ALL", "--security-opt", "no-new-privileges", "--read-only",
                         "--env"]
    assert "/dev/shm:rw,exec,mode=1777,size=3g" in flags


def test_the_runner_image_copies_what_installing_ocistrap_needs() -> None:
    """The Containerfile's COPY sources are the package's sources as pyproject.toml names them, and
    its base is the image its instructions build from examples/ocistrap-runner.toml."""
    text = RUNNER.read_text()
    copied = {source.rstrip("/") for line in re.findall(r"^COPY (.+) \S+$", text, re.M) for source in line.split()}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], "ocistrap",
              *project["tool"]["setuptools"]["package-dir"].values()}
    assert copied == needed
    assert all((ROOT / source).exists() for source in copied)
    built = re.search(r"ocistrap build -f (\S+) -o containers-storage:(\S+)", text)
    assert built and (ROOT / built[1]).is_file()
    assert re.search(r"^ARG BASE=(\S+)$", text, re.M)[1] == built[2]
    assert re.search(r"^FROM \$\{BASE\}$", text, re.M)
    runner_spec = tomllib.loads((ROOT / built[1]).read_text())
    assert {"python3-venv", "gpgv", "debian-archive-keyring"} <= set(runner_spec["include"])
