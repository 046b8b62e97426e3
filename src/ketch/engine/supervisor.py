"""The supervisor of a detached container (a conmon-like shim).

:func:`launch` is called by ``ketch run -d`` and ``ketch start`` once the
container's overlay is mounted in the caller's private mount namespace and
its ``config.json`` written.  It double-forks (``setsid`` in between, so the
supervisor belongs to no terminal session and is not the caller's child)::

    ketch (CLI) ──fork──▶ A ──setsid, fork──▶ B (supervisor)     A exits at once
       │                                       │ PR_SET_CHILD_SUBREAPER
       │                                       │ runtime.create → PID 1 is B's child
       │                                       │ runtime.start, record "running"
       │◀──── status pipe: {"pid": N} ─────────┤ or {"error": "...", "code": 127}
     prints the ID, exits                      │ execve(python -I -S monitor.py)
                                               ▼ (same PID: PID 1 stays its child,
                                                  the mount namespace stays held)

B keeps the caller's mount namespace (and with it the overlay) alive after the
CLI exits; the kernel drops both when B and the container are gone, so no
mount can outlive them even after ``kill -9``.  B then *execs* the monitor
(:mod:`ketch.engine.monitor`), a fresh interpreter that imports only what
logging and reaping need: an idle detached container costs one small
process, not a copy of the CLI's heap.

:func:`start_process` is also what the monitor calls to restart the
container under a restart policy.
"""

from __future__ import annotations

import json
import os
import sys

from ketch.engine.store import ContainerStore, now_iso, proc_start_time
from ketch.errors import ExecError, KetchError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ketch.engine.containers import Engine
    from ketch.engine.store import ContainerRecord

MONITOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "monitor.py")


def launch(engine: Engine, rec: ContainerRecord, spec=None) -> int:
    """Start ``rec`` under a new supervisor; return PID 1's host PID once the
    user's program runs.  ``spec``: the bundle's config.json, parsed (None:
    read it).  Raises ExecError (126/127), KetchError: the supervisor has
    then removed the runtime state; the caller removes the mount and files."""
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # ------------------------------------------------------ A
        try:
            os.close(r)
            os.setsid()
            if os.fork() == 0:  # -------------------------------------- B
                _supervise(engine, rec, spec, w)
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    try:
        msg = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        msg = {}
    if "pid" in msg:
        return msg["pid"]
    err = msg.get("error") or "the container's supervisor died before the container started"
    code = msg.get("code", 125)
    if code in (126, 127):
        raise ExecError(err, code)
    raise KetchError(err)


def _supervise(engine: Engine, rec: ContainerRecord, spec, status_w: int) -> None:
    """Process B: create and start the container, report, exec the monitor.  Never returns."""
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # never hold the caller's stdio open (its reader would wait for EOF)
            os.dup2(devnull, fd)
        os.close(devnull)
        engine.containers = ContainerStore(engine.paths)  # an SQLite connection is not used across fork
        try:
            pid, fds = start_process(engine.runtime, engine.containers, rec.Id,
                                     engine.containers.dir(rec.Id), spec)
        except KetchError as e:
            os.write(status_w, json.dumps({"error": str(e), "code": e.exit_code}).encode())
            return
        except BaseException as e:  # noqa: BLE001
            os.write(status_w, json.dumps({"error": f"supervisor: {e}", "code": 125}).encode())
            return
        os.write(status_w, json.dumps({"pid": pid}).encode())
        os.close(status_w)
        exec_monitor(engine.paths, rec.Id, pid, fds)
    finally:
        os._exit(1)


def start_process(runtime, store: ContainerStore, cid: str, bundle, spec=None) -> tuple[int, dict]:
    """Create and start the container's process as this process's child
    (PR_SET_CHILD_SUBREAPER) with its output on new pipes (or a pty); record
    it "running".  Returns (PID 1, {"out": fd, "err": fd} or {"tty": master}).
    On failure the runtime state is gone and the error raised."""
    import socket

    runtime.delete(cid, force=True)  # a previous run's state (restart, start after a crash)
    if spec is None:
        from ketch.oci.runtime import Spec
        with open(os.path.join(bundle, "config.json")) as f:
            spec = Spec.from_json(json.load(f))
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    fds: dict[str, int] = {}
    child_ends: list = []
    parent_sock = child_sock = None
    try:
        if spec.process.terminal:
            parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            child_ends.append(child_sock)
            stdio = (devnull, devnull, devnull)
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            fds = {"out": out_r, "err": err_r}
            child_ends += [out_w, err_w]
            stdio = (devnull, out_w, err_w)
        state = runtime.create(cid, bundle, stdio=stdio, console_socket=child_sock, subreaper=True, spec=spec)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        if parent_sock is not None:
            parent_sock.close()
        raise
    finally:
        os.close(devnull)
        for e in child_ends:
            e.close() if hasattr(e, "close") else os.close(e)
    try:
        if parent_sock is not None:
            from ketch.runtime.tty import recv_console
            fds = {"tty": recv_console(parent_sock)}
            parent_sock.close()
        runtime.start(cid)
    except BaseException:
        runtime.delete(cid, force=True)
        raise
    me = os.getpid()
    store.update(cid, Status="running", Pid=state.pid, PidStart=state.start_time, MonitorPid=me,
                 MonitorStart=proc_start_time(me), StartedAt=now_iso(), FinishedAt="", ExitCode=0,
                 Error="", OOMKilled=False)
    return state.pid, fds


def exec_monitor(paths, cid: str, pid: int, fds: dict) -> None:
    """Replace this process by the monitor of ``cid`` (same PID)."""
    for fd in fds.values():
        os.set_inheritable(fd, True)
    arg = json.dumps({"id": cid, "root": str(paths.root), "runroot": str(paths.runroot), "pid": pid, **fds})
    os.execv(sys.executable, [sys.executable, "-I", "-S", MONITOR, arg])
