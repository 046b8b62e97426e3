"""Entry point of the ``ketch`` command.

Only the chosen command's module is imported (start-up is most of a short
container's life): ``main`` finds the command word, imports its module from
:data:`COMMANDS`, lets it add its flags, then calls its ``run(args, paths)``.
A command module provides::

    HELP: str                                   # one line for `ketch --help`
    def configure(p: argparse.ArgumentParser)   # add flags and positionals
    def run(args: argparse.Namespace, paths: Paths) -> int   # exit status

Errors: a :class:`~ketch.errors.KetchError` becomes ``ketch: <message>`` on
stderr and its ``exit_code`` (125 for ketch's own errors, as Docker's CLI).

Run as the ``ketch`` program (``main()`` without ``argv``), the process ends
with ``os._exit`` once stdout and stderr are flushed: tearing down the
interpreter's modules costs more than a short container's whole setup, and
every command has finished its work (threads joined, files closed) when it
returns.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ketch.errors import KetchError
from ketch.paths import Paths

# command word -> module under ketch.cli (several words may share a module).
COMMANDS: dict[str, str] = {
    "run": "run",
    "rm": "containers",
    "ps": "containers",
    "logs": "containers",
    "stop": "containers",
    "kill": "containers",
    "start": "containers",
    "restart": "containers",
    "wait": "containers",
    "top": "containers",
    "exec": "containers",
    "container": "containers",
    "pull": "images",
    "images": "images",
    "image": "images",
    "tag": "images",
    "rmi": "images",
    "load": "images",
    "save": "images",
    "import": "images",
    "inspect": "containers",
    "login": "registry",
    "logout": "registry",
    "push": "registry",
    "compat": "compat",
    "network": "network",
    "port": "network",
}


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized like it without importing :mod:`shutil`
    (argparse builds one per ``add_argument``, and its default width comes
    from ``shutil.get_terminal_size``)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None):
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: ``$COLUMNS``, else stdout's terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    """argparse with Docker-like one-line errors and exit status 125."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kw)

    def error(self, message: str):  # noqa: D401 - argparse API
        raise KetchError(f"{self.prog}: {message}\nSee '{self.prog} --help'.")


def _global_parser() -> _Parser:
    p = _Parser(prog="ketch", add_help=False,
                description="Run distro userlands from OCI images as isolated host processes.")
    p.add_argument("--root", help="persistent data directory (default /var/lib/ketch or $KETCH_ROOT)")
    p.add_argument("--runroot", help="runtime state directory (default /run/ketch or $KETCH_RUNROOT)")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    p.add_argument("-h", "--help", action="store_true")
    p.add_argument("-v", "--version", action="store_true")
    return p


def _usage() -> str:
    lines = ["Usage: ketch [--root DIR] [--runroot DIR] COMMAND [ARGS...]", "", "Commands:"]
    for word in COMMANDS:
        mod = importlib.import_module(f"ketch.cli.{COMMANDS[word]}")
        helps = getattr(mod, "HELPS", {})
        lines.append(f"  {word:<10} {helps.get(word, getattr(mod, 'HELP', ''))}")
    lines.append("\nRun 'ketch COMMAND --help' for more information on a command.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return its exit status."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        code = _main(argv)
    except KetchError as e:
        if debug:
            import traceback
            traceback.print_exc()
        print(f"ketch: {e}", file=sys.stderr)
        code = e.exit_code
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader went away (`ketch images | head`): end quietly, as a
        # process killed by SIGPIPE would, without a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + 13
    if program and not debug:
        _exit_now(code)
    return code


def _exit_now(code: int) -> None:
    """Flush stdout and stderr, then end the process without the interpreter's teardown."""
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):  # closed, or a reader that went away (`ketch images | head`)
            pass
    os._exit(code)


def _main(argv: list[str]) -> int:
    gp = _global_parser()
    head, rest = _split_globals(argv)
    gargs = gp.parse_args(head)
    if gargs.version:
        from ketch import __version__
        print(f"ketch version {__version__}")
        return 0
    if not rest:
        print(_usage(), file=sys.stdout if gargs.help else sys.stderr)
        return 0 if gargs.help else 125
    word = rest[0]
    if word not in COMMANDS:
        raise KetchError(f"'{word}' is not a ketch command.\nSee 'ketch --help'")
    mod = importlib.import_module(f"ketch.cli.{COMMANDS[word]}")
    helps = getattr(mod, "HELPS", {})
    # No -h: `ketch run -h NAME` is --hostname, as in Docker.
    p = _Parser(prog=f"ketch {word}", description=helps.get(word, getattr(mod, "HELP", "")), add_help=False)
    p.add_argument("--help", action="help", help="show this help message and exit")
    configure = getattr(mod, "configure_" + word, None) or mod.configure
    configure(p)
    args = p.parse_args(rest[1:])
    args.ketch_command = word
    paths = Paths.from_env(gargs.root, gargs.runroot)
    runner = getattr(mod, "run_" + word, None) or mod.run
    return runner(args, paths)


def _split_globals(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` into the global flags before the command word and the rest,
    so ``ketch run img --help`` goes to the container, ``ketch --root X run`` to ketch."""
    out: list[str] = []
    i = 0
    takes_value = {"--root", "--runroot"}
    while i < len(argv):
        a = argv[i]
        if a in takes_value and i + 1 < len(argv):
            out += [a, argv[i + 1]]
            i += 2
            continue
        if a.split("=", 1)[0] in takes_value or a in ("--debug", "-h", "--help", "-v", "--version"):
            out.append(a)
            i += 1
            continue
        break
    return out, argv[i:]


if __name__ == "__main__":
    sys.exit(main())
