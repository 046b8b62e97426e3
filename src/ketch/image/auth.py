"""Registry credentials in Docker's format (``~/.docker/config.json``).

The file is Docker's CLI config (cli/config/configfile)::

    {"auths": {"https://index.docker.io/v1/": {"auth": "<base64 user:password>"},
               "registry.example.com": {"auth": "…"}},
     "credsStore": "desktop",                  # optional: docker-credential-desktop
     "credHelpers": {"gcr.io": "gcloud"}}      # optional: per-registry helpers

Which file: ``$KETCH_AUTH_FILE``, else ``$DOCKER_CONFIG/config.json``, else
``~/.docker/config.json``.  Docker Hub's entry is keyed
``https://index.docker.io/v1/``; other registries by ``host[:port]``, though
keys written as URLs (``https://host/v2/``) are matched too, as Docker does.

Credential helpers (``docker-credential-NAME get|store|erase``, JSON on
stdin/stdout) are honoured: ``credHelpers[host]`` first, then
``credsStore``, then the ``auths`` entry.  Writes keep every other key of the
file, and the file is mode 0600 (its directory 0700 when created).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import ImageError

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or, with ``username == "<token>"``, an identity token)."""

    username: str
    password: str

    def __repr__(self) -> str:  # never show the secret in a traceback
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def auth_file() -> Path:
    """The credentials file in use (see the module doc); it may not exist."""
    env = os.environ.get("KETCH_AUTH_FILE")
    if env:
        return Path(env)
    d = os.environ.get("DOCKER_CONFIG")
    if d:
        return Path(d) / "config.json"
    return Path(os.path.expanduser("~")) / ".docker" / "config.json"


def normalize_registry(server: str) -> str:
    """``https://index.docker.io/v1/``, ``index.docker.io`` … → ``docker.io``;
    ``https://host:5000/v2/`` → ``host:5000``."""
    s = server.strip()
    for scheme in ("https://", "http://"):
        if s.startswith(scheme):
            s = s[len(scheme):]
    s = s.split("/", 1)[0]
    return "docker.io" if s in _HUB_ALIASES else s


def config_key(domain: str) -> str:
    """The ``auths`` key Docker writes for registry ``domain``."""
    d = normalize_registry(domain)
    return DOCKER_HUB_KEY if d == "docker.io" else d


def _read(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ImageError(f"{path}: cannot read credentials: {e.strerror}") from None
    if not data.strip():
        return {}
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ImageError(f"{path}: invalid JSON in the credentials file: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{path}: the credentials file is not a JSON object")
    return doc


def _write(path: Path, doc: dict) -> None:
    from ketch.image.store import atomic_write
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    atomic_write(path, (json.dumps(doc, indent="\t") + "\n").encode(), 0o600)


def _helper_for(doc: dict, domain: str) -> str | None:
    helpers = doc.get("credHelpers") or {}
    for k, v in helpers.items():
        if normalize_registry(k) == domain and v:
            return str(v)
    store = doc.get("credsStore")
    return str(store) if store else None


def _run_helper(helper: str, action: str, data: str) -> str:
    exe = f"docker-credential-{helper}"
    try:
        p = subprocess.run([exe, action], input=data.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
    except FileNotFoundError:
        raise ImageError(f"credential helper {exe} not found (named by the credentials file {auth_file()})") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"credential helper {exe} {action}: timed out") from None
    if p.returncode != 0:
        msg = (p.stdout or p.stderr).decode(errors="replace").strip().splitlines()
        raise ImageError(f"credential helper {exe} {action}: {msg[0] if msg else 'exit ' + str(p.returncode)}")
    return p.stdout.decode()


def _server_url(domain: str) -> str:
    return config_key(domain)


def load_credentials(domain: str, path: Path | None = None) -> Credentials | None:
    """Credentials for registry ``domain`` (``docker.io``, ``host:port``), or None.

    Raises :class:`ImageError` for an unreadable file or a failing helper.
    """
    path = path or auth_file()
    doc = _read(path)
    domain = normalize_registry(domain)
    helper = _helper_for(doc, domain)
    if helper:
        try:
            out = _run_helper(helper, "get", _server_url(domain))
        except ImageError as e:
            if "credentials not found" not in str(e).lower():
                raise
        else:
            try:
                got = json.loads(out)
                return Credentials(str(got["Username"]), str(got["Secret"]))
            except (ValueError, KeyError, TypeError):
                raise ImageError(f"credential helper docker-credential-{helper}: unreadable answer") from None
    for key, entry in (doc.get("auths") or {}).items():
        if normalize_registry(key) != domain or not isinstance(entry, dict):
            continue
        if entry.get("identitytoken"):
            return Credentials("<token>", str(entry["identitytoken"]))
        if entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise ImageError(f"{path}: invalid auth entry for {key}") from None
            if not sep:
                raise ImageError(f"{path}: invalid auth entry for {key} (no ':' in user:password)")
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(str(entry["username"]), str(entry.get("password", "")))
    return None


def save_credentials(domain: str, creds: Credentials, path: Path | None = None) -> Path:
    """Store ``creds`` for ``domain`` (through the helper if one is configured); returns the file."""
    path = path or auth_file()
    doc = _read(path)
    domain = normalize_registry(domain)
    helper = _helper_for(doc, domain)
    if helper:
        _run_helper(helper, "store", json.dumps({"ServerURL": _server_url(domain), "Username": creds.username,
                                                 "Secret": creds.password}))
        auths = doc.setdefault("auths", {})
        auths[config_key(domain)] = {}  # Docker records the registry with an empty entry
        _write(path, doc)
        return path
    auths = doc.get("auths")
    if not isinstance(auths, dict):
        auths = doc["auths"] = {}
    for key in [k for k in auths if normalize_registry(k) == domain]:
        del auths[key]
    token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    auths[config_key(domain)] = {"auth": token}
    _write(path, doc)
    return path


def remove_credentials(domain: str, path: Path | None = None) -> bool:
    """Forget the credentials of ``domain``; True if there were any."""
    path = path or auth_file()
    doc = _read(path)
    domain = normalize_registry(domain)
    found = False
    helper = _helper_for(doc, domain)
    if helper:
        try:
            _run_helper(helper, "erase", _server_url(domain))
            found = True
        except ImageError as e:
            if "credentials not found" not in str(e).lower():
                raise
    auths = doc.get("auths")
    if isinstance(auths, dict):
        for key in [k for k in auths if normalize_registry(k) == domain]:
            del auths[key]
            found = True
        if found:
            _write(path, doc)
    return found


__all__ = ["Credentials", "auth_file", "config_key", "load_credentials", "normalize_registry",
           "remove_credentials", "save_credentials"]
