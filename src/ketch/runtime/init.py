"""The container's init: what PID 1 does between fork and the user's program.

:func:`container_init` runs in the forked child that is PID 1 of the new PID
namespace and already in the container's other new namespaces.  It never
returns: it ends in ``execve`` or ``os._exit``.  Every module it uses is
imported at the top of this file, because after ``pivot_root`` the host's
Python standard library is out of reach (see DESIGN.md).

The steps, in order, and why (runc's ``standard_init_linux.go``):

1. reset signal dispositions and mask inherited from Python (SIGPIPE is
   ignored by CPython and ignoring survives execve);
2. bring ``lo`` up in a new network namespace;
3. build the filesystem view and pivot_root (:mod:`ketch.runtime.rootfs`);
4. the terminal: open ``/dev/ptmx`` *inside* the container's devpts, send the
   master to the caller over the console socket, make the slave our
   controlling terminal and stdio, bind it over ``/dev/console``;
5. hostname, domainname, sysctls (before 6, which makes /proc/sys read-only);
6. masked and read-only paths, read-only root (after /dev/console, a mount
   point a read-only root could not create);
7. rlimits, oom_score_adj, I/O priority, scheduler, AppArmor/SELinux exec
   labels, working directory; find the executable in the container's PATH
   *before* reporting ready, so a missing program fails ``create`` with
   127/126 as Docker reports it; build the seccomp filter (libseccomp is a
   host library: before pivot_root, in step 3);
8. report Ready, block opening the exec fifo until ``start``;
9. startContainer hooks, personality; seccomp now if there is no
   no_new_privs (loading it then needs CAP_SYS_ADMIN, about to be dropped);
   bounding set, KEEPCAPS, groups/gid/uid, capset + ambient (runc's
   finalizeNamespace; after the fifo: a process that changed its UID is not
   dumpable and cannot reopen ``/proc/self/fd/N``), umask, no_new_privs,
   seccomp as late as possible when no_new_privs, then execve.

Hooks (prestart/createRuntime by the parent, createContainer here) run
between step 3's mounts and its pivot_root (:mod:`ketch.runtime.hooks`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import signal
import socket
import stat
import struct
import sys
import termios

from ketch.errors import ExecError, KetchError
from ketch.linux import syscalls as sc
from ketch.oci.runtime import Spec
from ketch.runtime import capabilities as caps
from ketch.runtime import hooks
from ketch.runtime import rootfs as rfs
from ketch.runtime.sync import Channel, Error, Hooks, Ready, Resume

TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

RLIMITS = {name: getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")}

# personality(2) domains, <sys/personality.h>
PERSONALITIES = {"LINUX": 0x0000, "LINUX32": 0x0008}
# ioprio classes, <linux/ioprio.h>
IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
# sched_setattr(2) policies and flags, <linux/sched.h>
SCHED_POLICIES = {"SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3, "SCHED_ISO": 4,
                  "SCHED_IDLE": 5, "SCHED_DEADLINE": 6}
SCHED_FLAGS = {"SCHED_FLAG_RESET_ON_FORK": 0x01, "SCHED_FLAG_RECLAIM": 0x02, "SCHED_FLAG_DL_OVERRUN": 0x04,
               "SCHED_FLAG_KEEP_POLICY": 0x08, "SCHED_FLAG_KEEP_PARAMS": 0x10, "SCHED_FLAG_UTIL_CLAMP_MIN": 0x20,
               "SCHED_FLAG_UTIL_CLAMP_MAX": 0x40}


def lsm_enabled(name: str) -> bool:
    """Whether the host has AppArmor (``apparmor``) or SELinux (``selinux``) enabled."""
    try:
        if name == "apparmor":
            with open("/sys/module/apparmor/parameters/enabled") as f:
                return f.read().strip() == "Y"
        return os.path.exists("/sys/fs/selinux/enforce")
    except OSError:
        return False


def container_init(spec: Spec, rootfs: str, chan: Channel, fifo_fd: int,
                   console: socket.socket | None, new_netns: bool, preserve_fds: int = 0, state=None) -> None:
    """Run steps 1–9 in PID 1 of the container; never returns.

    ``fifo_fd`` is an ``O_PATH`` descriptor of the exec fifo opened before
    pivot_root; ``console`` the socket to send a pty master on when
    ``spec.process.terminal``; fds 3..3+``preserve_fds``-1 stay open in the
    program, every other fd above 2 is closed on exec.  ``state``: the
    container's :class:`~ketch.runtime.container.State`, for hooks.  Failures
    are reported to the parent as an ``Error`` message and end the process.
    """
    code = 125
    try:
        _reset_signals()
        proc = spec.process
        # Host facts and host libraries, while the host's root is ours.
        for lsm, label in (("apparmor", proc.apparmorProfile), ("selinux", proc.selinuxLabel)):
            if label and not lsm_enabled(lsm):
                raise KetchError(f"config.json: process.{'apparmorProfile' if lsm == 'apparmor' else 'selinuxLabel'}"
                                 f" is set but {'AppArmor' if lsm == 'apparmor' else 'SELinux'} is not enabled"
                                 " on this host")
        filt = None
        if spec.linux.seccomp is not None:
            from ketch.runtime import seccomp  # loads libseccomp.so.2: before pivot_root
            filt = seccomp.build(spec.linux.seccomp)
        if new_netns:
            loopback_up()
        host_pid = int(os.readlink("/proc/self"))  # the host's /proc is still ours: our PID as the host sees it

        def before_pivot() -> None:
            if spec.hooks.get("prestart") or spec.hooks.get("createRuntime"):
                chan.send(Hooks())  # the parent runs them, in the runtime's namespaces
                msg = chan.recv()
                if not isinstance(msg, Resume):
                    os._exit(125)  # the parent reports the failure
            if spec.hooks.get("createContainer"):
                hooks.run(spec.hooks["createContainer"], "createContainer",
                          state.hook_state("creating", host_pid) if state else b"{}")

        rfs.prepare_rootfs(spec, rootfs, before_pivot)
        if spec.process.terminal:
            slave = setup_terminal(console, spec)
            rfs.bind_console(slave)
        if spec.hostname:
            sc.sethostname(spec.hostname)
        if spec.domainname:
            sc.setdomainname(spec.domainname)
        for key, value in spec.linux.sysctl.items():
            with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
                f.write(value)
        rfs.finish_rootfs(spec)
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in proc.env)
        for r in proc.rlimits:
            if r.type not in RLIMITS:
                raise KetchError(f"config.json: unknown rlimit {r.type}")
            resource.setrlimit(RLIMITS[r.type], (r.soft, r.hard))
        if proc.oomScoreAdj is not None:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(proc.oomScoreAdj))
        if proc.ioPriority is not None:
            if proc.ioPriority.ioclass not in IOPRIO_CLASSES:
                raise KetchError(f"config.json: process.ioPriority.class {proc.ioPriority.ioclass!r} is unknown")
            sc.ioprio_set(IOPRIO_CLASSES[proc.ioPriority.ioclass], proc.ioPriority.priority)
        if proc.scheduler is not None:
            s = proc.scheduler
            if s.policy not in SCHED_POLICIES or set(s.flags) - set(SCHED_FLAGS):
                raise KetchError(f"config.json: process.scheduler: unknown policy or flag in {s.policy}, {s.flags}")
            sc.sched_setattr(SCHED_POLICIES[s.policy], sum(SCHED_FLAGS[f] for f in s.flags), s.nice, s.priority,
                             s.runtime, s.deadline, s.period)
        if proc.apparmorProfile:
            _write_attr(("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"), f"exec {proc.apparmorProfile}")
        if proc.selinuxLabel:
            _write_attr(("/proc/self/attr/exec",), proc.selinuxLabel)
        persona = spec.linux.personality
        try:
            os.chdir(proc.cwd)
        except OSError as e:
            raise ExecError(f"chdir to cwd ({proc.cwd!r}) set in config.json failed: {e.strerror}", 126) from None
        # Found before Ready so a missing program fails `create` (127/126) as
        # Docker reports it; found as root, so the user's own permission is
        # checked by execve itself.
        path = find_executable(proc.args[0], env.get("PATH", ""))
        capmasks = caps.masks(proc.capabilities) if proc.capabilities is not None else None
        chan.send(Ready())
        # Block until `start`.  Before dropping privileges: a non-root process
        # is not dumpable and may not reopen /proc/self/fd/N.
        fd = os.open(f"/proc/self/fd/{fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, b"0")
        os.close(fd)
        os.close(fifo_fd)
        if spec.hooks.get("startContainer"):
            hooks.run(spec.hooks["startContainer"], "startContainer",
                      state.hook_state("created", host_pid) if state else b"{}")
        if persona is not None:
            sc.personality(PERSONALITIES[persona.domain])
        become_user(proc, capmasks, filt, default_umask=0o022)
        code = 126
        close_exec_from(3 + preserve_fds)
        if filt is not None and proc.noNewPrivileges:
            filt.load()  # as late as possible: the fewest syscalls after it
        try:
            os.execve(path, list(proc.args), env)
        except OSError as e:
            # Too late for the channel (the parent stopped listening at Ready):
            # say it on the process's own stderr, as runc's init does.
            os.write(2, f"ketch: exec {proc.args[0]}: {e.strerror}\n".encode())
            os._exit(127 if e.errno == errno.ENOENT else 126)
    except ExecError as e:
        _fail(chan, str(e), e.exit_code)
    except KetchError as e:
        _fail(chan, str(e), code)
    except OSError as e:
        where = f" {e.filename}" if getattr(e, "filename", None) else ""
        _fail(chan, f"container init: {e.strerror}{where}", code)
    except BaseException:  # noqa: BLE001 - report anything, never unwind into the caller's code
        _fail(chan, "container init crashed: " + _describe(sys.exc_info()[1]), code)
    os._exit(code)


def _write_attr(paths: tuple[str, ...], value: str) -> None:
    """Set an LSM exec label (applies at the next execve) at the first of ``paths`` that exists."""
    for p in paths:
        if os.path.exists(p):
            with open(p, "w") as f:
                f.write(value)
            return
    raise KetchError(f"cannot set the security label {value!r}: none of {', '.join(paths)} exists")


def _describe(e: BaseException | None) -> str:
    """The last line ``traceback`` would print for ``e`` (``module.Type: message``),
    without importing it (start-up)."""
    t = type(e)
    name = t.__qualname__ if t.__module__ in ("builtins", "__main__") else f"{t.__module__}.{t.__qualname__}"
    msg = str(e)
    return (f"{name}: {msg}" if msg else name).strip().splitlines()[-1]


def become_user(proc, capmasks, filt, default_umask: int | None) -> None:
    """Take on ``proc``'s identity, in runc's ``finalizeNamespace`` order:
    a seccomp filter that must load while we still have CAP_SYS_ADMIN (no
    ``noNewPrivileges``), the bounding set while we may, capabilities kept
    across setgroups/setgid/setuid, then the other four capability sets, the
    umask (``default_umask`` when the spec has none; None keeps ours) and
    no_new_privs.  Used by the init and by ``exec``.  Raises OSError."""
    if filt is not None and not proc.noNewPrivileges:
        filt.load()  # needs CAP_SYS_ADMIN without no_new_privs: before capabilities are dropped
    user = proc.user
    if capmasks is not None:
        caps.drop_bounding(capmasks)
        caps.keep_caps(True)
    os.setgroups(list(user.additionalGids))
    os.setgid(user.gid)
    os.setuid(user.uid)
    if capmasks is not None:
        caps.keep_caps(False)
        caps.apply_sets(capmasks)
    umask = default_umask if user.umask is None else user.umask
    if umask is not None:
        os.umask(umask)
    if proc.noNewPrivileges:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def close_exec_from(first: int) -> None:
    """Mark every open fd >= ``first`` close-on-exec, so the program gets only
    stdio and the fds the caller preserved (runc's ``CloseExecFrom``): a
    descriptor inherited from whoever started ketch — a host file, a
    directory, a socket — must never reach the container."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= first:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the directory listing's own fd, closed by now
                pass


def _fail(chan: Channel, message: str, code: int) -> None:
    try:
        chan.send(Error(message, code))
    except OSError:
        os.write(2, f"ketch: {message}\n".encode())
    os._exit(code)


def _reset_signals() -> None:
    for sig in range(1, signal.NSIG):
        try:
            if signal.getsignal(sig) not in (signal.SIG_DFL, None):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def loopback_up() -> None:
    """Set IFF_UP on ``lo`` with SIOCSIFFLAGS (netdevice(7)); a new network
    namespace starts with it down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, ifr))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def setup_terminal(console: socket.socket | None, spec: Spec) -> str:
    """Open a pty in the container's devpts (pts(4)), send the master over
    ``console`` (SCM_RIGHTS, as runc's --console-socket), and make the slave
    the controlling terminal and stdio.  Returns the slave's path."""
    if console is None:
        raise KetchError("config.json: process.terminal is true but no console socket was given")
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, struct.pack("I", 0)))[0]
    slave_path = f"/dev/pts/{n}"
    if spec.process.consoleSize:
        h, w = spec.process.consoleSize
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", h, w, 0, 0))
    socket.send_fds(console, [slave_path.encode()], [master])
    console.close()
    os.close(master)
    os.setsid()
    slave = os.open(slave_path, os.O_RDWR)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    os.fchown(slave, spec.process.user.uid, -1)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    return slave_path


def find_executable(name: str, path_env: str) -> str:
    """Resolve ``name`` like execvp(3) does, in the current (container) root.

    Raises ExecError with Docker's exit codes: 127 when not found, 126 when
    found but not executable (a directory, no x permission).
    """
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in path_env.split(":")]
    denied = None
    for c in candidates:
        try:
            st = os.stat(c)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            if "/" in name:
                raise ExecError(f'exec: "{name}": is a directory', 126)
            continue
        if os.access(c, os.X_OK):
            return c
        denied = c
    if denied:
        raise ExecError(f'exec: "{name}": permission denied', 126)
    if "/" in name:
        raise ExecError(f'exec: "{name}": no such file or directory', 127)
    raise ExecError(f'exec: "{name}": executable file not found in $PATH', 127)

