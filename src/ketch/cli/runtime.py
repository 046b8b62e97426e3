"""``ketch-runtime``: runc's command line over :class:`ketch.runtime.container.Runtime`.

containerd's runc shim and podman's conmon call the runtime binary once per
operation (create, start, state, kill, delete …), so start-up is most of its
cost: this module imports only the standard library at module level, parses
the command line with a small table-driven parser (Go ``flag`` rules: ``-x``
or ``--x``, ``--x=v`` or ``--x v``, booleans as ``--x`` or ``--x=true``) and
imports the runtime library inside the command that needs it.

Global flags (before the command): ``--root`` (state directory, default
``/run/ketch-runtime``), ``--log FILE``, ``--log-format text|json``,
``--debug``, ``--systemd-cgroup`` (refused: not supported).

Errors: one line on stderr, and — with ``--log`` — a record in the log file
(``{"level":"error","msg":…,"time":…}`` with ``--log-format json``, which is
where containerd's shim and podman look for the reason of a failure); exit
status 1.  ``run`` in the foreground exits with the container's status
(128+N when its process was killed by signal N).
"""

from __future__ import annotations

import os
import sys

DEFAULT_ROOT = "/run/ketch-runtime"
_PROXIED = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGCONT", "SIGALRM")


class Failure(Exception):
    """A command-line error of ketch-runtime itself (usage, unsupported flag)."""


# --------------------------------------------------------------------------- logging
class Log:
    """runc's logging: records to ``--log`` (text or JSON, one per line) or,
    without a file, to stderr; below ``error`` only with ``--debug``."""

    def __init__(self, path: str | None = None, fmt: str = "text", debug: bool = False):
        self.path, self.fmt, self.debug_on = path, fmt, debug

    def _write(self, level: str, msg: str) -> None:
        import time
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
        if self.fmt == "json":
            import json
            line = json.dumps({"level": level, "msg": msg, "time": stamp})
        else:
            line = f'time="{stamp}" level={level} msg="{_quote(msg)}"'
        if self.path:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        else:
            sys.stderr.write(line + "\n")

    def debug(self, msg: str) -> None:
        if self.debug_on:
            self._write("debug", msg)

    def warning(self, msg: str) -> None:
        if self.debug_on:
            self._write("warning", msg)

    def error(self, msg: str) -> None:
        """The error record, in the log file when there is one; the caller
        prints the plain message on stderr."""
        if self.path:
            try:
                self._write("error", msg)
            except OSError:
                pass


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# --------------------------------------------------------------------------- parsing
# flag name (without dashes; short aliases too) -> (destination, kind: "bool" | "str" | "int" | "list")
# ("list": repeatable, the values in order)
Flags = dict[str, tuple[str, str]]

GLOBAL_FLAGS: Flags = {
    "root": ("root", "str"), "log": ("log", "str"), "log-format": ("log_format", "str"),
    "debug": ("debug", "bool"), "systemd-cgroup": ("systemd_cgroup", "bool"),
    "rootless": ("rootless", "str"), "criu": ("criu", "str"),
    "help": ("help", "bool"), "h": ("help", "bool"), "version": ("version", "bool"), "v": ("version", "bool"),
}


class Args(dict):
    """Parsed flags (attribute access, None when absent) and ``positional``."""

    def __getattr__(self, name: str):
        return self.get(name)


