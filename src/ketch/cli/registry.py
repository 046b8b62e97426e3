"""``ketch login`` and ``ketch logout``: registry credentials in Docker's config file.

Thin commands over :mod:`ketch.image.auth`; ``login`` checks the
credentials against the registry (``GET /v2/`` through the Basic or Bearer
flow) before storing them, as ``docker login`` does.
"""

from __future__ import annotations

import argparse
import sys

HELPS = {
    "login": "Log in to a registry",
    "logout": "Log out from a registry",
}
HELP = HELPS["login"]


def configure_login(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--username", help="username")
    p.add_argument("-p", "--password", help="password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="take the password from stdin")
    p.add_argument("--tls-verify", default="true", metavar="BOOL",
                   help="check the registry's TLS certificate (default true)")
    p.add_argument("server", nargs="?", default="docker.io", metavar="SERVER",
                   help="registry host[:port] (default: Docker Hub)")


def _domain(server: str) -> str:
    from ketch.image.auth import normalize_registry
    return normalize_registry(server)


def run_login(args: argparse.Namespace, paths) -> int:
    from ketch.errors import UsageError
    from ketch.image.auth import Credentials, save_credentials
    from ketch.image.registry import RegistryClient
    if args.password is not None and args.password_stdin:
        raise UsageError("--password and --password-stdin are mutually exclusive")
    user, password = args.username, args.password
    if args.password_stdin:
        if not user:
            raise UsageError("must provide --username with --password-stdin")
        password = sys.stdin.read().rstrip("\r\n")
    elif password is not None:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
    if not user:
        if not sys.stdin.isatty():
            raise UsageError("cannot prompt for a username: stdin is not a terminal (use -u)")
        user = input("Username: ").strip()
    if password is None:
        if not sys.stdin.isatty():
            raise UsageError("cannot prompt for a password: stdin is not a terminal (use --password-stdin)")
        import getpass
        password = getpass.getpass("Password: ")
    if not user or not password:
        raise UsageError("username and password are required")
    domain = _domain(args.server)
    creds = Credentials(user, password)
    tls = args.tls_verify.strip().lower() not in ("false", "0", "no", "off")
    with RegistryClient(domain, tls_verify=tls, credentials=creds) as client:
        client.ping()
    save_credentials(domain, creds)
    print("Login Succeeded")
    return 0


def configure_logout(p: argparse.ArgumentParser) -> None:
    p.add_argument("server", nargs="?", default="docker.io", metavar="SERVER",
                   help="registry host[:port] (default: Docker Hub)")


def run_logout(args: argparse.Namespace, paths) -> int:
    from ketch.image.auth import remove_credentials
    domain = _domain(args.server)
    shown = "https://index.docker.io/v1/" if domain == "docker.io" else domain
    if remove_credentials(domain):
        print(f"Removing login credentials for {shown}")
    else:
        print(f"Not logged in to {shown}")
    return 0
