"""Container lifecycle of the runtime: create, start, state, kill, delete.

The runc model (runtime-spec runtime.md "Lifecycle"): ``create`` sets up the
namespaces and filesystem and leaves PID 1 blocked on ``exec.fifo`` in the
state directory; ``start`` opens the fifo for reading, which releases it into
``execve``; the status is derived, never stored, from whether the PID lives
(and is the same process: its start time is recorded) and whether the fifo is
still there.  The lifecycle rules live in :class:`Status` and
:meth:`State.status` only.

State directory: ``<state_root>/<id>/state.json`` (runtime-spec state) and
``exec.fifo``.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import re
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ketch.errors import ContainerNotFound, ContainerStateError, KetchError, SpecError
from ketch.linux import syscalls as sc
from ketch.linux.proc import start_time as proc_start_time

TYPE_CHECKING = False  # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    import socket
    from typing import Iterator

    from ketch.oci.runtime import Spec

# select, shutil, socket, the spec parser and the sync channel are imported by
# the operations that use them: `ketch-runtime state` only reads state.json.

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}$")

NAMESPACE_FLAGS = {
    "pid": sc.CLONE_NEWPID, "network": sc.CLONE_NEWNET, "ipc": sc.CLONE_NEWIPC,
    "uts": sc.CLONE_NEWUTS, "mount": sc.CLONE_NEWNS, "user": sc.CLONE_NEWUSER,
    "cgroup": sc.CLONE_NEWCGROUP, "time": sc.CLONE_NEWTIME,
}


class Status(str, enum.Enum):
    """runtime-spec states, with the operations each allows."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"

    def can_start(self) -> bool:
        return self is Status.CREATED

    def can_kill(self) -> bool:
        return self in (Status.CREATED, Status.RUNNING, Status.PAUSED)

    def can_pause(self) -> bool:
        return self in (Status.CREATED, Status.RUNNING)

    def can_resume(self) -> bool:
        return self is Status.PAUSED

    def can_delete(self) -> bool:
        return self is Status.STOPPED


@dataclass
class State:
    """The runtime-spec state of one container plus what the runtime needs to
    find it again (``start_time`` guards against PID reuse)."""

    id: str
    bundle: str
    pid: int = 0
    start_time: int | None = None
    rootfs: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    created: str = ""
    cgroup: dict | None = None  # ketch.runtime.cgroups.Cgroup.to_json()
    hooks: dict | None = None  # the spec's poststart/poststop hooks (run by start/delete)
    dir: Path = Path()

    @property
    def fifo(self) -> Path:
        return self.dir / "exec.fifo"

    def cgroups(self):
        """The container's :class:`~ketch.runtime.cgroups.Cgroup`, or None."""
        if not self.cgroup:
            return None
        from ketch.runtime.cgroups import Cgroup
        return Cgroup.from_json(self.cgroup)

    def status(self) -> Status:
        if not self.pid:
            return Status.CREATING
        if proc_start_time(self.pid) != self.start_time:
            return Status.STOPPED
        cg = self.cgroups()
        if cg is not None and cg.frozen():
            return Status.PAUSED
        return Status.CREATED if self.fifo.exists() else Status.RUNNING

    def to_json(self) -> dict:
        """The runtime-spec state object (runtime.md "State")."""
        from ketch.oci.runtime import OCI_VERSION
        return {"ociVersion": OCI_VERSION, "id": self.id, "status": self.status().value,
                "pid": self.pid if self.status() != Status.STOPPED else 0, "bundle": self.bundle,
                "rootfs": self.rootfs, "created": self.created, "annotations": self.annotations}

    def hook_state(self, status: str, pid: int | None = None) -> bytes:
        """The state JSON a hook reads on stdin (runtime.md "State")."""
        from ketch.oci.runtime import OCI_VERSION
        return json.dumps({"ociVersion": OCI_VERSION, "id": self.id, "status": status,
                           "pid": self.pid if pid is None else pid, "bundle": self.bundle,
                           "annotations": self.annotations}).encode()

    def run_hooks(self, name: str, status: str) -> None:
        """Run the saved poststart/poststop hooks; a failure is a warning (config.md)."""
        if not self.hooks or not self.hooks.get(name):
            return
        from ketch.oci.runtime import Hook
        from ketch.runtime import hooks
        for i, h in enumerate(self.hooks[name]):
            try:
                hooks.run_one(Hook.from_json(h, f"hooks.{name}[{i}]"), name, self.hook_state(status))
            except KetchError as e:
                sys.stderr.write(f"warning: {e}\n")

    def save(self) -> None:
        body = {"id": self.id, "bundle": self.bundle, "pid": self.pid, "start_time": self.start_time,
                "rootfs": self.rootfs, "annotations": self.annotations, "created": self.created,
                "cgroup": self.cgroup, "hooks": self.hooks}
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.dir / "state.json")


