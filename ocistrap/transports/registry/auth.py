"""Registry credentials, read and written where podman, skopeo and docker keep them.

Lookup order: ``$REGISTRY_AUTH_FILE``, then podman's per-session
``${XDG_RUNTIME_DIR}/containers/auth.json``, then ``~/.docker/config.json``.
In each file an ``auths`` entry with a base64 ``auth`` field wins, then a
``credHelpers`` entry for the registry, then ``credsStore``; helpers are run as
``docker-credential-NAME get``. Logins are written like ``podman login`` does,
to ``$REGISTRY_AUTH_FILE`` or the per-session file, mode 0600.

A password is only ever held inside a ``Credentials`` whose repr hides it;
no message of this module contains one.
"""

import base64
import binascii
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ocistrap.errors import CredentialsError
from ocistrap.oci.image import DOCKER_HUB
from ocistrap.oci.ocilayout import atomic_write_bytes

_DOCKER_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


@dataclass(frozen=True)
class Credentials:
    """A user name and its secret; the secret never shows in repr or str."""

    username: str
    password: str = field(repr=False)
    source: str = ""

    def basic(self) -> str:
        """The value of a ``Basic`` Authorization header."""
        return base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def normalize_registry(key: str) -> str:
    """Reduce an auth-file key (``https://index.docker.io/v1/``, ``host:5000``) to a host[:port][/path]."""
    text = key.strip()
    for scheme in ("https://", "http://"):
        if text.startswith(scheme):
            text = text[len(scheme):]
    text = text.rstrip("/")
    if text.endswith("/v1") or text.endswith("/v2"):
        text = text[:-3]
    host, slash, path = text.partition("/")
    if host in _DOCKER_HUB_ALIASES:
        host = DOCKER_HUB
    return host + slash + path


def auth_files() -> list[Path]:
    """The files searched for credentials, in order."""
    files = []
    if env := os.environ.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env))
    files.append(session_auth_file())
    files.append(Path.home() / ".docker" / "config.json")
    return list(dict.fromkeys(files))


def session_auth_file() -> Path:
    """Podman's per-login-session auth file (``${XDG_RUNTIME_DIR}/containers/auth.json``)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        candidate = Path(f"/run/user/{os.getuid()}")
        if not candidate.is_dir():
            return Path.home() / ".config" / "containers" / "auth.json"
        runtime = str(candidate)
    return Path(runtime) / "containers" / "auth.json"


def login_file() -> Path:
    """Where ``login`` stores credentials: ``$REGISTRY_AUTH_FILE`` or the per-session file."""
    env = os.environ.get("REGISTRY_AUTH_FILE")
    return Path(env) if env else session_auth_file()


def lookup(registry: str, repository: str | None = None) -> Credentials | None:
    """The credentials for REGISTRY (a repository-scoped entry first, as podman allows), or None."""
    keys = _candidate_keys(normalize_registry(registry), repository)
    for path in auth_files():
        config = _load(path)
        found = _from_config(config, keys, path)
        if found is not None:
            return found
    return None


def _candidate_keys(registry: str, repository: str | None) -> list[str]:
    """Most specific first: ``host/a/b``, ``host/a``, ``host``."""
    keys = []
    if repository:
        parts = repository.split("/")
        keys = [f"{registry}/{'/'.join(parts[:n])}" for n in range(len(parts), 0, -1)]
    return [*keys, registry]


def _load(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"{path}: cannot read the credentials file: {exc.strerror}") from None
    try:
        config = json.loads(data) if data.strip() else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CredentialsError(f"{path}: not a valid JSON credentials file", hint="fix or remove it") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"{path}: expected a JSON object with an \"auths\" map")
    return config


def _from_config(config: dict[str, Any], keys: list[str], path: Path) -> Credentials | None:
    auths = {normalize_registry(k): v for k, v in (config.get("auths") or {}).items() if isinstance(v, dict)}
    helpers = {normalize_registry(k): v for k, v in (config.get("credHelpers") or {}).items()}
    for key in keys:
        entry = auths.get(key) or {}
        if entry.get("auth"):
            return _decode(entry["auth"], key, path)
        if key in helpers:
            return _from_helper(helpers[key], key)
    store = config.get("credsStore")
    if store:
        return _from_helper(store, keys[-1])
    return None


def _decode(auth: str, key: str, path: Path) -> Credentials:
    try:
        username, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        sep = ""
    if not sep:
        raise CredentialsError(
            f"{path}: the \"auth\" entry for {key} is not base64 of USER:PASSWORD",
            hint=f"log in again with `ocistrap login {key}`",
        )
    return Credentials(username, password, source=str(path))


def _from_helper(helper: str, registry: str) -> Credentials | None:
    """Ask ``docker-credential-HELPER get``; None when it has nothing for REGISTRY."""
    program = f"docker-credential-{helper}"
    try:
        result = subprocess.run([program, "get"], input=registry.encode(), capture_output=True, timeout=60)
    except FileNotFoundError:
        raise CredentialsError(
            f"credential helper {program} is configured for {registry} but not installed",
            hint="install it or remove it from credHelpers/credsStore",
        ) from None
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"credential helper {program} did not answer within 60 s") from None
    if result.returncode != 0:
        return None
    try:
        answer = json.loads(result.stdout)
        return Credentials(answer["Username"], answer["Secret"], source=program)
    except (ValueError, KeyError, TypeError):
        raise CredentialsError(f"credential helper {program} gave an answer that is not {{Username, Secret}} JSON") from None


def store(registry: str, credentials: Credentials) -> Path:
    """Record CREDENTIALS for REGISTRY in the login file, like ``podman login``; return the file."""
    path = login_file()
    config = _load(path)
    auths = config.setdefault("auths", {})
    auths[normalize_registry(registry)] = {"auth": credentials.basic()}
    _save(path, config)
    return path


def remove(registry: str) -> Path | None:
    """Forget REGISTRY in the login file; return the file, or None if it held no login for it."""
    path = login_file()
    config = _load(path)
    auths = config.get("auths") or {}
    key = normalize_registry(registry)
    matching = [k for k in auths if normalize_registry(k) == key]
    if not matching:
        return None
    for k in matching:
        del auths[k]
    _save(path, config)
    return path


def _save(path: Path, config: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        atomic_write_bytes(path, json.dumps(config, indent="\t").encode() + b"\n")
    finally:
        os.umask(old_umask)
