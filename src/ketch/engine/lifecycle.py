"""The lifecycle commands of the engine: start, stop, kill, restart, wait, rm,
inspect, top, prune — and the record fields ``run`` writes.

Every function takes the :class:`~ketch.engine.containers.Engine` and a
container reference (full ID, name, or unique ID prefix).  The status used
is always :meth:`ContainerRecord.state` — derived from the record *and*
whether the container's PID 1 and its monitor still live — so the commands
stay right after any ketch process was killed.
"""

from __future__ import annotations

import os
import signal
import time

from ketch.engine.store import ContainerRecord, now_iso, proc_start_time
from ketch.errors import ContainerStateError, KetchError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ketch.engine.containers import Engine

DEFAULT_STOP_TIMEOUT = 10
INIT_PATH = "/sbin/docker-init"  # where Docker mounts its init
# Static builds first: the init runs on the image's userland, not the host's.
INIT_BINARIES = ("/usr/bin/tini-static", "/usr/bin/catatonit", "/usr/libexec/podman/catatonit")


# ---------------------------------------------------------------- record fields of `run`

def host_config(opts: Any) -> dict:
    """Docker's HostConfig for ``opts`` (:class:`~ketch.engine.options.RunOptions`)."""
    binds = []
    tmpfs = {}
    for m in opts.user_mounts():
        if m.type == "bind":
            binds.append(f"{m.source}:{m.target}" + (":ro" if m.read_only else ""))
        elif m.type == "tmpfs":
            tmpfs[m.target] = ",".join(m.tmpfs_options)
    name, count = opts.restart
    hc = {"AutoRemove": bool(opts.rm), "Binds": binds or None,
          "RestartPolicy": {"Name": name, "MaximumRetryCount": count},
          "Init": bool(opts.init), "ReadonlyRootfs": bool(opts.read_only), "Tmpfs": tmpfs or None}
    # What `start` needs to attach the network again (ketch.network).
    hc["NetworkMode"] = getattr(opts, "network", None) or "bridge"
    hc["PublishAllPorts"] = bool(getattr(opts, "publish_all", False))
    hc["KetchPublish"] = list(getattr(opts, "publish", ()) or ())
    return hc


def record_fields(image_ref: str, image_config: Any, spec: Any, opts: Any) -> dict:
    """The Config and Mounts of the record, once the spec is built."""
    cfg = image_config.config
    if opts.entrypoint is None:
        entrypoint = list(cfg.Entrypoint) if cfg.Entrypoint else None
        cmd = list(opts.command) if opts.command else (list(cfg.Cmd) if cfg.Cmd else None)
    else:
        entrypoint = [opts.entrypoint] if opts.entrypoint else None
        cmd = list(opts.command) if opts.command else None
    attach = not opts.detach
    config = {
        "Hostname": spec.hostname, "Domainname": "", "User": opts.user or cfg.User,
        "AttachStdin": attach and opts.interactive, "AttachStdout": attach, "AttachStderr": attach,
        "Tty": bool(opts.tty), "OpenStdin": bool(opts.interactive), "StdinOnce": attach and opts.interactive,
        "Env": list(spec.process.env), "Cmd": cmd, "Image": image_ref,
        "Volumes": {v: {} for v in cfg.Volumes} or None, "WorkingDir": spec.process.cwd if
        (opts.workdir or cfg.WorkingDir) else "", "Entrypoint": entrypoint, "Labels": dict(cfg.Labels),
    }
    if cfg.StopSignal:
        config["StopSignal"] = cfg.StopSignal
    mounts = []
    for m in opts.user_mounts():
        if m.type == "bind":
            mounts.append({"Type": "bind", "Source": m.source, "Destination": m.target,
                           "Mode": "ro" if m.read_only else "", "RW": not m.read_only,
                           "Propagation": m.propagation})
        else:
            mounts.append({"Type": "tmpfs", "Source": "", "Destination": m.target, "Mode": "",
                           "RW": not m.read_only, "Propagation": ""})
    return {"Config": config, "Mounts": mounts}


def with_init(spec: Any) -> Any:
    """``--init``: a static init (Debian's ``tini``, else ``catatonit``) bound
    read-only at ``/sbin/docker-init`` runs the command as its child, as
    Docker does with docker-init.  Raises KetchError when none is installed."""
    from dataclasses import replace

    from ketch.oci import runtime as oci

    path = next((p for p in INIT_BINARIES if os.access(p, os.X_OK)), None)
    if path is None:
        raise KetchError("--init: no static init binary found (install Debian's tini: apt-get install tini)")
    mount = oci.Mount(destination=INIT_PATH, type="bind", source=path, options=("bind", "ro", "nosuid", "nodev"))
    process = replace(spec.process, args=(INIT_PATH, "--", *spec.process.args))
    return spec.with_(process=process, mounts=(*spec.mounts, mount))


