"""``ketch run`` and ``ketch rm``: thin commands over :class:`ketch.engine.containers.Engine`."""

from __future__ import annotations

import argparse
import os

from ketch.paths import Paths

HELPS = {
    "run": "Create and run a new container from an image",
    "rm": "Remove one or more containers",
    "ps": "List containers",
}


def configure_run(p: argparse.ArgumentParser) -> None:
    p.usage = "ketch run [OPTIONS] IMAGE [COMMAND] [ARG...]"
    p.add_argument("--rm", action="store_true", help="automatically remove the container when it exits")
    p.add_argument("--name", help="assign a name to the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set environment variables")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="read in a file of environment variables")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("-h", "--hostname", help="container host name")
    p.add_argument("--entrypoint", help="overwrite the default ENTRYPOINT of the image")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]",
                   help="bind mount a volume")
    p.add_argument("--mount", action="append", default=[], metavar="type=bind|tmpfs,...",
                   help="attach a filesystem mount to the container")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]", help="mount a tmpfs directory")
    p.add_argument("--read-only", action="store_true", help="mount the container's root filesystem as read only")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")


def run_run(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine.containers import Engine
    from ketch.engine.options import parse_run_options

    opts = parse_run_options(
        name=args.name, env=args.env, env_files=args.env_file, workdir=args.workdir, user=args.user,
        hostname=args.hostname, entrypoint=args.entrypoint, volumes=args.volume, mounts=args.mount,
        tmpfs=args.tmpfs, read_only=args.read_only, interactive=args.interactive, tty=args.tty,
        rm=args.rm, command=args.command, cwd=os.getcwd())
    return Engine(paths).run(args.image, opts)


def configure_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="force the removal of a running container")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_rm(args: argparse.Namespace, paths: Paths) -> int:
    import sys

    from ketch.engine.containers import Engine
    from ketch.errors import KetchError

    engine = Engine(paths)
    status = 0
    for ref in args.containers:
        try:
            print(engine.remove(ref, force=args.force))
        except KetchError as e:
            print(f"Error response from daemon: {e}", file=sys.stderr)
            status = 1
    return status


def configure_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show all containers (default shows just running)")
    p.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")


def run_ps(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine.containers import ContainerStore

    recs = [r for r in ContainerStore(paths).list() if args.all or r.Status == "running"]
    if args.quiet:
        for r in recs:
            print(r.Id if args.no_trunc else r.Id[:12])
        return 0
    rows = [("CONTAINER ID", "IMAGE", "STATUS", "NAMES")]
    for r in recs:
        status = f"Exited ({r.ExitCode})" if r.Status == "exited" else r.Status.capitalize()
        rows.append((r.Id if args.no_trunc else r.Id[:12], r.ImageName, status, r.Name))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "   " + row[3])
    return 0