def parse(argv: list[str], flags: Flags, stop_at_positional: bool = False,
          stop_after: int | None = None) -> Args:
    """Parse ``argv`` against ``flags``.  Flags may be interspersed with
    positionals unless ``stop_at_positional`` (global flags: the command word
    ends them); ``stop_after`` N: everything after the Nth positional is
    positional (``ps ID [ps options]``).  Raises Failure on unknown flags."""
    out = Args(positional=[])
    i = 0
    while i < len(argv):
        tok = argv[i]
        i += 1
        if stop_after is not None and len(out["positional"]) >= stop_after:
            out["positional"].append(tok)
            continue
        if tok == "--":
            out["positional"].extend(argv[i:])
            break
        if not tok.startswith("-") or tok == "-":
            out["positional"].append(tok)
            if stop_at_positional:
                out["positional"].extend(argv[i:])
                break
            continue
        name, eq, value = tok.lstrip("-").partition("=")
        if name not in flags:
            raise Failure(f"flag provided but not defined: -{name}")
        dest, kind = flags[name]
        if kind == "bool":
            if eq and value.lower() not in ("true", "false", "1", "0"):
                raise Failure(f"invalid boolean value {value!r} for -{name}")
            out[dest] = not eq or value.lower() in ("true", "1")
            continue
        if not eq:
            if i >= len(argv):
                raise Failure(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        if kind == "int":
            try:
                out[dest] = int(value)
            except ValueError:
                raise Failure(f"invalid value {value!r} for flag -{name}: parse error") from None
        elif kind == "list":
            out.setdefault(dest, []).append(value)
        else:
            out[dest] = value
    return out


# --------------------------------------------------------------------------- helpers
def _runtime(g: Args):
    from ketch.runtime.container import Runtime
    return Runtime(g.root or DEFAULT_ROOT)


def _one_id(a: Args, cmd: str, extra: int = 0) -> str:
    pos = a.positional
    if not pos or len(pos) > 1 + extra:
        raise Failure(f'"{cmd}" requires {"exactly" if not extra else "at least"} 1 argument(s)'
                      if not pos else f'"{cmd}" accepts at most {1 + extra} argument(s)')
    return pos[0]


def parse_signal(s: str) -> int:
    """``KILL``, ``SIGKILL``, ``kill``, ``9``, ``RTMIN+3`` → the signal number (runc's rules)."""
    from ketch.linux.signals import parse_signal as parse
    try:
        return parse(s)
    except ValueError as e:
        raise Failure(str(e)) from None


def prepare_fds(preserve: int) -> list[int]:
    """Make fds 3..3+``preserve``-1 inheritable and every other fd above 2
    close-on-exec, so the container's program gets exactly stdio plus the
    preserved ones (runc's ``--preserve-fds``; ``LISTEN_FDS`` of socket
    activation are added to ``preserve`` as runc does).  Returns the kept fds."""
    listen = os.environ.get("LISTEN_FDS", "")
    if listen.isdigit() and os.environ.get("LISTEN_PID") == str(os.getpid()):
        preserve += int(listen)
    keep = list(range(3, 3 + preserve))
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < 3:
            continue
        try:
            os.set_inheritable(fd, fd in keep)
        except OSError:  # the listdir fd itself, already closed
            pass
    return keep


def container_pids(state) -> list[int]:
    """Host PIDs of the container's processes, PID 1 first.

    Without a cgroup to read, the container is its PID namespace: every
    process whose ``/proc/PID/ns/pid`` is PID 1's.  A container sharing the
    caller's PID namespace has PID 1 and its descendants instead.
    """
    from ketch.runtime.container import Status
    if state.status() in (Status.STOPPED, Status.CREATING):
        return []
    try:
        ns = os.stat(f"/proc/{state.pid}/ns/pid")
    except OSError:
        return []
    ns_key = (ns.st_dev, ns.st_ino)
    own = os.stat("/proc/self/ns/pid")
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    if ns_key != (own.st_dev, own.st_ino):
        out = []
        for p in pids:
            try:
                st = os.stat(f"/proc/{p}/ns/pid")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == ns_key:
                out.append(p)
    else:
        children: dict[int, list[int]] = {}
        for p in pids:
            try:
                with open(f"/proc/{p}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
            children.setdefault(ppid, []).append(p)
        out, todo = [], [state.pid]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, ()))
    out.sort(key=lambda p: (p != state.pid, p))
    return out


def _print_json(obj) -> None:
    import json
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def state_json(state) -> dict:
    """runc's ``state`` output: the runtime-spec state plus ``rootfs``, ``created`` and ``owner``."""
    out = state.to_json()
    out.setdefault("owner", "")
    return out


