"""Running another process in an existing container (``runc exec``, ``docker exec``).

:func:`exec_process` starts an OCI ``process`` in the namespaces and cgroups
of a running container, given its PID 1::

    caller ──fork──▶ A: joins PID 1's cgroups (cgroup.procs), then setns:
       │                user, ipc, uts, net, pid, cgroup, mnt (in that order:
       │                the pid namespace applies to A's *children*; mnt last,
       │                every namespace fd is opened before) ──fork──▶ B
       │             A waits for B and exits with its status
       │             (128+N for signal N); with ``detach`` A exits at once
       │                                                         B: in the container's root
       │                                                         (setns(mnt) moved it there):
       │                                                         terminal, cwd, PATH lookup,
       │                                                         groups/gid/uid, execve
       │◀── error pipe (CLOEXEC): EOF = exec'd; else {"error", "code"} ─┘

Everything B needs is imported before the fork: after ``setns(mnt)`` the
host's Python standard library is out of reach (DESIGN.md).  The caller
must be single-threaded (setns(CLONE_NEWNS) refuses multi-threaded callers,
which is why it happens in the child).

The process gets its own ``capabilities`` and ``noNewPrivileges`` (as the
container's init applies them) and, when given, the container's seccomp
profile (built before the fork: libseccomp is a host library).  Not applied:
rlimits (inherited from the caller), AppArmor/SELinux labels.
"""

from __future__ import annotations

import errno
import json
import os

from ketch.errors import ContainerStateError, ExecError, KetchError
from ketch.linux import syscalls as sc
from ketch.runtime import capabilities as _caps
from ketch.runtime import init as _init

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket

    from ketch.oci.runtime import Process

# (name in /proc/PID/ns, clone flag), in the order they are joined.
NAMESPACES = (("user", sc.CLONE_NEWUSER), ("ipc", sc.CLONE_NEWIPC), ("uts", sc.CLONE_NEWUTS),
              ("net", sc.CLONE_NEWNET), ("pid", sc.CLONE_NEWPID), ("cgroup", sc.CLONE_NEWCGROUP),
              ("mnt", sc.CLONE_NEWNS))


def _ns_fds(pid1: int) -> list[tuple[str, int, int]]:
    """Open PID 1's namespaces that differ from ours: (name, flag, fd)."""
    out = []
    try:
        for name, flag in NAMESPACES:
            theirs = f"/proc/{pid1}/ns/{name}"
            try:
                if os.readlink(theirs) == os.readlink(f"/proc/self/ns/{name}"):
                    continue
                out.append((name, flag, os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)))
            except FileNotFoundError:
                if name in ("pid", "mnt"):
                    raise
    except BaseException:
        for _, _, fd in out:
            os.close(fd)
        raise
    return out


