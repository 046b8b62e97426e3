"""Containers of the engine: records, names, and ``run`` from image to exit code.

A container is a directory ``paths.containers/<id>/`` holding its record
(``container.json``, Docker-shaped), its OCI bundle (``config.json`` and the
``rootfs`` mount point) and the files bound over ``/etc/hosts``,
``/etc/hostname`` and ``/etc/resolv.conf``.  Its writable layer is the
snapshotter's ``rw`` directory of the same key.  The overlay rootfs is
mounted only while the container runs.

The data flow of :func:`run` is DESIGN.md's: resolve the image → unpack
missing layers into snapshots → writable snapshot → mount the overlay →
spec builder writes config.json → runtime create/start → wait → clean up.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ketch.errors import ContainerNotFound, ContainerStateError, ImageNotFound
from ketch.paths import Paths

TYPE_CHECKING = False  # typing is not imported at run time: start-up is most of `run`
if TYPE_CHECKING:
    from typing import Any, Iterator

_ADJECTIVES = ("admiring", "brave", "calm", "dazzling", "eager", "focused", "gallant", "happy",
               "jolly", "keen", "loving", "modest", "nifty", "optimistic", "quirky", "serene",
               "tender", "upbeat", "vibrant", "wizardly", "youthful", "zealous")
_NOUNS = ("archimedes", "babbage", "curie", "darwin", "euler", "fermi", "gauss", "hopper",
          "kepler", "lovelace", "meitner", "newton", "noether", "pascal", "ritchie", "shannon",
          "thompson", "turing", "wozniak", "yalow")

# Signals `ketch run` passes on to the container (Docker's --sig-proxy).
PROXIED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGALRM)


def now_iso() -> str:
    """The current UTC time in Docker's RFC 3339 form with nanoseconds."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


