"""Container commands: ``ps``, ``logs``, ``stop``, ``kill``, ``start``, ``restart``,
``wait``, ``inspect``, ``top``, ``exec``, ``container …`` — thin commands over
:mod:`ketch.engine.lifecycle` with Docker's flags, output and exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ketch.cli.images import human_duration
from ketch.paths import Paths

HELPS = {
    "ps": "List containers",
    "logs": "Fetch the logs of a container",
    "stop": "Stop one or more running containers",
    "kill": "Kill one or more running containers",
    "start": "Start one or more stopped containers",
    "restart": "Restart one or more containers",
    "wait": "Block until one or more containers stop, then print their exit codes",
    "inspect": "Return low-level information on containers or images",
    "top": "Display the running processes of a container",
    "exec": "Execute a command in a running container",
    "container": "Manage containers (ls, prune, inspect, logs, start, stop, kill, rm, ...)",
}


def _engine(paths: Paths):
    from ketch.engine.containers import Engine
    return Engine(paths)


def _err(e: Exception) -> None:
    print(f"Error response from daemon: {e}", file=sys.stderr)


def _each(refs: list[str], fn) -> int:
    """Docker's multi-container commands: print each ref done, errors on stderr, status 1 if any failed."""
    from ketch.errors import KetchError
    status = 0
    for ref in refs:
        try:
            fn(ref)
            print(ref)
        except KetchError as e:
            _err(e)
            status = 1
    return status


# ---------------------------------------------------------------- ps

def configure_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show all containers (default shows just running)")
    p.add_argument("-q", "--quiet", action="store_true", help="only display container IDs")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="filter output: status=, name=, id=, ancestor=")
    p.add_argument("--format", help="Go template: {{.ID}} {{.Image}} {{.Command}} {{.CreatedAt}} "
                                    "{{.RunningFor}} {{.Status}} {{.State}} {{.Names}}, 'table …', 'json'")
    p.add_argument("-n", "--last", type=int, default=-1, help="show n last created containers")
    p.add_argument("-l", "--latest", action="store_true", help="show the latest created container")


def _ago(iso: str, now: float) -> str:
    """Docker's units.HumanDuration of now - ``iso``."""
    from ketch.engine.logs import parse_time_ns
    try:
        secs = now - parse_time_ns(iso) / 1e9
    except ValueError:
        return ""
    return human_duration(secs)


def _status_text(rec, state: str, code: int, now: float) -> str:
    if state == "running":
        return f"Up {_ago(rec.StartedAt, now)}"
    if state == "restarting":
        return f"Restarting ({code}) {_ago(rec.FinishedAt, now)} ago"
    if state == "exited":
        return f"Exited ({code}) {_ago(rec.FinishedAt, now)} ago" if rec.FinishedAt else f"Exited ({code})"
    if state == "removing":
        return "Removal In Progress"
    return "Created"


def _command(rec, no_trunc: bool) -> str:
    args = (rec.Config.get("Entrypoint") or []) + (rec.Config.get("Cmd") or [])
    cmd = " ".join(args)
    if not no_trunc and len(cmd) > 20:
        cmd = cmd[:19] + "…"
    return json.dumps(cmd, ensure_ascii=False)


def ps_rows(recs, args, now: float) -> list[dict]:
    """One dict per container with Docker's ps template fields."""
    rows = []
    for r in recs:
        state, code = r.state()
        created = r.Created[:19].replace("T", " ")
        rows.append({
            "ID": r.Id if args.no_trunc else r.Id[:12], "Image": r.ImageName,
            "Command": _command(r, args.no_trunc), "CreatedAt": f"{created} +0000 UTC",
            "RunningFor": f"{_ago(r.Created, now)} ago", "Ports": "", "State": state,
            "Status": _status_text(r, state, code, now), "Names": r.Name, "Labels": ",".join(
                f"{k}={v}" for k, v in (r.Config.get("Labels") or {}).items()),
            "Mounts": ",".join(m.get("Source") or m.get("Destination", "") for m in r.Mounts),
            "Networks": "", "Size": "", "LocalVolumes": "0",
        })
    return rows