def _warn_ignored(log: Log, bundle: str) -> None:
    """With --debug: log the config.json fields this runtime parses but does not apply yet."""
    if not log.debug_on:
        return
    import json
    from ketch.oci.runtime import Spec
    try:
        spec = Spec.from_json(json.loads(open(os.path.join(bundle, "config.json")).read()))
    except Exception:  # noqa: BLE001 - create reports it properly
        return
    for where, extra in (("", spec.extra), ("process.", spec.process.extra), ("linux.", spec.linux.extra)):
        for key in extra:
            log.warning(f"config.json: {where}{key} is not applied by ketch-runtime yet")


# --------------------------------------------------------------------------- commands
def cmd_create(g: Args, a: Args, log: Log) -> int:
    cid = _one_id(a, "create")
    keep = prepare_fds(a.preserve_fds or 0)
    bundle = os.path.abspath(a.bundle or ".")
    log.debug(f"create {cid}: bundle {bundle}, preserved fds {keep}")
    if a.no_pivot:
        log.debug("--no-pivot: ignored, pivot_root is always used")
    _warn_ignored(log, bundle)
    console = _connect_console(a.console_socket) if a.console_socket else None
    try:
        _runtime(g).create(cid, bundle, console_socket=console, pid_file=a.pid_file, subreaper=False, preserve_fds=len(keep))
    finally:
        if console is not None:
            console.close()
    return 0


def _connect_console(path: str):
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except OSError as e:
        s.close()
        raise Failure(f"connecting to console socket {path}: {e.strerror}") from None
    return s


def cmd_start(g: Args, a: Args, log: Log) -> int:
    cid = _one_id(a, "start")
    rt = _runtime(g)
    rt.load(cid)  # ContainerNotFound before locking a directory that is not there
    with rt.locked(cid):
        rt.start(cid)
    return 0


def cmd_state(g: Args, a: Args, log: Log) -> int:
    cid = _one_id(a, "state")
    _print_json(state_json(_runtime(g).load(cid)))
    return 0


def cmd_kill(g: Args, a: Args, log: Log) -> int:
    cid = _one_id(a, "kill", extra=1)
    sig = parse_signal(a.positional[1] if len(a.positional) > 1 else "SIGTERM")
    rt = _runtime(g)
    rt.load(cid)
    with rt.locked(cid):
        state = rt.load(cid)
        if not state.status().can_kill():
            if a.all:  # runc: nothing left to signal is not an error with --all
                return 0
            raise Failure("container not running")
        if a.all and state.cgroup:  # every process of its cgroup, frozen meanwhile
            rt.kill(cid, sig, all=True)
            return 0
        targets = container_pids(state) if a.all else [state.pid]
        for pid in targets:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    return 0


def cmd_delete(g: Args, a: Args, log: Log) -> int:
    cid = _one_id(a, "delete")
    from ketch.errors import ContainerNotFound
    from ketch.runtime.container import Status
    rt = _runtime(g)
    try:
        rt.load(cid)
    except ContainerNotFound:
        if a.force:
            return 0
        raise
    with rt.locked(cid):
        st = rt.load(cid).status()
        # runc deletes a created (never started) container without --force:
        # containerd's shim relies on it when a task is removed before start.
        rt.delete(cid, force=bool(a.force) or st is Status.CREATED)
    return 0


def cmd_run(g: Args, a: Args, log: Log) -> int:
    cid = _one_id(a, "run")
    keep = prepare_fds(a.preserve_fds or 0)
    bundle = os.path.abspath(a.bundle or ".")
    log.debug(f"run {cid}: bundle {bundle}, detach {bool(a.detach)}, preserved fds {keep}")
    _warn_ignored(log, bundle)
    rt = _runtime(g)
    if a.detach:
        console = _connect_console(a.console_socket) if a.console_socket else None
        try:
            rt.create(cid, bundle, console_socket=console, pid_file=a.pid_file, subreaper=False, preserve_fds=len(keep))
        finally:
            if console is not None:
                console.close()
        try:
            with rt.locked(cid):
                rt.start(cid)
        except BaseException:
            rt.delete(cid, force=True)
            raise
        return 0
    return _run_foreground(rt, cid, bundle, a, len(keep))