# ---------------------------------------------------------------- signals and waiting

def parse_signal(value: str | int) -> int:
    """``KILL``, ``SIGKILL``, ``9`` → 9 (Docker's signal.ParseSignal).  Raises UsageError."""
    from ketch.linux.signals import parse_signal as parse
    try:
        return parse(str(value))
    except ValueError:
        raise UsageError(f"Invalid signal: {value}") from None


def wait_gone(pid: int, start: int | None, timeout: float) -> bool:
    """Wait until process ``pid`` (started at ``start``) is gone; True if it is."""
    end = time.monotonic() + timeout
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return True
    try:
        import select
        if proc_start_time(pid) != start:
            return True
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return proc_start_time(pid) != start
            if p.poll(min(left, 0.1) * 1000) or proc_start_time(pid) != start:
                return True  # exited (a zombie counts: its parent reaps it)
    finally:
        os.close(pidfd)


def _signal(rec: ContainerRecord, sig: int) -> bool:
    """Send ``sig`` to the container's PID 1 if it is still that process."""
    if not rec.pid1_alive():
        return False
    try:
        os.kill(rec.Pid, sig)
        return True
    except ProcessLookupError:
        return False


# ---------------------------------------------------------------- commands

def kill(engine: Engine, ref: str, sig: int = signal.SIGKILL) -> ContainerRecord:
    """``docker kill``: ``sig`` to PID 1.  A kill by SIGKILL or the stop signal
    counts as stopped by the user (no restart).  Raises ContainerStateError
    when the container is not running."""
    rec = engine.containers.find(ref)
    if not rec.running:
        raise ContainerStateError(f"Cannot kill container: {ref}: Container {rec.Id} is not running")
    if sig in (signal.SIGKILL, stop_signal(rec)):
        engine.containers.update(rec.Id, ManuallyStopped=True)
    if not _signal(rec, sig) and rec.state()[0] != "restarting":
        raise ContainerStateError(f"Cannot kill container: {ref}: Container {rec.Id} is not running")
    return rec


def stop_signal(rec: ContainerRecord) -> int:
    s = rec.Config.get("StopSignal")
    try:
        return parse_signal(s) if s else signal.SIGTERM
    except UsageError:
        return signal.SIGTERM


def stop(engine: Engine, ref: str, timeout: float | None = None, sig: int | None = None) -> ContainerRecord:
    """``docker stop``: the image's StopSignal (or SIGTERM) to PID 1, SIGKILL
    after ``timeout`` s (default 10; the whole PID namespace dies with PID 1);
    returns once the exit is recorded.  Stopping a stopped container is no
    error.  No restart policy applies afterwards."""
    rec = engine.containers.find(ref)
    engine.containers.update(rec.Id, ManuallyStopped=True)
    if not rec.running:
        return rec
    timeout = DEFAULT_STOP_TIMEOUT if timeout is None else timeout
    if timeout < 0:
        timeout = 3600 * 24 * 365  # Docker: -1 waits forever
    pid, start = rec.Pid, rec.PidStart
    if _signal(rec, sig or stop_signal(rec)) and not wait_gone(pid, start, timeout):
        _signal(rec, signal.SIGKILL)
        wait_gone(pid, start, 10)
    return _wait_monitor(engine, rec)


def _wait_monitor(engine: Engine, rec: ContainerRecord, timeout: float = 10.0) -> ContainerRecord:
    """After PID 1 ended: the record once its monitor has recorded the exit and
    finished its clean-up (network, mounts; for --rm the record), so a
    following ``start`` cannot race it.  A monitor in restart back-off sees
    ManuallyStopped and ends."""
    try:
        cur = engine.containers.load(rec.Id)
    except KetchError:
        return rec
    if cur.MonitorPid:
        wait_gone(cur.MonitorPid, cur.MonitorStart, timeout)
    try:
        return engine.containers.load(rec.Id)
    except KetchError:
        return rec  # --rm: removed by its monitor