def _filters(values: list[str]) -> dict[str, list[str]]:
    from ketch.errors import UsageError
    out: dict[str, list[str]] = {}
    for v in values:
        key, eq, val = v.partition("=")
        if not eq:
            raise UsageError(f'bad format of filter (expected name=value): {v}')
        if key not in ("status", "name", "id", "ancestor", "exited"):
            raise UsageError(f"invalid filter '{key}'")
        if key == "status" and val not in ("created", "restarting", "running", "removing", "paused",
                                           "exited", "dead"):
            raise UsageError(f"invalid filter 'status={val}'")
        out.setdefault(key, []).append(val)
    return out


def _match(rec, flt: dict[str, list[str]]) -> bool:
    import re
    state, code = rec.state()
    for key, vals in flt.items():
        if key == "status" and state not in vals:
            return False
        if key == "name" and not any(re.search(v, rec.Name) for v in vals):
            return False
        if key == "id" and not any(rec.Id.startswith(v) for v in vals):
            return False
        if key == "ancestor" and not any(v in (rec.ImageName, rec.Image, rec.Image[7:])
                                         or rec.Image[7:].startswith(v) for v in vals):
            return False
        if key == "exited" and not (state == "exited" and str(code) in vals):
            return False
    return True


def render_template(fmt: str, row: dict) -> str:
    """Docker's ps --format: ``{{.Field}}``, ``{{json .}}``; ``\\t``/``\\n`` escapes."""
    import re

    def sub(m: re.Match) -> str:
        expr = m.group(1).strip()
        if expr == "json .":
            return json.dumps(row)
        if expr.startswith("json ."):
            return json.dumps(row.get(expr[6:], ""))
        if expr.startswith("."):
            return str(row.get(expr[1:], ""))
        return ""
    return re.sub(r"\{\{(.*?)\}\}", sub, fmt.replace("\\t", "\t").replace("\\n", "\n"))


def run_ps(args: argparse.Namespace, paths: Paths) -> int:
    import time

    from ketch.engine.store import ContainerStore

    flt = _filters(args.filter)
    show_all = args.all or "status" in flt or "exited" in flt or args.last > 0 or args.latest
    recs = []
    if (paths.root / "ketch.db").exists():
        recs = [r for r in ContainerStore(paths).list()
                if (show_all or r.state()[0] in ("running", "restarting")) and _match(r, flt)]
    if args.latest:
        recs = recs[:1]
    elif args.last > 0:
        recs = recs[:args.last]
    now = time.time()
    if args.quiet:
        for r in recs:
            print(r.Id if args.no_trunc else r.Id[:12])
        return 0
    rows = ps_rows(recs, args, now)
    fmt = args.format
    if fmt == "json":
        for row in rows:
            print(json.dumps(row))
        return 0
    if fmt and not fmt.startswith("table"):
        for row in rows:
            print(render_template(fmt, row))
        return 0
    if fmt:
        body = fmt[5:].strip()
        titles = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND", "CreatedAt": "CREATED AT",
                  "RunningFor": "CREATED", "Ports": "PORTS", "State": "STATE", "Status": "STATUS",
                  "Names": "NAMES", "Labels": "LABELS", "Mounts": "MOUNTS", "Networks": "NETWORKS",
                  "Size": "SIZE"}
        table = [render_template(body, titles).split("\t")] + [render_template(body, r).split("\t") for r in rows]
    else:
        cols = ("ID", "Image", "Command", "RunningFor", "Status", "Ports", "Names")
        table = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]]
        table += [[r[c] for c in cols] for r in rows]
    widths = [max(len(row[i]) if i < len(row) else 0 for row in table) for i in range(len(table[0]))]
    for row in table:
        print("   ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + ("   " if len(row) > 1 else "") + row[-1])
    return 0


# ---------------------------------------------------------------- logs

def configure_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="follow log output")
    p.add_argument("-n", "--tail", default="all", help='number of lines to show from the end (default "all")')
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("--since", help="show logs since a timestamp or relative time (e.g. 42m)")
    p.add_argument("--until", help="show logs before a timestamp or relative time")
    p.add_argument("--details", action="store_true", help="accepted; no extra attributes are logged")
    p.add_argument("container", metavar="CONTAINER")


