"""The monitor of a detached container: the supervisor after ``execve``.

Run as ``python -I -S monitor.py '{"id": ..., "root": ..., "runroot": ...,
"pid": N, "out": fd, "err": fd}'`` (``"tty": fd`` instead of out/err for a
container with a terminal) by :func:`ketch.engine.supervisor.exec_monitor`,
in the supervisor's process: the container's PID 1 is its child, its private
mount namespace holds the container's overlay.  While the container runs it
imports only what copying the output and reaping need (os, json, select,
time), to stay small; the engine's modules are imported when PID 1 has ended.

It

1. copies PID 1's stdout and stderr into ``<containers>/<id>/<id>-json.log``
   in Docker's ``json-file`` format: one JSON object per line, ``{"log":
   "...\\n", "stream": "stdout"|"stderr", "time": "RFC 3339, ns"}``; output is
   cut at newlines, and a line longer than 16 KiB is cut into entries of
   16 KiB whose ``log`` has no trailing newline (Docker's partial messages):
   concatenating the ``log`` fields of one stream gives the bytes written.
   Bytes that are not UTF-8 are kept as ``\\udcXX`` escapes (Python's
   ``surrogateescape``), so ``ketch logs`` returns them exactly;
2. reaps PID 1 and records the exit code (128+N for signal N) and FinishedAt;
3. applies the restart policy (``no``, ``on-failure[:N]``, ``always``,
   ``unless-stopped``; never after ``stop``/``kill`` by the user), with
   Docker's back-off: 100 ms doubling up to 1 min, back to 100 ms after a run
   of 10 s or more;
4. at the end removes the runtime state and unmounts the overlay, and for
   ``--rm`` removes the writable layer, the container's directory and record.
"""

import json
import os
import select
import sys
import time

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_ENTRY = 16 * 1024
READ_SIZE = 65536


def _now() -> str:
    t = time.time_ns()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t // 10**9)) + f".{t % 10**9:09d}Z"


class JsonFileLog:
    """Appends Docker json-file entries to one file."""

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def emit(self, stream: str, data: bytes) -> None:
        line = json.dumps({"log": data.decode("utf-8", "surrogateescape"), "stream": stream, "time": _now()},
                          separators=(",", ":")) + "\n"
        view = memoryview(line.encode("ascii"))
        while view:
            view = view[os.write(self.fd, view):]


def pump(streams: dict, log: JsonFileLog) -> None:
    """Copy every fd of ``streams`` (fd → stream name) into ``log`` until each
    reaches end of file (a pty master: EIO once the container side closed)."""
    bufs = {fd: bytearray() for fd in streams}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    while bufs:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        for fd, _ev in events:
            if fd not in bufs:
                continue
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:  # EIO: the pty's other side is closed
                data = b""
            buf = bufs[fd]
            name = streams[fd]
            if not data:
                if buf:
                    log.emit(name, bytes(buf))
                del bufs[fd]
                poller.unregister(fd)
                os.close(fd)
                continue
            buf += data
            start = 0
            while True:
                nl = buf.find(b"\n", start, start + MAX_ENTRY)
                if nl >= 0:
                    log.emit(name, bytes(buf[start:nl + 1]))
                    start = nl + 1
                elif len(buf) - start >= MAX_ENTRY:
                    log.emit(name, bytes(buf[start:start + MAX_ENTRY]))
                    start += MAX_ENTRY
                else:
                    break
            del buf[:start]


def reap(pid: int) -> int:
    """Wait for ``pid`` (reaping any other orphan meanwhile); Docker's exit code."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255
        if got == pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def should_restart(rec, code: int) -> bool:
    """Docker's restart policies (moby restartmanager.ShouldRestart)."""
    if rec.ManuallyStopped or rec.Status == "removing":
        return False
    policy = rec.HostConfig.get("RestartPolicy") or {}
    name = policy.get("Name") or "no"
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure" and code != 0:
        limit = int(policy.get("MaximumRetryCount") or 0)
        return limit == 0 or rec.RestartCount < limit
    return False


