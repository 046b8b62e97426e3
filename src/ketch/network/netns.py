"""Named network namespaces: a bind mount of an nsfs file, as ``ip netns add``,
podman and CNI runtimes keep them.

The engine creates the container's network namespace *before* the runtime
creates the container, wires it (CNI ADD), and hands its path to the runtime
in ``config.json`` (``linux.namespaces[{type: network, path}]``).  The bind
mount keeps the namespace alive with no process in it, so it outlives a
``kill -9`` of ketch and of the container, and ``ketch rm -f`` can still run
CNI DEL in it and then unmount it.

The mount must be made, and removed, in the host's mount namespace: ketch
moves itself into a private mount namespace for the container's overlay
(``engine.containers.private_mounts``), where a mount or unmount is seen by no
one else.  :func:`remember_host_mount_ns` keeps a descriptor of the host's
namespace (call it while still there); :func:`in_host_mount_ns` runs a
function in a forked child that has joined it.
"""

from __future__ import annotations

import os

from ketch.errors import KetchError
from ketch.linux import syscalls as sc

_host_mntns: int | None = None


def remember_host_mount_ns() -> int:
    """Open (once) this process's mount namespace as "the host's" (call it
    before :func:`ketch.engine.containers.private_mounts`); returns its inode
    number, to be recorded for :func:`in_host_mount_ns` in other processes."""
    global _host_mntns
    if _host_mntns is None:
        _host_mntns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    return os.fstat(_host_mntns).st_ino


def _open_mount_ns(ino: int) -> int | None:
    """A descriptor of the mount namespace with inode ``ino``: the one
    remembered, else that of PID 1 or of any process in it; None if gone."""
    if _host_mntns is not None and os.fstat(_host_mntns).st_ino == ino:
        return os.dup(_host_mntns)
    pids = ["1"] + [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino == ino:
                return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
    return None


def in_host_mount_ns(ino: int | None, fn, *args) -> None:
    """Call ``fn(*args)`` in the mount namespace of inode ``ino`` (where the
    namespace pins were made): directly when this process is there (or
    ``ino`` is unknown), else in a forked child that joins it with setns(2).
    Raises KetchError with the child's error message."""
    if not ino or os.stat("/proc/self/ns/mnt").st_ino == ino:
        fn(*args)
        return
    fd = _open_mount_ns(ino)
    if fd is None:  # that namespace is gone, and every mount in it
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: single-threaded, may join another mount namespace
        code = 0
        try:
            os.close(r)
            sc.setns(fd, sc.CLONE_NEWNS)
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, str(e).encode()[:4000])
            code = 1
        os._exit(code)
    os.close(w)
    os.close(fd)
    with os.fdopen(r, "rb") as f:
        msg = f.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise KetchError(msg or f"network namespace helper failed (status {status})")


def create(path: str) -> None:
    """Create a new network namespace pinned at ``path`` (a new empty file
    bind-mounted over by ``/proc/thread-self/ns/net``), its loopback up.  This thread returns
    to its own network namespace afterwards.  Must run in the host's mount
    namespace.  Raises SyscallError, FileExistsError."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWNET)
        try:
            sc.mount("/proc/thread-self/ns/net", path, None, sc.MS_BIND)
            _loopback_up()  # what CNI's loopback plugin does, without a process
        finally:
            sc.setns(own, sc.CLONE_NEWNET)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    finally:
        os.close(own)


def _loopback_up() -> None:
    """Set IFF_UP on ``lo`` of this thread's network namespace (netdevice(7))."""
    import fcntl
    import socket
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))  # SIOCSIFFLAGS, IFF_UP


def is_mounted(path: str) -> bool:
    """Whether ``path`` is a mount point in this mount namespace (an nsfs pin)."""
    want = path.replace(" ", "\\040")
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == want for line in f)


def remove(path: str) -> None:
    """Unmount and delete a namespace pinned by :func:`create`; a missing or
    unmounted one is fine (idempotent).  The namespace itself ends when its
    last process leaves.  Must run in the host's mount namespace."""
    while is_mounted(path):
        sc.umount(path, sc.MNT_DETACH)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