def _run_foreground(rt, cid: str, bundle: str, a: Args, preserve_fds: int) -> int:
    """create + start, relay the terminal (if the process has one), forward
    signals, wait for PID 1 (we are its subreaper) and delete unless --keep."""
    import json
    import signal
    import socket
    from ketch.runtime.container import wait_exit_code

    with open(os.path.join(bundle, "config.json")) as f:
        terminal = bool(json.load(f).get("process", {}).get("terminal", False))
    ours = theirs = None
    if a.console_socket:
        theirs = _connect_console(a.console_socket)
    elif terminal:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        state = rt.create(cid, bundle, console_socket=theirs, pid_file=a.pid_file, subreaper=True, preserve_fds=preserve_fds)
    finally:
        if theirs is not None:
            theirs.close()
    try:
        master = None
        if ours is not None:
            from ketch.runtime.tty import recv_console
            master = recv_console(ours)
            ours.close()

        def forward(sig, _frame, pid=state.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

        for name in _PROXIED:
            if master is None or name not in ("SIGINT", "SIGQUIT"):  # a terminal delivers those itself
                signal.signal(getattr(signal, name), forward)
        with rt.locked(cid):
            rt.start(cid)
        if master is not None:
            from ketch.runtime.tty import relay, set_window_size, window_size
            size = window_size(0) or window_size(1)
            if size:
                set_window_size(master, size)
            relay(master, 0, 1)
            os.close(master)
        return wait_exit_code(state.pid)
    finally:
        if not a.keep:
            rt.delete(cid, force=True)


def exec_process_spec(a: Args, state):
    """The process ``exec`` starts: ``--process FILE`` as it is, or the
    container's own ``process`` (its bundle's config.json) with the command,
    ``--tty``, ``--cwd``, ``--env`` (appended), ``--user``, ``--additional-gids``,
    ``--cap`` and ``--no-new-privs`` as runc applies them."""
    import json
    from dataclasses import replace
    from ketch.oci.runtime import Process
    if a.process:
        try:
            with open(a.process) as f:
                d = json.load(f)
        except OSError as e:
            raise Failure(f"open {a.process}: {e.strerror}") from None
        except ValueError as e:
            raise Failure(f"parsing {a.process}: {e}") from None
        proc = Process.from_json(d)
        if a.tty:
            proc = replace(proc, terminal=True)
        return proc
    command = a.positional[1:]
    if not command:
        raise Failure("exec failed: args must not be empty")
    try:
        with open(os.path.join(state.bundle, "config.json")) as f:
            base = Process.from_json(json.load(f)["process"])
    except (OSError, ValueError, KeyError):
        base = Process.from_json({"args": command, "cwd": "/",
                                  "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]})
    proc = replace(base, args=tuple(command), terminal=bool(a.tty), consoleSize=None,
                   env=tuple(base.env) + tuple(a.env or ()))
    if a.cwd:
        proc = replace(proc, cwd=a.cwd)
    if a.user:
        uid_s, _, gid_s = a.user.partition(":")
        if uid_s.isdigit() and (not gid_s or gid_s.isdigit()):
            uid, gid = int(uid_s), int(gid_s) if gid_s else 0
        else:
            from ketch.engine.users import resolve_user_in_rootfs
            u = resolve_user_in_rootfs(f"/proc/{state.pid}/root", a.user)
            uid, gid = u.uid, u.gid
        proc = replace(proc, user=replace(proc.user, uid=uid, gid=gid))
    if a.additional_gids:
        gids = []
        for v in a.additional_gids:
            if not v.isdigit():
                raise Failure(f"invalid additional gid {v!r}")
            gids.append(int(v))
        proc = replace(proc, user=replace(proc.user, additionalGids=tuple(gids)))
    if a.cap and proc.capabilities is not None:
        caps = proc.capabilities
        add = tuple(a.cap)
        proc = replace(proc, capabilities=replace(caps, **{k: tuple(getattr(caps, k)) + add
                                                           for k in ("bounding", "effective", "permitted")}))
    if a.no_new_privs:
        proc = replace(proc, noNewPrivileges=True)
    return proc


def cmd_exec(g: Args, a: Args, log: Log) -> int:
    """runc's ``exec``: a process in the container's namespaces and cgroups;
    in the foreground the CLI exits with its status (128+N for signal N),
    with ``--detach`` at once (0), the process reparented to the nearest
    subreaper (conmon, containerd's shim)."""
    import json
    import signal
    import socket
    from ketch.errors import ExecError
    from ketch.runtime import exec as rexec
    from ketch.runtime.container import Status

    if not a.positional:
        raise Failure('"exec" requires at least 1 argument(s)')
    cid = a.positional[0]
    if a.process and len(a.positional) > 1:
        log.debug("exec: --process given, the command-line arguments are ignored")
    keep = prepare_fds(a.preserve_fds or 0)
    rt = _runtime(g)
    state = rt.load(cid)
    st = state.status()
    if st is Status.STOPPED:
        raise Failure("cannot exec in a stopped container")
    if st is Status.PAUSED:
        raise Failure("cannot exec in a paused container")
    if st is Status.CREATING:
        raise Failure(f"container {cid} is being created")
    proc = exec_process_spec(a, state)
    if proc.terminal and a.detach and not a.console_socket:
        raise Failure("cannot allocate tty if runc will detach without setting console socket")
    if not proc.terminal and a.console_socket:
        raise Failure("cannot use console socket if runc will not allocate tty")
    seccomp = None
    try:
        with open(os.path.join(state.bundle, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = {}
    if (cfg.get("linux") or {}).get("seccomp"):
        from ketch.oci.runtime import Spec
        seccomp = Spec.from_json(cfg).linux.seccomp
    log.debug(f"exec {cid}: {list(proc.args)}, detach {bool(a.detach)}, preserved fds {keep}")
    ours = theirs = None
    if a.console_socket and proc.terminal:
        theirs = _connect_console(a.console_socket)
    elif proc.terminal:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        from dataclasses import replace
        from ketch.runtime.tty import window_size
        size = window_size(0) or window_size(1)
        if size and proc.consoleSize is None:
            proc = replace(proc, consoleSize=size)
    pid_out: list[int] = []
    try:
        helper = rexec.exec_process(state.pid, proc, console_socket=theirs, detach=bool(a.detach),
                                    seccomp=seccomp, pid_out=pid_out)
    except ExecError as e:
        log.error(str(e))
        sys.stderr.write(f"{e}\n")
        return e.exit_code
    finally:
        if theirs is not None:
            theirs.close()
    pid = pid_out[0] if pid_out else helper
    if a.pid_file:
        _write_pid_file(a.pid_file, pid)
    if a.detach:
        rexec.wait(helper)  # A exits at once; the process is not our child
        return 0

    def forward(sig, _frame):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    master = None
    if ours is not None:
        from ketch.runtime.tty import recv_console
        master = recv_console(ours)
        ours.close()
    for name in _PROXIED:
        if master is None or name not in ("SIGINT", "SIGQUIT"):
            signal.signal(getattr(signal, name), forward)
    if master is not None:
        from ketch.runtime.tty import relay
        relay(master, 0, 1)
        os.close(master)
    return rexec.wait(helper)


def _write_pid_file(path: str, pid: int) -> None:
    """runc's pid file: written to a temporary name and renamed into place."""
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), "." + os.path.basename(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def cmd_list(g: Args, a: Args, log: Log) -> int:
    if a.positional:
        raise Failure('"list" takes no arguments')
    states = _runtime(g).list()
    if a.quiet:
        for s in states:
            sys.stdout.write(s.id + "\n")
        return 0
    fmt = a.format or "table"
    if fmt == "json":
        _print_json([state_json(s) for s in states])
        return 0
    if fmt != "table":
        raise Failure(f"invalid format option {fmt!r}")
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
    for s in states:
        j = state_json(s)
        rows.append((s.id, str(j["pid"]), j["status"], s.bundle, s.created, _owner(s.dir)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        sys.stdout.write("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
    return 0


def _owner(path) -> str:
    import pwd
    try:
        uid = os.stat(path).st_uid
        return pwd.getpwuid(uid).pw_name
    except (OSError, KeyError):
        return ""


def cmd_ps(g: Args, a: Args, log: Log) -> int:
    if not a.positional:
        raise Failure('"ps" requires at least 1 argument(s)')
    cid, ps_args = a.positional[0], a.positional[1:]
    rt = _runtime(g)
    pids = rt.pids(cid)  # from its cgroup
    if pids is None:
        pids = container_pids(rt.load(cid))
    fmt = a.format or "table"
    if fmt == "json":
        _print_json(pids)
        return 0
    if fmt != "table":
        raise Failure(f"invalid format option {fmt!r}")
    import subprocess
    try:
        out = subprocess.run(["ps", *(ps_args or ["-ef"])], stdout=subprocess.PIPE, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as e:
        raise Failure(f"ps: {e}") from None
    lines = out.splitlines()
    if not lines:
        return 0
    try:
        col = lines[0].split().index("PID")
    except ValueError:
        raise Failure("couldn't find PID field in ps output") from None
    sys.stdout.write(lines[0] + "\n")
    wanted = {str(p) for p in pids}
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col] in wanted:
            sys.stdout.write(line + "\n")
    return 0


def _freezer(op: str):
    def cmd(g: Args, a: Args, log: Log) -> int:
        cid = _one_id(a, op)
        rt = _runtime(g)
        rt.load(cid)
        with rt.locked(cid):
            getattr(rt, op)(cid)
        return 0
    return cmd


def cmd_spec(g: Args, a: Args, log: Log) -> int:
    if a.positional:
        raise Failure('"spec" takes no arguments')
    if a.rootless:
        raise Failure("spec --rootless: rootless containers are not supported")
    import json
    from ketch.oci.runtime import default_spec
    path = os.path.join(a.bundle or ".", "config.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise Failure("File config.json exists. Remove it first") from None
    except OSError as e:
        raise Failure(f"writing {path}: {e.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(default_spec().to_json(), indent="\t") + "\n")
    return 0


def cmd_features(g: Args, a: Args, log: Log) -> int:
    if a.positional:
        raise Failure('"features" takes no arguments')
    from ketch.runtime.features import features
    _print_json(features())
    return 0


_CONSOLE = {"console-socket": ("console_socket", "str"), "pid-file": ("pid_file", "str"),
            "no-pivot": ("no_pivot", "bool"), "no-new-keyring": ("no_new_keyring", "bool"),
            "preserve-fds": ("preserve_fds", "int")}
_BUNDLE = {"bundle": ("bundle", "str"), "b": ("bundle", "str")}
_FORMAT = {"format": ("format", "str"), "f": ("format", "str")}

# command -> (function, flags, usage)
COMMANDS: dict[str, tuple] = {
    "create": (cmd_create, {**_BUNDLE, **_CONSOLE},
               "create [--bundle B] [--pid-file F] [--console-socket S] [--no-pivot] [--preserve-fds N] ID"),
    "start": (cmd_start, {}, "start ID"),
    "state": (cmd_state, {}, "state ID"),
    "kill": (cmd_kill, {"all": ("all", "bool"), "a": ("all", "bool")}, "kill [--all] ID [SIGNAL]"),
    "delete": (cmd_delete, {"force": ("force", "bool"), "f": ("force", "bool")}, "delete [--force] ID"),
    "run": (cmd_run, {**_BUNDLE, **_CONSOLE, "detach": ("detach", "bool"), "d": ("detach", "bool"),
                      "keep": ("keep", "bool")},
            "run [--bundle B] [--detach] [--pid-file F] [--console-socket S] [--keep] ID"),
    "exec": (cmd_exec, {"process": ("process", "str"), "p": ("process", "str"), "cwd": ("cwd", "str"),
                        "env": ("env", "list"), "e": ("env", "list"), "user": ("user", "str"),
                        "u": ("user", "str"), "additional-gids": ("additional_gids", "list"),
                        "g": ("additional_gids", "list"), "cap": ("cap", "list"), "c": ("cap", "list"),
                        "tty": ("tty", "bool"), "t": ("tty", "bool"), "detach": ("detach", "bool"),
                        "d": ("detach", "bool"), "console-socket": ("console_socket", "str"),
                        "pid-file": ("pid_file", "str"), "preserve-fds": ("preserve_fds", "int"),
                        "no-new-privs": ("no_new_privs", "bool"), "process-label": ("process_label", "str"),
                        "apparmor": ("apparmor", "str"), "ignore-paused": ("ignore_paused", "bool"),
                        "cgroup": ("cgroup", "list")},
             "exec [--process F | --cwd D --env K=V --user UID[:GID] ...] [--tty] [--detach] "
             "[--console-socket S] [--pid-file F] [--preserve-fds N] ID [COMMAND ARGS...]"),
    "list": (cmd_list, {**_FORMAT, "quiet": ("quiet", "bool"), "q": ("quiet", "bool")},
             "list [--format table|json] [-q]"),
    "ps": (cmd_ps, _FORMAT, "ps [--format table|json] ID [ps options]"),
    "pause": (_freezer("pause"), {}, "pause ID"),
    "resume": (_freezer("resume"), {}, "resume ID"),
    "spec": (cmd_spec, {**_BUNDLE, "rootless": ("rootless", "bool")}, "spec [--bundle B]"),
    "features": (cmd_features, {}, "features"),
}

# runc commands clients may call that this runtime does not have yet.
NOT_IMPLEMENTED = ("update", "events", "checkpoint", "restore")

USAGE = """usage: ketch-runtime [--root DIR] [--log FILE] [--log-format text|json] [--debug] COMMAND [ARGS...]

An OCI runtime with runc's command line (runtime-spec v1.1 bundles).

Commands:
""" + "\n".join(f"  {spec[2]}" for spec in COMMANDS.values())


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status.  As a program (``argv`` None)
    the process ends with ``os._exit`` once stdout and stderr are flushed:
    the interpreter's teardown costs milliseconds on every call."""
    program = argv is None
    code = _main(list(sys.argv[1:] if argv is None else argv))
    if program:
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code


def _main(argv: list[str]) -> int:
    log = Log()
    try:
        g = parse(argv, GLOBAL_FLAGS, stop_at_positional=True)
        log = Log(g.log, g.log_format or "text", bool(g.debug))
        if g.log_format not in (None, "text", "json"):
            raise Failure(f"invalid log-format: {g.log_format}")
        if g.version:
            import ketch
            from ketch.oci.runtime import OCI_VERSION
            sys.stdout.write(f"ketch-runtime version {ketch.__version__}\nspec: {OCI_VERSION}\n")
            return 0
        if g.help or not g.positional:
            sys.stdout.write(USAGE + "\n")
            return 0 if g.help else 1
        if g.systemd_cgroup:
            raise Failure("--systemd-cgroup is not supported: ketch-runtime has no systemd cgroup driver")
        if g.rootless not in (None, "false", "auto"):
            raise Failure("--rootless: rootless containers are not supported")
        word, rest = g.positional[0], g.positional[1:]
        if word in NOT_IMPLEMENTED:
            raise Failure(f"ketch-runtime does not implement '{word}' yet")
        if word not in COMMANDS:
            raise Failure(f"No help topic for '{word}'")
        fn, flags, usage = COMMANDS[word]
        a = parse(rest, {**flags, "help": ("help", "bool"), "h": ("help", "bool")},
                  stop_after=1 if word in ("ps", "exec") else None)
        if a.help:
            sys.stdout.write(f"usage: ketch-runtime {usage}\n")
            return 0
        log.debug(f"ketch-runtime {' '.join(argv)}")
        return fn(g, a, log)
    except Exception as e:  # noqa: BLE001 - every failure is one line and exit 1, as runc
        from ketch.errors import KetchError
        if not isinstance(e, (Failure, KetchError, OSError)):
            raise
        if log.debug_on:
            import traceback
            traceback.print_exc()
        msg = str(e) if not isinstance(e, OSError) or isinstance(e, KetchError) else _os_message(e)
        log.error(msg)
        sys.stderr.write(msg + "\n")
        return 1


def _os_message(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return f"{e.strerror or e}{where}"


if __name__ == "__main__":
    sys.exit(main())