def start(engine: Engine, ref: str) -> ContainerRecord:
    """``docker start``: a created or exited container runs again, under a new
    supervisor, on its stored ``config.json`` and writable layer.  A running
    container is left alone."""
    rec = engine.containers.find(ref)
    if rec.running:
        return rec
    if rec.Status == "removing":
        raise ContainerStateError(f"container {rec.Id} is marked for removal and cannot be started")
    if rec.monitor_alive():
        wait_gone(rec.MonitorPid, rec.MonitorStart, 10)  # the last run's clean-up
    engine.containers.update(rec.Id, ManuallyStopped=False, Error="")
    _launch_existing(engine, rec)
    return engine.containers.load(rec.Id)


def _launch_existing(engine: Engine, rec: ContainerRecord) -> None:
    from ketch.engine.containers import private_mounts
    from ketch.engine.supervisor import launch

    cdir = engine.containers.dir(rec.Id)
    rootfs = cdir / "rootfs"
    image = engine.images.resolve(rec.Image)
    lowers = engine.snapshots.ensure_image(engine.images.content, image)
    upper, work = engine.snapshots.prepare_rw(rec.Id)
    _attach_network(engine, rec, image)  # in the host's mount namespace
    private_mounts()
    engine.snapshots.unmount(rootfs)  # a stale mount of this namespace (start after start in one process)
    engine.snapshots.mount(lowers, upper, work, rootfs, volatile=bool(rec.HostConfig.get("AutoRemove")))
    try:
        launch(engine, rec)
    except BaseException as e:
        engine.snapshots.unmount(rootfs)
        detach_network(engine.paths, cdir)
        code = getattr(e, "exit_code", 125)
        engine.containers.update(rec.Id, Status="exited", ExitCode=code, Error=str(e), FinishedAt=now_iso())
        raise
    # The supervisor holds this mount namespace now; this process just leaves it.


def _attach_network(engine: Engine, rec: ContainerRecord, image) -> None:
    """The network again, as ``run`` set it up (its netns path in config.json
    is the same: ``<runroot>/netns/<id>``); a no-op for none/host."""
    hc = rec.HostConfig
    mode = hc.get("NetworkMode") or "bridge"
    if mode in ("none", "host"):
        return
    try:
        from ketch.network import attach_container
    except ImportError:  # an engine without networking
        return
    from ketch.engine.options import RunOptions
    from ketch.engine.spec import default_hostname, make_hosts_files

    cdir = engine.containers.dir(rec.Id)
    detach_network(engine.paths, cdir)  # what a crash may have left
    opts = RunOptions(network=mode, publish=tuple(hc.get("KetchPublish") or ()),
                      publish_all=bool(hc.get("PublishAllPorts")))
    net = attach_container(engine.paths, rec.Id, cdir, rec.Name, opts, image.config.config.ExposedPorts)
    make_hosts_files(cdir, rec.Config.get("Hostname") or default_hostname(rec.Id), ip=net.ip or None)
    net.joined(engine.paths, cdir)


def detach_network(paths, cdir) -> None:
    """CNI DEL and the netns unpinned (:func:`ketch.network.detach_container`);
    errors are printed, never raised: clean-up goes on."""
    try:
        from ketch.network import detach_container
    except ImportError:  # an engine without networking
        return
    try:
        detach_container(paths, cdir, warn=True)
    except Exception as e:  # noqa: BLE001
        import sys
        print(f"ketch: warning: network clean-up: {e}", file=sys.stderr)


def restart(engine: Engine, ref: str, timeout: float | None = None) -> ContainerRecord:
    stop(engine, ref, timeout)
    return start(engine, ref)


def wait(engine: Engine, ref: str) -> int:
    """``docker wait``: block until the container is not running; its exit code."""
    rec = engine.containers.find(ref)
    while True:
        try:
            cur = engine.containers.load(rec.Id)
        except KetchError:
            return rec.ExitCode if rec.Status == "exited" else 0
        st, code = cur.state()
        if st not in ("running", "restarting"):
            return code
        if st == "running" and cur.pid1_alive():
            wait_gone(cur.Pid, cur.PidStart, 3600)
        else:
            time.sleep(0.02)
        rec = cur