class Runtime:
    """The runtime over one state root (runc's ``--root``)."""

    def __init__(self, state_root: Path | str):
        self.root = Path(state_root)

    def _dir(self, cid: str) -> Path:
        if not _ID_RE.match(cid):
            raise ContainerStateError(f"invalid container ID {cid!r}")
        return self.root / cid

    @contextmanager
    def locked(self, cid: str) -> Iterator[None]:
        """Serialize operations on one container (flock on its state dir)."""
        d = self._dir(cid)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def load(self, cid: str) -> State:
        """The saved state of ``cid``.  Raises ContainerNotFound."""
        d = self._dir(cid)
        try:
            body = json.loads((d / "state.json").read_text())
        except FileNotFoundError:
            raise ContainerNotFound(f"container {cid} does not exist") from None
        return State(dir=d, **body)

    def list(self) -> list[State]:
        out = []
        if self.root.is_dir():
            for d in sorted(self.root.iterdir()):
                try:
                    out.append(self.load(d.name))
                except (ContainerStateError, ValueError):
                    continue
        return out

    # ------------------------------------------------------------------ create
    def create(self, cid: str, bundle: Path | str, *, stdio: tuple[int, int, int] = (0, 1, 2),
               console_socket: socket.socket | None = None, pid_file: str | None = None,
               subreaper: bool = False, spec: Spec | None = None, preserve_fds: int = 0) -> State:
        """Create container ``cid`` from the bundle (``config.json`` + rootfs).

        Returns the state with status ``created``: PID 1 exists in its
        namespaces and waits for :meth:`start`.  ``stdio`` become the
        process's fds 0–2 (ignored when the process has a terminal, whose
        master is sent over ``console_socket``).  ``subreaper``: make the
        caller PR_SET_CHILD_SUBREAPER so it can wait for PID 1 itself (PID 1
        may then be its direct child; no other thread of the caller may fork
        during ``create``).
        ``spec``: the bundle's ``config.json`` already parsed, from a caller
        that has just written it (the engine), so it is not read back.

        Raises ContainerStateError if ``cid`` exists, SpecError for a bad
        config.json, ExecError (126/127) when the program cannot run,
        KetchError/SyscallError for other failures; on any failure nothing is
        left behind (state dir removed, PID 1 gone).
        """
        import shutil

        from ketch.oci.runtime import Spec

        bundle = Path(bundle).resolve()
        if spec is None:
            try:
                spec = Spec.from_json(json.loads((bundle / "config.json").read_text()))
            except FileNotFoundError:
                raise SpecError(f"bundle {bundle}: config.json not found") from None
            except json.JSONDecodeError as e:
                raise SpecError(f"bundle {bundle}: config.json is not valid JSON: {e}") from None
        rootfs = spec.root.path if spec.root.path.startswith("/") else str(bundle / spec.root.path)
        if not os.path.isdir(rootfs):
            raise SpecError(f"root.path {rootfs} is not a directory")
        d = self._dir(cid)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            d.mkdir(mode=0o711)
        except FileExistsError:
            raise ContainerStateError(f"container with id {cid} already exists") from None
        state = State(id=cid, bundle=str(bundle), rootfs=rootfs, annotations=dict(spec.annotations),
                      created=time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()), dir=d,
                      hooks={k: [h.to_json() for h in spec.hooks[k]]
                             for k in ("poststart", "poststop") if spec.hooks.get(k)} or None)
        cg = None
        try:
            state.save()
            os.mkfifo(state.fifo, 0o622)
            cg = self._make_cgroup(cid, spec)
            state.cgroup = cg.to_json()
            state.save()
            pid = self._spawn(spec, rootfs, state, stdio, console_socket, subreaper, cg, preserve_fds)
            state.pid = pid
            state.start_time = proc_start_time(pid)
            state.save()
            if pid_file:
                tmp = pid_file + ".tmp"
                with open(tmp, "w") as f:
                    f.write(str(pid))
                os.replace(tmp, pid_file)
        except BaseException:
            if state.pid:
                _kill_quietly(state.pid)
            if cg is not None:
                try:
                    cg.destroy()
                except KetchError:
                    pass
            shutil.rmtree(d, ignore_errors=True)
            raise
        return state

    @staticmethod
    def _make_cgroup(cid: str, spec: Spec):
        """Create the container's cgroup with its limits, before any of its
        processes exists (see :mod:`ketch.runtime.cgroups`)."""
        from ketch.runtime.cgroups import DEFAULT_ALLOWED_DEVICES, Cgroup

        cg = Cgroup.for_container(spec.linux.cgroupsPath, cid)
        devs = tuple(("c" if d.type == "u" else d.type, d.major, d.minor, "rwm")
                     for d in spec.linux.devices if d.type in ("c", "u", "b"))
        cg.create(spec.linux.resources, devs + DEFAULT_ALLOWED_DEVICES)
        return cg

    def _spawn(self, spec: Spec, rootfs: str, state: State, stdio: tuple[int, int, int],
               console: socket.socket | None, subreaper: bool, cg=None, preserve_fds: int = 0) -> int:
        """Fork PID 1 (see :mod:`ketch.runtime.sync`); return its host PID.

        A caller that reaps PID 1 itself (``subreaper``) and asks only for new
        namespaces, none of them user or time, gets PID 1 as its direct child:
        this process points its own ``pid_for_children`` at a new PID
        namespace for that one fork and back again, and the child unshares the
        rest itself.  Otherwise an intermediate process joins and unshares,
        forks PID 1 and exits (runc's model): a user namespace must own the
        PID namespace it creates, and other callers never have PID 1 as a
        child to reap.
        """
        from ketch.runtime import sync
        from ketch.runtime.init import container_init  # imported before fork: needed after pivot_root

        flags = 0
        joins: list[tuple[str, int]] = []
        for ns in spec.linux.namespaces:
            if ns.path:
                joins.append((ns.path, os.open(ns.path, os.O_RDONLY | os.O_CLOEXEC)))
            else:
                flags |= NAMESPACE_FLAGS[ns.type]
        new_netns = bool(flags & sc.CLONE_NEWNET)
        direct = subreaper and not joins and not flags & (sc.CLONE_NEWUSER | sc.CLONE_NEWTIME)
        fifo_fd = os.open(state.fifo, os.O_PATH | os.O_CLOEXEC)
        parent, child = sync.Channel.pair()
        if subreaper:
            sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        sys.stdout.flush()
        sys.stderr.flush()
        if direct:
            pid = self._fork_direct(flags, stdio, parent, child, cg,
                                    lambda: container_init(spec, rootfs, child, fifo_fd, console, new_netns, preserve_fds, state))
            inter = None
        else:
            pid = None
            inter = os.fork()
        if inter == 0:  # ---------------------------------------- intermediate
            try:
                parent.close()
                if cg is not None:  # before any unshare/setns: the cgroup namespace is rooted here
                    cg.join(0)
                for i, fd in enumerate(stdio):
                    if fd != i:
                        os.dup2(fd, i, inheritable=True)
                for path, fd in joins:
                    try:
                        sc.setns(fd)
                    except OSError as e:
                        raise KetchError(f"joining namespace {path}: {e.strerror}") from None
                sc.unshare(flags)
                init = os.fork()
                if init == 0:  # ------------------------------------ PID 1
                    container_init(spec, rootfs, child, fifo_fd, console, new_netns, preserve_fds, state)
                child.send(sync.Pid(init))
                os._exit(0)
            except BaseException as e:  # noqa: BLE001
                try:
                    child.send(sync.Error(f"creating namespaces: {e}"))
                finally:
                    os._exit(1)
        # ------------------------------------------------------------- parent
        child.close()
        os.close(fifo_fd)
        for _, fd in joins:
            os.close(fd)
        # The intermediate's Pid and the init's Ready/Error share the channel and
        # may arrive in either order (the init can be scheduled first).
        final: sync.Message | None = None
        hooks_due = False
        try:
            try:
                while pid is None or final is None:
                    msg = parent.recv()
                    if msg is None:  # every sender gone
                        break
                    if isinstance(msg, sync.Pid) and pid is None:
                        pid = msg.pid
                    elif isinstance(msg, (sync.Ready, sync.Error)) and final is None:
                        final = msg
                    elif isinstance(msg, sync.Hooks) and not hooks_due:
                        hooks_due = True
                    else:
                        raise KetchError(f"container init: unexpected message {msg!r}")
                    if hooks_due and pid is not None:  # the init waits for us, between its mounts and pivot_root
                        hooks_due = False
                        self._runtime_hooks(spec, state, pid)
                        parent.send(sync.Resume())
            except BaseException:
                if pid is not None:
                    _kill_quietly(pid)
                    if subreaper:
                        _reap(pid)
                raise
            finally:
                if inter is not None:
                    os.waitpid(inter, 0)
            if pid is not None and isinstance(final, sync.Ready):
                return pid
            if pid is not None and subreaper:
                _reap(pid)
            if isinstance(final, sync.Error):
                sync.raise_error(final)
            raise KetchError("container init exited before it was ready")
        finally:
            parent.close()

    @staticmethod
    def _runtime_hooks(spec: Spec, state: State, pid: int) -> None:
        """prestart, then createRuntime hooks, in the runtime's namespaces."""
        from ketch.runtime import hooks
        body = state.hook_state("creating", pid)
        for name in ("prestart", "createRuntime"):
            hooks.run(spec.hooks.get(name, ()), name, body)

    @staticmethod
    def _fork_direct(flags: int, stdio: tuple[int, int, int], parent, child, cg, init) -> int:
        """Fork PID 1 as our own child (see :meth:`_spawn`); the child calls ``init()``,
        which never returns.  Returns the child's PID.

        For the fork, this process's ``pid_for_children`` is a new PID
        namespace: no other thread of ours may fork meanwhile (the engine has
        none).
        """
        from ketch.runtime import sync

        own_pidns = None
        if flags & sc.CLONE_NEWPID:
            own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.unshare(sc.CLONE_NEWPID)  # our next child is PID 1 of a new namespace
            except BaseException:
                os.close(own_pidns)
                raise
        pid = -1
        try:
            pid = os.fork()
        finally:
            if own_pidns is not None and pid != 0:
                # Parent: children of ours are born in our own PID namespace again.
                sc.setns(own_pidns, sc.CLONE_NEWPID)
                os.close(own_pidns)
        if pid:
            return pid
        # ------------------------------------------------------------------ PID 1
        code = 1
        try:
            if own_pidns is not None:
                os.close(own_pidns)
            parent.close()
            if cg is not None:  # before unshare(CLONE_NEWCGROUP): the namespace is rooted here
                cg.join(0)
            for i, fd in enumerate(stdio):
                if fd != i:
                    os.dup2(fd, i, inheritable=True)
            sc.unshare(flags & ~sc.CLONE_NEWPID)
            code = 125
            init()
        except BaseException as e:  # noqa: BLE001
            if code == 1:
                try:
                    child.send(sync.Error(f"creating namespaces: {e}"))
                except OSError:
                    pass
        finally:
            os._exit(code)

    # ------------------------------------------------------------------ start
    def start(self, cid: str) -> State:
        """Release a created container into its program (runtime.md "start").

        Raises ContainerNotFound, or ContainerStateError unless ``created``.
        """
        import select

        state = self.load(cid)
        st = state.status()
        if not st.can_start():
            raise ContainerStateError(f"cannot start a container that is {st.value}: {cid}")
        # Non-blocking open plus a poll that notices PID 1 dying, instead of a
        # blocking open that would wait forever for a writer that is gone.
        fd = os.open(state.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        data = b""
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while True:
                if poller.poll(100):
                    data = os.read(fd, 1)
                    break
                if state.status() == Status.STOPPED:
                    break
        finally:
            os.close(fd)
        state.fifo.unlink(missing_ok=True)
        if data != b"0":
            raise ContainerStateError(f"container {cid} exited before it could start")
        state.run_hooks("poststart", "running")
        return state

    # ------------------------------------------------------------------ kill, delete
    def kill(self, cid: str, sig: int = signal.SIGTERM, all: bool = False) -> None:
        """Send ``sig`` to PID 1, or with ``all`` to every process of the
        container's cgroup.  Raises ContainerStateError unless created,
        running or paused."""
        state = self.load(cid)
        st = state.status()
        if not st.can_kill():
            raise ContainerStateError(f"cannot kill a container that is {st.value}: {cid}")
        cg = state.cgroups()
        if all and cg is not None:
            cg.kill_all(sig)
        else:
            os.kill(state.pid, sig)

    def pids(self, cid: str) -> list[int] | None:
        """Host PIDs of the container's processes from its cgroup (PID 1
        first), or None when it has no cgroup."""
        state = self.load(cid)
        cg = state.cgroups()
        if cg is None:
            return None
        if state.status() in (Status.STOPPED, Status.CREATING):
            return []
        pids = cg.pids()
        pids.sort(key=lambda p: (p != state.pid, p))
        return pids

    def pause(self, cid: str) -> None:
        """Freeze every process of the container (its freezer cgroup)."""
        state = self.load(cid)
        st = state.status()
        if not st.can_pause():
            raise ContainerStateError(f"cannot pause a container that is {st.value}: {cid}")
        cg = state.cgroups()
        if cg is None:
            raise ContainerStateError(f"cannot pause container {cid}: it has no cgroup")
        cg.freeze(True)

    def resume(self, cid: str) -> None:
        """Thaw a paused container."""
        state = self.load(cid)
        st = state.status()
        if not st.can_resume():
            raise ContainerStateError(f"cannot resume a container that is {st.value}: {cid}")
        state.cgroups().freeze(False)

    def delete(self, cid: str, force: bool = False) -> None:
        """Remove the container's runtime state (runtime.md "delete").

        A container that is not stopped is refused unless ``force``, which
        SIGKILLs PID 1 (and so its whole PID namespace) first.  Idempotent
        for a missing container only when ``force``.
        """
        import shutil

        try:
            state = self.load(cid)
        except ContainerNotFound:
            if force:
                shutil.rmtree(self._dir(cid), ignore_errors=True)
                return
            raise
        st = state.status()
        cg = state.cgroups()
        if not st.can_delete():
            if not force:
                raise ContainerStateError(f"cannot delete container {cid} that is not stopped: {st.value}")
            if cg is not None:
                cg.kill_all(signal.SIGKILL)
                if cg.frozen():
                    cg.freeze(False)
            _kill_quietly(state.pid)
            for _ in range(200):
                if state.status() == Status.STOPPED:
                    break
                time.sleep(0.01)
        if cg is not None:
            cg.destroy()
        state.run_hooks("poststop", "stopped")
        shutil.rmtree(state.dir, ignore_errors=True)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def wait_exit_code(pid: int) -> int:
    """waitpid(2) on our child ``pid``; Docker's exit code: the status, or 128+N for signal N."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