def main(arg: str) -> None:
    cfg = json.loads(arg)
    cid, pid = cfg["id"], cfg["pid"]
    containers = os.path.join(cfg["root"], "containers")
    cdir = os.path.join(containers, cid)
    log = JsonFileLog(os.path.join(cdir, f"{cid}-json.log"))
    delay = 0.1
    while True:
        started = time.monotonic()
        if "tty" in cfg:
            streams = {cfg["tty"]: "stdout"}
        else:
            streams = {cfg["out"]: "stdout", cfg["err"]: "stderr"}
        pump(streams, log)
        code = reap(pid)
        # PID 1 has ended: now the engine's modules.
        sys.path.insert(0, SRC)
        from ketch.engine.store import ContainerStore, now_iso
        from ketch.errors import ContainerNotFound
        from ketch.paths import Paths

        paths = Paths(root=_path(cfg["root"]), runroot=_path(cfg["runroot"]))
        store = ContainerStore(paths)
        try:
            rec = store.load(cid)
        except ContainerNotFound:
            rec = None
        restart = rec is not None and should_restart(rec, code)
        if rec is not None:
            store.update(cid, Status="restarting" if restart else "exited", ExitCode=code,
                         FinishedAt=now_iso(), Pid=0, PidStart=None)
        if not restart:
            break
        delay = 0.1 if time.monotonic() - started >= 10 else delay
        if _sleep_unless_stopped(store, cid, delay):
            store.update(cid, Status="exited")
            break
        delay = min(delay * 2, 60.0)
        from ketch.engine.supervisor import start_process
        from ketch.errors import KetchError
        from ketch.runtime.container import Runtime
        try:
            pid, fds = start_process(Runtime(paths.runtime_state), store, cid, cdir)
        except KetchError as e:
            store.update(cid, Status="exited", ExitCode=e.exit_code, Error=str(e))
            break
        store.update(cid, RestartCount=rec.RestartCount + 1)
        cfg.pop("tty", None)
        cfg.update(fds)
    _finish(paths, store, cid, rec)


def _path(p: str):
    from pathlib import Path
    return Path(p)


def _sleep_unless_stopped(store, cid: str, delay: float) -> bool:
    """Sleep ``delay`` s; True as soon as the user stopped or removes the container."""
    end = time.monotonic() + delay
    while True:
        try:
            rec = store.load(cid)
        except Exception:  # noqa: BLE001 - removed
            return True
        if rec.ManuallyStopped or rec.Status == "removing":
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, 0.1))


def _finish(paths, store, cid: str, rec) -> None:
    """Runtime state, overlay; for --rm the writable layer, files and record."""
    import shutil

    from ketch.runtime.container import Runtime
    from ketch.snapshot.overlay import Snapshotter

    Runtime(paths.runtime_state).delete(cid, force=True)
    snapshots = Snapshotter(paths.snapshots)
    cdir = paths.containers / cid
    from ketch.engine.lifecycle import detach_network
    detach_network(paths, cdir)
    try:
        snapshots.unmount(cdir / "rootfs")
    except OSError:
        pass
    if rec is not None and rec.AutoRemove:
        snapshots.remove_rw(cid)
        shutil.rmtree(cdir, ignore_errors=True)
        store.delete(cid)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except BaseException as e:  # noqa: BLE001 - nobody reads our stderr: keep it in the record
        try:
            sys.path.insert(0, SRC)
            from ketch.engine.store import ContainerStore
            from ketch.paths import Paths
            cfg = json.loads(sys.argv[1])
            from pathlib import Path
            ContainerStore(Paths(Path(cfg["root"]), Path(cfg["runroot"]))).update(
                cfg["id"], Error=f"monitor: {type(e).__name__}: {e}")
        except BaseException:  # noqa: BLE001
            pass
        os._exit(1)
    os._exit(0)