def remove(engine: Engine, ref: str, force: bool = False) -> ContainerRecord:
    """``docker rm [-f]``: everything of the container — its processes (with
    ``force``), supervisor, runtime state, mounts, writable layer, files,
    record.  Raises ContainerNotFound, ContainerStateError (running, no force)."""
    import shutil

    rec = engine.containers.find(ref)
    if rec.running and not force:
        raise ContainerStateError(
            f"You cannot remove a running container {rec.Id}. Stop the container before "
            "attempting removal or force remove")
    engine.containers.update(rec.Id, Status="removing", ManuallyStopped=True)
    detached = not rec.Config.get("AttachStdout", True)
    if detached and rec.monitor_alive():
        # Its supervisor would clean up too: end it first, then do it all here.
        try:
            os.kill(rec.MonitorPid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_gone(rec.MonitorPid, rec.MonitorStart, 10)
    if _signal(rec, signal.SIGKILL):
        wait_gone(rec.Pid, rec.PidStart, 10)
    if not detached and rec.monitor_alive():
        wait_gone(rec.MonitorPid, rec.MonitorStart, 10)  # the foreground `run` ends and cleans up
    engine.runtime.delete(rec.Id, force=True)
    cdir = engine.containers.dir(rec.Id)
    detach_network(engine.paths, cdir)  # CNI DEL, netns unpinned (after a kill -9 of `run` too)
    engine.snapshots.unmount(cdir / "rootfs")  # only mounted in a private namespace, normally
    engine.snapshots.remove_rw(rec.Id)
    shutil.rmtree(cdir, ignore_errors=True)
    engine.containers.delete(rec.Id)
    return rec


def prune(engine: Engine) -> list[str]:
    """``docker container prune``: remove every stopped container; their IDs."""
    out = []
    for rec in engine.containers.list():
        if rec.state()[0] in ("exited", "created") and not rec.monitor_alive():
            try:
                remove(engine, rec.Id)
                out.append(rec.Id)
            except KetchError:
                continue
    return out


# ---------------------------------------------------------------- inspect, top

def inspect(engine: Engine, rec: ContainerRecord) -> dict:
    """Docker-shaped ``inspect`` document of ``rec``."""
    status, code = rec.state()
    cdir = engine.containers.dir(rec.Id)
    args = _process_args(cdir)
    return {
        "Id": rec.Id,
        "Created": rec.Created,
        "Path": args[0] if args else "",
        "Args": args[1:],
        "State": {
            "Status": status, "Running": status in ("running", "restarting"),
            "Paused": False, "Restarting": status == "restarting", "OOMKilled": rec.OOMKilled,
            "Dead": False, "Pid": rec.Pid if rec.pid1_alive() else 0, "ExitCode": code, "Error": rec.Error,
            "StartedAt": rec.StartedAt or "0001-01-01T00:00:00Z",
            "FinishedAt": rec.FinishedAt or "0001-01-01T00:00:00Z",
        },
        "Image": rec.Image,
        "ResolvConfPath": str(cdir / "resolv.conf"),
        "HostnamePath": str(cdir / "hostname"),
        "HostsPath": str(cdir / "hosts"),
        "LogPath": str(engine.containers.log_path(rec.Id)),
        "Name": "/" + rec.Name,
        "RestartCount": rec.RestartCount,
        "Driver": "overlay",
        "Platform": "linux",
        "HostConfig": {"LogConfig": {"Type": "json-file", "Config": {}}, **rec.HostConfig},
        "Mounts": rec.Mounts,
        "Config": rec.Config,
    }


def _process_args(cdir) -> list[str]:
    import json
    try:
        with open(cdir / "config.json") as f:
            return list(json.load(f)["process"]["args"])
    except (OSError, ValueError, KeyError):
        return []


def container_pids(pid1: int) -> list[int]:
    """Host PIDs of every process in the PID namespace of ``pid1`` (walks /proc)."""
    try:
        ns = os.readlink(f"/proc/{pid1}/ns/pid")
    except OSError:
        return []
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink(f"/proc/{d}/ns/pid") == ns:
                    out.append(int(d))
            except OSError:
                continue
    return sorted(out)


def top(engine: Engine, ref: str, ps_args: list[str]) -> tuple[list[str], list[list[str]]]:
    """``docker top``: the host's ``ps`` (default ``-ef``) rows of the
    container's processes: (titles, rows)."""
    import subprocess

    rec = engine.containers.find(ref)
    if not rec.pid1_alive():
        raise ContainerStateError(f"Container {rec.Id} is not running")
    pids = set(container_pids(rec.Pid))
    p = subprocess.run(["ps", *(ps_args or ["-ef"])], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise KetchError(f"Error running ps: {p.stderr.strip()}")
    lines = p.stdout.splitlines()
    titles = lines[0].split()
    if "PID" not in titles:
        raise KetchError("Couldn't find PID field in ps output")
    col = titles.index("PID")
    rows = []
    for line in lines[1:]:
        fields = line.split(None, len(titles) - 1)
        try:
            if int(fields[col]) in pids:
                rows.append(fields)
        except (ValueError, IndexError):
            continue
    return titles, rows

