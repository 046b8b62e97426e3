"""``ketch login``, ``ketch logout`` and ``ketch push``.

``login``/``logout`` keep registry credentials in Docker's config file;
``push`` sends a stored image to a registry (:mod:`ketch.image.push`) with
Docker's output.

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
    "push": "Upload an image to a registry",
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


def configure_push(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print only the reference pushed")
    p.add_argument("--tls-verify", default="true", metavar="BOOL",
                   help="check the registry's TLS certificate (default true; false also allows plain HTTP)")
    p.add_argument("image", metavar="IMAGE[:TAG]", help="a stored image (its name is the destination "
                                                         "unless DESTINATION is given)")
    p.add_argument("destination", nargs="?", metavar="DESTINATION",
                   help="[docker://]REGISTRY/REPOSITORY[:TAG] to push to (default: IMAGE)")


def run_push(args: argparse.Namespace, paths) -> int:
    """``docker push`` output: the repository, one line per layer event, then the digest."""
    from ketch.image.progress import PlainProgress
    from ketch.image.push import push, target_of
    from ketch.image.store import ImageStore
    store = ImageStore(paths)
    tls = args.tls_verify.strip().lower() not in ("false", "0", "no", "off")
    printer = None
    if not args.quiet:
        _, ref = target_of(store, args.image, args.destination)
        printer = PlainProgress(sys.stdout)
        printer.line(f"The push refers to repository [{ref.name}]")
    r = push(store, args.image, args.destination, tls_verify=tls, progress=printer)
    if printer is not None:
        printer.line(f"{r.ref.tag}: digest: {r.digest} size: {r.size}")
    else:
        print(str(r.ref))
    return 0
