"""``ketch run``: a thin command over :class:`ketch.engine.containers.Engine`
(``rm``, ``ps`` and the other container commands are in :mod:`ketch.cli.containers`)."""

from __future__ import annotations

import argparse
import os

from ketch.paths import Paths

HELPS = {
    "run": "Create and run a new container from an image",
}


def configure_run(p: argparse.ArgumentParser) -> None:
    p.usage = "ketch run [OPTIONS] IMAGE [COMMAND] [ARG...]"
    p.add_argument("--rm", action="store_true", help="automatically remove the container when it exits")
    p.add_argument("-d", "--detach", action="store_true", help="run the container in the background and print its ID")
    p.add_argument("--restart", default="no", metavar="POLICY",
                   help="restart policy: no, on-failure[:max-retries], always, unless-stopped")
    p.add_argument("--init", action="store_true", help="run an init (tini) as PID 1 that forwards signals and reaps")
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
    p.add_argument("--network", "--net", default="bridge", metavar="NETWORK",
                   help="connect the container to a network: bridge (default), none, host or a network's name")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:][HOSTPORT:]CTRPORT[/PROTO]",
                   help="publish a container's port(s) to the host")
    p.add_argument("-P", "--publish-all", action="store_true",
                   help="publish all exposed ports to free host ports")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")


def run_run(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine.containers import Engine
    from ketch.engine.options import parse_run_options

    opts = parse_run_options(
        name=args.name, env=args.env, env_files=args.env_file, workdir=args.workdir, user=args.user,
        hostname=args.hostname, entrypoint=args.entrypoint, volumes=args.volume, mounts=args.mount,
        tmpfs=args.tmpfs, read_only=args.read_only, interactive=args.interactive, tty=args.tty,
        rm=args.rm, command=args.command, cwd=os.getcwd(),
        detach=args.detach, restart=args.restart, init=args.init,
        network=args.network, publish=args.publish, publish_all=args.publish_all)
    engine = Engine(paths)
    code = engine.run(args.image, opts)
    if opts.detach:
        print(engine.created_id)
    return code