@dataclass
class ContainerRecord:
    """What the engine remembers of a container (Docker's inspect fields)."""

    Id: str
    Name: str
    Image: str             # image ID (config digest)
    ImageName: str         # as the user wrote it
    Created: str
    Status: str = "created"  # created | running | exited
    ExitCode: int = 0
    Pid: int = 0
    StartedAt: str = ""
    FinishedAt: str = ""
    AutoRemove: bool = False

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ContainerStore:
    """Container records under ``paths.containers``; names are unique (flock)."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.root = paths.containers

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def dir(self, cid: str) -> Path:
        return self.root / cid

    def create(self, image_id: str, image_name: str, name: str | None, auto_remove: bool) -> ContainerRecord:
        """Reserve an ID and a unique name, write the record.
        Raises ContainerStateError (Docker's "Conflict") if ``name`` is taken."""
        with self._lock():
            taken = {r.Name: r.Id for r in self.list()}
            if name:
                if name in taken:
                    raise ContainerStateError(
                        f'Conflict. The container name "/{name}" is already in use by container '
                        f'"{taken[name]}". You have to remove (or rename) that container to be able to reuse that name.')
            else:
                name = _random_name(set(taken))
            cid = os.urandom(32).hex()
            self.dir(cid).mkdir(mode=0o711)
            rec = ContainerRecord(Id=cid, Name=name, Image=image_id, ImageName=image_name,
                                  Created=now_iso(), AutoRemove=auto_remove)
            self.save(rec)
            return rec

    def save(self, rec: ContainerRecord) -> None:
        """Replace the record (rename of a temp file; not fsynced: a record is
        rewritten at every state change and rebuilt from nothing on loss)."""
        d = self.dir(rec.Id)
        tmp = d / "container.json.tmp"
        tmp.write_text(json.dumps(rec.to_json(), indent=1))
        os.replace(tmp, d / "container.json")

    def load(self, cid: str) -> ContainerRecord:
        try:
            return ContainerRecord(**json.loads((self.dir(cid) / "container.json").read_text()))
        except (FileNotFoundError, NotADirectoryError):
            raise ContainerNotFound(f"No such container: {cid}") from None

    def list(self) -> list[ContainerRecord]:
        out = []
        if self.root.is_dir():
            for d in self.root.iterdir():
                try:
                    out.append(self.load(d.name))
                except (ContainerNotFound, ValueError, TypeError):
                    continue
        return sorted(out, key=lambda r: r.Created, reverse=True)

    def find(self, ref: str) -> ContainerRecord:
        """By full ID, unique ID prefix, or name (Docker's lookup order).
        Raises ContainerNotFound."""
        recs = self.list()
        for r in recs:
            if r.Id == ref or r.Name == ref.lstrip("/"):
                return r
        hits = [r for r in recs if len(ref) >= 1 and r.Id.startswith(ref)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ContainerStateError(f"multiple containers match the prefix {ref}")
        raise ContainerNotFound(f"No such container: {ref}")


def _random_name(taken: set[str]) -> str:
    import random
    rng = random.SystemRandom()
    while True:
        name = f"{rng.choice(_ADJECTIVES)}_{rng.choice(_NOUNS)}"
        if name in taken:
            name += str(rng.randint(0, 99))
        if name not in taken:
            return name


class Engine:
    """The docker-like layer over one ``Paths``: images, snapshots, runtime."""

    def __init__(self, paths: Paths):
        from ketch.image.store import ImageStore
        from ketch.runtime.container import Runtime
        from ketch.snapshot.overlay import Snapshotter

        self.paths = paths
        self.images = ImageStore(paths)
        self.snapshots = Snapshotter(paths.snapshots)
        self.runtime = Runtime(paths.runtime_state)
        self.containers = ContainerStore(paths)

    # ------------------------------------------------------------------ run
    def run(self, image_ref: str, opts: Any) -> int:
        """``docker run`` in the foreground: returns the container's exit code
        (its own, or 128+N when killed by signal N).

        ``opts`` is a :class:`ketch.engine.options.RunOptions`.  Raises
        ImageNotFound, UsageError, SpecError, ExecError (126/127) or
        KetchError; whatever was created for the container is removed again
        on failure, and after exit when ``opts.rm``.

        The calling process moves to a private mount namespace first (see
        :func:`private_mounts`): the rootfs overlay is never visible on the
        host, and no mount survives this process and the container, even
        when both are killed with SIGKILL.
        """
        from ketch.engine.spec import build_spec, create_bind_sources, make_hosts_files, make_workdir

        try:
            image = self.images.resolve(image_ref)
        except ImageNotFound:
            # The registry client (hashlib, threads, auth) only when there is something to pull.
            from ketch.image.registry import resolve_or_pull
            image = resolve_or_pull(self.images, image_ref)  # pulls, as Docker does, when absent
        rec = self.containers.create(image.id, image_ref, opts.name, opts.rm)
        cdir = self.containers.dir(rec.Id)
        rootfs = cdir / "rootfs"
        mounted = False
        code: int | None = None
        try:
            lowers = self.snapshots.ensure_image(self.images.content, image)
            upper, work = self.snapshots.prepare_rw(rec.Id)
            rootfs.mkdir()
            private_mounts()
            self.snapshots.mount(lowers, upper, work, rootfs)
            mounted = True
            hostname = opts.hostname or rec.Id[:12]
            hosts = make_hosts_files(cdir, hostname)
            spec = build_spec(image.config, opts, container_id=rec.Id, rootfs=str(rootfs),
                              hosts_files=hosts, host_env=os.environ)
            create_bind_sources(opts)
            make_workdir(str(rootfs), spec.process.cwd)
            if spec.process.terminal:
                from ketch.runtime.tty import window_size
                size = window_size(0) or window_size(1)
                if size:
                    spec = spec.with_(process=replace(spec.process, consoleSize=size))
            (cdir / "config.json").write_text(json.dumps(spec.to_json(), indent=1))
            code = self._run_process(rec, cdir, spec, opts)
        finally:
            if mounted:
                self.snapshots.unmount(rootfs)
            self.runtime.delete(rec.Id, force=True)
            if opts.rm or code is None:
                self._remove_files(rec.Id)
        return code

    def _run_process(self, rec: ContainerRecord, bundle: Path, spec: Any, opts: Any) -> int:
        """Create, start and wait for the container's process; relay its terminal.
        ``spec`` is what ``bundle/config.json`` holds (handed over, not read back)."""
        from ketch.runtime.container import wait_exit_code

        terminal = spec.process.terminal
        stdin = 0 if opts.interactive else os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        console_parent = console_child = None
        if terminal:
            import socket

            from ketch.runtime.tty import recv_console, relay
            console_parent, console_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            state = self.runtime.create(rec.Id, bundle, stdio=(stdin, 1, 2),
                                        console_socket=console_child, subreaper=True, spec=spec)
        finally:
            if stdin != 0:
                os.close(stdin)
            if console_child is not None:
                console_child.close()
        master = recv_console(console_parent) if console_parent is not None else None
        if console_parent is not None:
            console_parent.close()
        saved = {}
        if master is None:
            def forward(sig, _frame, pid=state.pid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            saved = {s: signal.signal(s, forward) for s in PROXIED_SIGNALS}
        try:
            self.runtime.start(rec.Id)
            # Recorded once started (not before: it would still be "created"), while
            # the program already runs: this write is off the path to its execve.
            rec.Status, rec.Pid, rec.StartedAt = "running", state.pid, now_iso()
            self.containers.save(rec)
            if master is not None:
                relay(master, 0 if opts.interactive else None, 1)
                os.close(master)
            code = wait_exit_code(state.pid)
        finally:
            for s, h in saved.items():
                signal.signal(s, h)
        rec.Status, rec.ExitCode, rec.Pid, rec.FinishedAt = "exited", code, 0, now_iso()
        if not opts.rm:
            self.containers.save(rec)
        return code

    def _remove_files(self, cid: str) -> None:
        import shutil
        self.snapshots.remove_rw(cid)
        shutil.rmtree(self.containers.dir(cid), ignore_errors=True)

    # ------------------------------------------------------------------ rm
    def remove(self, ref: str, force: bool = False) -> str:
        """``docker rm``: remove a stopped container (running: only with
        ``force``, which kills it).  Returns the name/ID as given.
        Raises ContainerNotFound, ContainerStateError."""
        rec = self.containers.find(ref)
        if rec.Status == "running" and rec.Pid and _alive(rec.Pid):
            if not force:
                raise ContainerStateError(
                    f"You cannot remove a running container {rec.Id}. Stop the container before "
                    "attempting removal or force remove")
            try:
                os.kill(rec.Pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.runtime.delete(rec.Id, force=True)
        rootfs = self.containers.dir(rec.Id) / "rootfs"
        self.snapshots.unmount(rootfs)
        self._remove_files(rec.Id)
        return ref


_private = False


def private_mounts() -> None:
    """Move this process to a new mount namespace whose mounts receive the
    host's mount events but never send any back (``unshare(CLONE_NEWNS)``,
    then ``/`` recursively ``MS_SLAVE``; mount_namespaces(7)).

    Mounts made afterwards (the container's overlay root) exist only for this
    process and its children, so the kernel removes them when the last of
    those exits — a ``kill -9`` of ketch cannot leak them.  Idempotent per
    process.  Raises SyscallError.
    """
    global _private
    if _private:
        return
    from ketch.linux import syscalls as sc

    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_SLAVE)
    _private = True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
