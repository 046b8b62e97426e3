"""``docker exec``: a new process in a running container.

The process starts from the container's own ``process`` (config.json): its
environment, working directory and user, then ``-e``/``--env-file``, ``-w``
and ``-u`` as Docker applies them (``-u`` resolved in the container's own
``/etc/passwd`` and ``/etc/group``, read through ``/proc/<PID 1>/root``).
The runtime side — joining the namespaces and cgroups — is
:func:`ketch.runtime.exec.exec_process`.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

from ketch.errors import ContainerStateError
from ketch.paths import Paths


class NotRunning(ContainerStateError):
    exit_code = 1  # Docker's CLI: an error response from the daemon


def build_process(base, pid1: int, command: list[str], *, tty: bool, user: str | None,
                  workdir: str | None, env: list[str], env_files: list[str]):
    """The exec's OCI process from the container's ``base`` process."""
    from ketch.engine.options import parse_env, parse_env_file, parse_workdir
    from ketch.engine.spec import replace_or_append_env
    from ketch.oci.runtime import User

    extra: list[str] = []
    for f in env_files:
        extra += parse_env_file(f, os.environ)
    extra += parse_env(env, os.environ)
    proc_env = replace_or_append_env(base.env, extra)
    cwd = parse_workdir(workdir) if workdir else base.cwd
    who = base.user
    if user:
        from ketch.engine.users import resolve_user_in_rootfs
        u = resolve_user_in_rootfs(f"/proc/{pid1}/root", user)
        who = User(uid=u.uid, gid=u.gid, additionalGids=tuple(u.additional_gids), umask=base.user.umask)
        home = [e for e in proc_env if e.startswith("HOME=")]
        if u.home and home:
            proc_env = replace_or_append_env(proc_env, [f"HOME={u.home}"])
    size = None
    if tty:
        from ketch.runtime.tty import window_size
        size = window_size(0) or window_size(1)
    return replace(base, args=tuple(command), env=tuple(proc_env), cwd=cwd, user=who, terminal=tty,
                   consoleSize=size)


def exec_in_container(paths: Paths, ref: str, command: list[str], *, detach: bool = False,
                      interactive: bool = False, tty: bool = False, user: str | None = None,
                      workdir: str | None = None, env: list[str] = (), env_files: list[str] = ()) -> int:
    """Run ``command`` in container ``ref``; its exit code (0 at once with
    ``detach``).  Raises ContainerNotFound, NotRunning (exit 1),
    ExecError (126/127), UsageError, KetchError."""
    from ketch.engine.store import ContainerStore
    from ketch.oci.runtime import Process
    from ketch.runtime import exec as rexec

    rec = ContainerStore(paths).find(ref)
    if not rec.pid1_alive():
        raise NotRunning(f"container {rec.Id} is not running")
    with open(paths.containers / rec.Id / "config.json") as f:
        cfg = json.load(f)
    base = Process.from_json(cfg["process"])
    seccomp = None
    if (cfg.get("linux") or {}).get("seccomp"):
        from ketch.oci.runtime import Spec
        seccomp = Spec.from_json(cfg).linux.seccomp
    process = build_process(base, rec.Pid, command, tty=tty, user=user, workdir=workdir,
                            env=list(env), env_files=list(env_files))
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    stdin = 0 if interactive and not detach else devnull
    stdio = (devnull, devnull, devnull) if detach else (stdin, 1, 2)
    parent = child = None
    if tty and not detach:
        import socket
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    elif tty:
        process = replace(process, terminal=False)  # -dt: nobody would read the terminal
    try:
        helper = rexec.exec_process(rec.Pid, process, stdio=stdio, console_socket=child, detach=detach,
                                    seccomp=seccomp)
    finally:
        os.close(devnull)
        if child is not None:
            child.close()
    if parent is not None:
        from ketch.runtime.tty import recv_console, relay
        master = recv_console(parent)
        parent.close()
        relay(master, 0 if interactive else None, 1)
        os.close(master)
    return rexec.wait(helper)
