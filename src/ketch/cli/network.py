"""``ketch network create|ls|inspect|rm|prune`` and ``ketch port``: thin
commands over :mod:`ketch.network.manager`."""

from __future__ import annotations

import argparse
import json
import sys

from ketch.paths import Paths

HELPS = {
    "network": "Manage networks (create, ls, inspect, rm, prune)",
    "port": "List port mappings of a container",
}


def configure_network(p: argparse.ArgumentParser) -> None:
    p.usage = "ketch network COMMAND"
    sub = p.add_subparsers(dest="subcommand", metavar="COMMAND")
    sub.required = True
    c = sub.add_parser("create", help="create a network", add_help=False)
    c.add_argument("--subnet", help="subnet in CIDR form (default: a free /24 of 10.77.0.0/16)")
    c.add_argument("--gateway", help="the gateway's address in the subnet (default: its first)")
    c.add_argument("--internal", action="store_true", help="no route out of the network, no published ports")
    c.add_argument("-d", "--driver", default="bridge", help="driver (bridge only)")
    c.add_argument("name", metavar="NETWORK")
    ls = sub.add_parser("ls", aliases=["list"], help="list networks", add_help=False)
    ls.add_argument("-q", "--quiet", action="store_true", help="only display network IDs")
    i = sub.add_parser("inspect", help="display detailed information on networks", add_help=False)
    i.add_argument("names", nargs="+", metavar="NETWORK")
    r = sub.add_parser("rm", aliases=["remove"], help="remove networks", add_help=False)
    r.add_argument("names", nargs="+", metavar="NETWORK")
    sub.add_parser("prune", help="remove all unused networks", add_help=False).add_argument(
        "-f", "--force", action="store_true", help="do not prompt (ketch never prompts)")


def run_network(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.errors import KetchError, UsageError
    from ketch.network.manager import Networks

    nets = Networks(paths)
    cmd = args.subcommand
    if cmd == "create":
        if args.driver != "bridge":
            raise UsageError(f"network driver {args.driver!r} is not supported (bridge only)")
        print(nets.create(args.name, args.subnet, args.gateway, args.internal).id)
        return 0
    if cmd in ("ls", "list"):
        rows = [("NETWORK ID", "NAME", "DRIVER", "SCOPE")]
        rows += [(n.id[:12], n.name, "bridge", "local") for n in nets.list()]
        if args.quiet:
            for r in rows[1:]:
                print(r[0])
            return 0
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            print("   ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "   " + r[3])
        return 0
    if cmd == "inspect":
        out, status = [], 0
        for name in args.names:
            try:
                out.append(nets.inspect(name))
            except KetchError as e:
                print(f"Error response from daemon: {e}", file=sys.stderr)
                status = 1
        print(json.dumps(out, indent=4))
        return status
    if cmd in ("rm", "remove"):
        status = 0
        for name in args.names:
            try:
                nets.remove(name)
                print(name)
            except KetchError as e:
                print(f"Error response from daemon: {e}", file=sys.stderr)
                status = 1
        return status
    if cmd == "prune":
        removed = nets.prune()
        if removed:
            print("Deleted Networks:")
            for n in removed:
                print(n)
        return 0
    raise UsageError(f"unknown network command {cmd!r}")


def configure_port(p: argparse.ArgumentParser) -> None:
    p.usage = "ketch port CONTAINER [PRIVATE_PORT[/PROTO]]"
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("private", nargs="?", metavar="PRIVATE_PORT[/PROTO]")


def run_port(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.errors import ContainerNotFound, KetchError
    from ketch.network.manager import read_state
    from ketch.network.ports import PortMapping

    ref = args.container.lstrip("/")
    dirs = [d for d in paths.containers.iterdir()] if paths.containers.is_dir() else []
    hits = [d for d in dirs if d.name == ref or (read_state(d) or {}).get("name") == ref]
    hits = hits or [d for d in dirs if d.name.startswith(ref)]
    if len(hits) != 1:
        raise ContainerNotFound(f"No such container: {args.container}")
    st = read_state(hits[0]) or {}
    maps = [PortMapping.from_cni(d) for d in st.get("portMappings", ())]
    if args.private:
        port, _, proto = args.private.partition("/")
        maps = [m for m in maps if str(m.container_port) == port and m.protocol == (proto or "tcp")]
        if not maps:
            raise KetchError(f"No public port '{args.private}' published for {args.container}")
        for m in maps:
            print(f"{m.host_ip or '0.0.0.0'}:{m.host_port}")
        return 0
    for m in maps:
        print(m)
    return 0