def run_logs(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import logs
    from ketch.engine.store import ContainerStore
    from ketch.errors import UsageError

    store = ContainerStore(paths)
    rec = store.find(args.container)
    tail = None
    if args.tail != "all":
        try:
            tail = int(args.tail)
        except ValueError:
            raise UsageError(f'invalid value for "tail": "{args.tail}"') from None
        if tail < 0:
            tail = None
    since = logs.parse_since(args.since) if args.since else None
    until = logs.parse_since(args.until) if args.until else None
    follow = None
    if args.follow:
        def follow() -> bool:
            try:
                return store.load(rec.Id).state()[0] in ("running", "restarting")
            except Exception:  # noqa: BLE001 - removed meanwhile
                return False
    out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    sys.stdout.flush()
    for e in logs.read(store.log_path(rec.Id), follow=follow, since_ns=since, until_ns=until, tail=tail):
        f = out.get(e.stream, sys.stdout.buffer)
        if args.timestamps and e.line_start:
            f.write(e.time.encode() + b" ")
        f.write(e.data)
        if follow is not None:
            f.flush()
    return 0


# ---------------------------------------------------------------- stop, kill, start, restart, wait, rm

def configure_stop(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", dest="time", type=int, default=None,
                   help="seconds to wait before killing the container (default 10)")
    p.add_argument("-s", "--signal", help="signal to send to the container")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_stop(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import lifecycle
    engine = _engine(paths)
    sig = lifecycle.parse_signal(args.signal) if args.signal else None
    return _each(args.containers, lambda ref: lifecycle.stop(engine, ref, args.time, sig))


def configure_kill(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="KILL", help='signal to send to the container (default "KILL")')
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_kill(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import lifecycle
    engine = _engine(paths)
    sig = lifecycle.parse_signal(args.signal)
    return _each(args.containers, lambda ref: lifecycle.kill(engine, ref, sig))


def configure_start(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--attach", action="store_true", help="attach STDOUT/STDERR and forward signals")
    p.add_argument("-i", "--interactive", action="store_true", help="accepted; stdin is not attached")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_start(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import lifecycle
    from ketch.errors import UsageError
    engine = _engine(paths)
    if not args.attach:
        return _each(args.containers, lambda ref: lifecycle.start(engine, ref))
    if len(args.containers) != 1:
        raise UsageError("you cannot start and attach multiple containers at once")
    return _attach(engine, paths, args.containers[0], start=True)


def _attach(engine, paths: Paths, ref: str, start: bool) -> int:
    """Start (when asked) and stream the container's output until it ends;
    its exit code.  SIGINT/SIGTERM are forwarded, as Docker's sig-proxy."""
    import signal

    from ketch.engine import lifecycle, logs

    rec = engine.containers.find(ref)
    path = engine.containers.log_path(rec.Id)
    offset = os.path.getsize(path) if os.path.exists(path) else 0
    if start:
        rec = lifecycle.start(engine, rec.Id)

    def forward(sig, _frame):
        try:
            lifecycle.kill(engine, rec.Id, sig)
        except Exception:  # noqa: BLE001
            pass
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)

    def follow() -> bool:
        try:
            return engine.containers.load(rec.Id).state()[0] == "running"
        except Exception:  # noqa: BLE001
            return False
    out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for e in logs.read(path, follow=follow, skip_bytes=offset):
        f = out.get(e.stream, sys.stdout.buffer)
        f.write(e.data)
        f.flush()
    return lifecycle.wait(engine, rec.Id)


def configure_restart(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", "--timeout", dest="time", type=int, default=None,
                   help="seconds to wait before killing the container (default 10)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_restart(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import lifecycle
    engine = _engine(paths)
    return _each(args.containers, lambda ref: lifecycle.restart(engine, ref, args.time))


def configure_wait(p: argparse.ArgumentParser) -> None:
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_wait(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import lifecycle
    from ketch.errors import KetchError
    engine = _engine(paths)
    status = 0
    for ref in args.containers:
        try:
            print(lifecycle.wait(engine, ref), flush=True)
        except KetchError as e:
            _err(e)
            status = 1
    return status


def configure_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="force the removal of a running container")
    p.add_argument("-v", "--volumes", action="store_true", help="remove anonymous volumes (none yet)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")


def run_rm(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import lifecycle
    engine = _engine(paths)
    return _each(args.containers, lambda ref: lifecycle.remove(engine, ref, args.force))


def configure_prune(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")


def run_prune(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import lifecycle
    if not args.force and sys.stdin.isatty():
        print("WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N] ",
              end="", flush=True)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    ids = lifecycle.prune(_engine(paths))
    if ids:
        print("Deleted Containers:")
        for i in ids:
            print(i)
        print()
    print("Total reclaimed space: 0B")
    return 0


# ---------------------------------------------------------------- inspect, top

def configure_inspect(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", help="format the output using a Go-template subset: "
                                          "{{.Field.Sub}}, {{json .Field}}")
    p.add_argument("--type", choices=["container", "image"], default=None, help="only this type of object")
    p.add_argument("-s", "--size", action="store_true", help="accepted; sizes are not computed")
    p.add_argument("names", nargs="+", metavar="NAME|ID")


def run_inspect(args: argparse.Namespace, paths: Paths) -> int:
    """Containers first, then images (Docker's order for a bare ``inspect``)."""
    from ketch.cli import images as image_cli
    from ketch.errors import KetchError

    docs, status = [], 0
    engine = None
    for ref in args.names:
        doc = None
        if args.type in (None, "container") and (paths.root / "ketch.db").exists():
            from ketch.engine import lifecycle
            engine = engine or _engine(paths)
            try:
                doc = lifecycle.inspect(engine, engine.containers.find(ref))
            except KetchError:
                doc = None
        if doc is None and args.type in (None, "image"):
            store = image_cli._store(paths)
            try:
                img = store.resolve(ref)
                doc = image_cli.inspect_json(img, store.content.size(img.manifest_digest))
            except KetchError:
                doc = None
        if doc is None:
            print(f"Error: No such object: {ref}", file=sys.stderr)
            status = 1
            continue
        docs.append(doc)
    if args.format:
        for d in docs:
            print(image_cli.render_format(args.format, d))
    else:
        print(json.dumps(docs, indent=4))
    return status


def configure_top(p: argparse.ArgumentParser) -> None:
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("ps_args", nargs=argparse.REMAINDER, metavar="[ps OPTIONS]")


def run_top(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine import lifecycle
    titles, rows = lifecycle.top(_engine(paths), args.container, args.ps_args)
    table = [titles] + rows
    widths = [max(len(r[i]) if i < len(r) else 0 for r in table) for i in range(len(titles))]
    for r in table:
        print("   ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "   " + (r[-1] if len(r) == len(titles) else ""))
    return 0


# ---------------------------------------------------------------- container …

_SUBCOMMANDS = {"ls": "ps", "list": "ps", "ps": "ps", "prune": "prune", "inspect": "inspect",
                "logs": "logs", "start": "start", "stop": "stop", "kill": "kill", "restart": "restart",
                "wait": "wait", "rm": "rm", "remove": "rm", "top": "top", "exec": "exec",
                "run": "run"}


def configure_container(p: argparse.ArgumentParser) -> None:
    p.add_argument("subcommand", choices=sorted(_SUBCOMMANDS), metavar="COMMAND")
    p.add_argument("args", nargs=argparse.REMAINDER)


def run_container(args: argparse.Namespace, paths: Paths) -> int:
    import importlib

    from ketch.cli.main import _Parser
    word = _SUBCOMMANDS[args.subcommand]
    mod = importlib.import_module("ketch.cli.run") if word == "run" else sys.modules[__name__]
    p = _Parser(prog=f"ketch container {args.subcommand}", add_help=False)
    p.add_argument("--help", action="help", help="show this help message and exit")
    getattr(mod, "configure_" + word)(p)
    sub = p.parse_args(args.args)
    return getattr(mod, "run_" + word)(sub, paths)


# ---------------------------------------------------------------- exec

def configure_exec(p: argparse.ArgumentParser) -> None:
    p.usage = "ketch exec [OPTIONS] CONTAINER COMMAND [ARG...]"
    p.add_argument("-d", "--detach", action="store_true", help="run the command in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("-u", "--user", help="username or UID (format: <name|uid>[:<group|gid>])")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="set environment variables")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="read in a file of environment variables")
    p.add_argument("--privileged", action="store_true", help="accepted; the command gets the container's privileges")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND")


def run_exec(args: argparse.Namespace, paths: Paths) -> int:
    from ketch.engine.execute import exec_in_container
    from ketch.errors import UsageError
    if not args.command:
        raise UsageError('"ketch exec" requires at least 2 arguments.')
    return exec_in_container(paths, args.container, args.command, detach=args.detach,
                             interactive=args.interactive, tty=args.tty, user=args.user,
                             workdir=args.workdir, env=args.env, env_files=args.env_file)