def _cgroup_mounts() -> dict[str, str]:
    """Hierarchy key (``memory,cpuacct``-style controller list or ``""`` for v2,
    ``name=systemd`` for named ones) → mount point, from our mountinfo."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _src, opts = (right.split() + ["", "", ""])[:3]
            mp = left.split()[4]
            if fstype == "cgroup2":
                out.setdefault("", mp)
            elif fstype == "cgroup":
                ctrls = [o for o in opts.split(",") if o not in ("rw", "ro", "nosuid", "nodev", "noexec",
                                                                   "relatime", "noatime", "xattr", "clone_children")]
                out.setdefault(",".join(sorted(ctrls)), mp)
    return out


def join_cgroups(pid1: int) -> None:
    """Move this process into every cgroup of ``pid1`` that differs from its
    own (best effort: a hierarchy not mounted here is skipped)."""
    try:
        with open(f"/proc/{pid1}/cgroup") as f:
            theirs = f.read().splitlines()
        with open("/proc/self/cgroup") as f:
            ours = set(f.read().splitlines())
    except OSError:
        return
    mounts = None
    for line in theirs:
        if line in ours:
            continue
        _hid, ctrls, path = line.split(":", 2)
        if mounts is None:
            mounts = _cgroup_mounts()
        mp = mounts.get(",".join(sorted(ctrls.split(","))) if ctrls else "")
        if mp is None:
            continue
        try:
            with open(os.path.join(mp, path.lstrip("/"), "cgroup.procs"), "w") as f:
                f.write("0")
        except OSError:
            continue


def exec_process(pid1: int, process: Process, *, stdio: tuple[int, int, int] = (0, 1, 2),
                 console_socket: socket.socket | None = None, detach: bool = False, seccomp=None,
                 pid_out: list[int] | None = None) -> int:
    """Start ``process`` in the container of ``pid1``; return the PID of the
    helper (A) to wait for: its exit status is the process's (Docker's
    exit code; 0 at once with ``detach``).  ``seccomp``: the container's
    ``linux.seccomp`` (an :mod:`ketch.oci` Seccomp), or None.  ``pid_out``:
    a list the host PID of the process itself (B) is appended to (what
    ``runc exec --pid-file`` writes, and where signals are forwarded).

    Returns only once the program is executing.  Raises ContainerStateError
    if PID 1 is gone, ExecError (126/127 as Docker: cwd, not found, not
    executable, unknown user), KetchError/SyscallError otherwise.
    """
    import sys

    filt = None
    if seccomp is not None:
        from ketch.runtime import seccomp as _seccomp
        filt = _seccomp.build(seccomp)
    try:
        fds = _ns_fds(pid1)
    except FileNotFoundError:
        raise ContainerStateError(f"container process {pid1} is not running") from None
    r, w = os.pipe2(os.O_CLOEXEC)
    pr, pw = os.pipe2(os.O_CLOEXEC) if pid_out is not None else (-1, -1)
    sys.stdout.flush()
    sys.stderr.flush()
    a = os.fork()
    if a == 0:  # ------------------------------------------------------ A
        code = 125
        try:
            os.close(r)
            if pr >= 0:
                os.close(pr)
            join_cgroups(pid1)
            for name, flag, fd in fds:
                try:
                    sc.setns(fd, flag)
                except OSError as e:
                    raise KetchError(f"joining the container's {name} namespace: {e.strerror}") from None
                os.close(fd)
            b = os.fork()
            if b == 0:  # -------------------------------------------------- B
                _child(process, stdio, console_socket, w, filt)
            os.close(w)
            if pw >= 0:
                os.write(pw, str(b).encode())
                os.close(pw)
            if detach:
                code = 0
            else:
                while True:
                    try:
                        _, status = os.waitpid(b, 0)
                        break
                    except InterruptedError:
                        continue
                c = os.waitstatus_to_exitcode(status)
                code = 128 - c if c < 0 else c
        except BaseException as e:  # noqa: BLE001
            _report(w, str(e), getattr(e, "exit_code", 125))
        finally:
            os._exit(code)
    # ---------------------------------------------------------------- caller
    os.close(w)
    for _, _, fd in fds:
        os.close(fd)
    if pw < 0:
        return _await_exec(a, r, console_socket is not None)
    os.close(pw)
    try:
        helper = _await_exec(a, r, console_socket is not None)
        data = b""
        while chunk := os.read(pr, 64):
            data += chunk
    finally:
        os.close(pr)
    if data.isdigit():
        pid_out.append(int(data))
    return helper


def _await_exec(a: int, r: int, terminal: bool) -> int:
    chunks = []
    try:
        while True:
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
    if chunks:
        os.waitpid(a, 0)
        try:
            msg = json.loads(b"".join(chunks))
        except ValueError:
            msg = {"error": "exec failed", "code": 126}
        code = msg.get("code", 126)
        if code in (126, 127):
            raise ExecError(msg["error"], code)
        raise KetchError(msg["error"])
    return a


def _report(w: int, message: str, code: int) -> None:
    try:
        os.write(w, json.dumps({"error": message, "code": code}).encode())
    except OSError:
        pass


class _SpecView:
    """What :func:`ketch.runtime.init.setup_terminal` reads of a spec."""

    def __init__(self, process: Process):
        self.process = process


def _child(process: Process, stdio: tuple[int, int, int], console: socket.socket | None, w: int,
           filt=None) -> None:
    """B: in the container; never returns."""
    code = 126
    try:
        _init._reset_signals()
        for i, fd in enumerate(stdio):
            if fd != i:
                os.dup2(fd, i, inheritable=True)
        if process.terminal:
            _init.setup_terminal(console, _SpecView(process))
        elif console is not None:
            console.close()
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in process.env)
        try:
            os.chdir(process.cwd)
        except OSError as e:
            raise ExecError(f"chdir to cwd ({process.cwd!r}) set in config.json failed: {e.strerror}", 126) from None
        path = _init.find_executable(process.args[0], env.get("PATH", ""))
        capmasks = _caps.masks(process.capabilities) if process.capabilities is not None else None
        _init.become_user(process, capmasks, filt, default_umask=None)
        if filt is not None and process.noNewPrivileges:
            filt.load()
        try:
            os.execve(path, list(process.args), env)
        except OSError as e:
            code = 127 if e.errno == errno.ENOENT else 126
            raise ExecError(f'exec: "{process.args[0]}": {e.strerror}', code) from None
    except ExecError as e:
        _report(w, str(e), e.exit_code)
        code = e.exit_code
    except BaseException as e:  # noqa: BLE001
        _report(w, f"exec: {e}", 125)
        code = 125
    os._exit(code)


def wait(pid: int) -> int:
    """Wait for the helper returned by :func:`exec_process`; the exit code."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    c = os.waitstatus_to_exitcode(status)
    return 128 - c if c < 0 else c


__all__ = ["exec_process", "join_cgroups", "wait"]
