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

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

from ketch.engine.store import ContainerRecord, ContainerStore, now_iso, proc_start_time
from ketch.errors import ImageNotFound
from ketch.paths import Paths

TYPE_CHECKING = False  # typing is not imported at run time: start-up is most of `run`
if TYPE_CHECKING:
    from typing import Any

# Signals `ketch run` passes on to the container (Docker's --sig-proxy).
PROXIED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT, signal.SIGALRM)


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
        from ketch.engine.spec import (build_spec, create_bind_sources, default_hostname, make_hosts_files,
                                       make_workdir)

        try:
            image = self.images.resolve(image_ref)
        except ImageNotFound:
            # The registry client (hashlib, threads, auth) only when there is something to pull.
            from ketch.image.registry import resolve_or_pull
            image = resolve_or_pull(self.images, image_ref)  # pulls, as Docker does, when absent
        from ketch.engine.lifecycle import host_config, record_fields

        rec = self.containers.create(image.id, image_ref, opts.name, host_config=host_config(opts))
        self.created_id = rec.Id
        cdir = self.containers.dir(rec.Id)
        rootfs = cdir / "rootfs"
        mounted = detached = False
        code: int | None = None
        try:
            lowers = self.snapshots.ensure_image(self.images.content, image)
            upper, work = self.snapshots.prepare_rw(rec.Id)
            rootfs.mkdir()
            # Before private_mounts: the network namespace is pinned by a mount on the host.
            from ketch.network import attach_container
            net = attach_container(self.paths, rec.Id, cdir, rec.Name, opts, image.config.config.ExposedPorts)
            private_mounts()
            self.snapshots.mount(lowers, upper, work, rootfs, volatile=bool(opts.rm))
            mounted = True
            hostname = opts.hostname or default_hostname(rec.Id)
            hosts = make_hosts_files(cdir, hostname, ip=net.ip or None)
            net.joined(self.paths, cdir)
            spec = build_spec(image.config, opts, container_id=rec.Id, rootfs=str(rootfs),
                              hosts_files=hosts, host_env=os.environ)
            spec = net.apply(spec)
            create_bind_sources(opts)
            make_workdir(str(rootfs), spec.process.cwd)
            if spec.process.terminal:
                from ketch.runtime.tty import window_size
                size = window_size(0) or window_size(1)
                if size:
                    spec = spec.with_(process=replace(spec.process, consoleSize=size))
            argv, env = list(spec.process.args or ()), list(spec.process.env or ())
            if opts.init:
                from ketch.engine.lifecycle import with_init
                spec = with_init(spec)
            (cdir / "config.json").write_text(json.dumps(spec.to_json(), indent=1))
            fields = record_fields(image_ref, image.config, spec, opts)
            if opts.detach:
                # The supervisor creates, starts and reaps the container; it keeps
                # this process's mount namespace (the overlay) when we exit.
                from ketch.engine.supervisor import launch
                self.containers.update(rec.Id, **fields)
                launch(self, rec, spec)
                detached = True
                return 0
            code = self._run_process(rec, cdir, spec, opts, fields)
            if code in (132, 139, 159):     # SIGILL, SIGSEGV, SIGSYS: say what is likely wrong
                explain_exit(self.paths, image_ref, image, argv, env, rootfs, code)
        finally:
            if not detached:
                if mounted:
                    self.snapshots.unmount(rootfs)
                self.runtime.delete(rec.Id, force=True)
                from ketch.network import detach_container
                detach_container(self.paths, cdir, warn=True)
                if opts.rm or code is None:
                    self._remove_files(rec.Id)
        return code

    def _run_process(self, rec: ContainerRecord, bundle: Path, spec: Any, opts: Any, fields: dict) -> int:
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
        # Signals go to the container with -t too: Docker's daemon outlives a
        # client killed by SIGTERM or SIGHUP (a closed terminal), ketch has no
        # daemon, so the container hears them instead of being orphaned.
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
            me = os.getpid()
            self.containers.update(rec.Id, Status="running", Pid=state.pid, PidStart=state.start_time,
                                   MonitorPid=me, MonitorStart=proc_start_time(me), StartedAt=now_iso(),
                                   **fields)
            if master is not None:
                relay(master, 0 if opts.interactive else None, 1)
                os.close(master)
            code = wait_exit_code(state.pid)
        finally:
            for s, h in saved.items():
                signal.signal(s, h)
        if not opts.rm:
            self.containers.update(rec.Id, Status="exited", ExitCode=code, Pid=0, PidStart=None,
                                   FinishedAt=now_iso())
        return code

    def _remove_files(self, cid: str) -> None:
        import shutil
        self.snapshots.remove_rw(cid)
        shutil.rmtree(self.containers.dir(cid), ignore_errors=True)
        self.containers.delete(cid)

    # ------------------------------------------------------------------ rm
    def remove(self, ref: str, force: bool = False) -> str:
        """``docker rm``: remove a stopped container (running: only with
        ``force``, which kills it).  Returns the name/ID as given.
        Raises ContainerNotFound, ContainerStateError."""
        from ketch.engine.lifecycle import remove
        remove(self, ref, force)
        return ref


def explain_exit(paths: Paths, image_ref: str, image: Any, argv: list, env: list, rootfs: Path,
                 code: int) -> None:
    """Print on stderr why the entrypoint likely died by a signal (issue 7): the compat
    analysis of that one binary, imported only now so that a normal run never loads it.
    Never raises: the container's exit code is what matters."""
    import sys
    try:
        from ketch.compat.explain import explain_exit as explain
        lines = explain(code, image_ref, argv, env, rootfs, paths,
                        list(reversed(image.chain_ids)))
    except Exception:
        name = {132: "SIGILL", 139: "SIGSEGV", 159: "SIGSYS"}[code]
        lines = [f"ketch: the container's process was killed by {name} (exit {code});"
                 f" run 'ketch compat {image_ref}' to check the image's binaries against this kernel"]
    try:
        sys.stdout.flush()
        sys.stderr.write("".join(line + "\n" for line in lines))
        sys.stderr.flush()
    except OSError:
        pass


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

