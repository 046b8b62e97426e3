"""Building the container's filesystem view inside its new mount namespace.

Runs in the container's init process, after ``unshare(CLONE_NEWNS)`` and
before the user's program; the order of :func:`prepare_rootfs` is the order of
runc's ``prepareRootfs`` (libcontainer/rootfs_linux.go) for the same reasons:

1. make ``/`` a slave (or the spec's ``rootfsPropagation``) so nothing we
   mount leaks back to the host;
2. bind the rootfs onto itself: pivot_root needs a mount point;
3. spec mounts, each destination resolved *inside* the rootfs without
   following symlinks out of it (an image can ship ``/proc -> /``);
4. ``/dev``: standard nodes, symlinks, ``/dev/ptmx`` → ``pts/ptmx``;
5. pivot_root, then detach the old root;
6. masked paths, read-only paths, read-only ``/`` (needs the final tree).

Kernel interfaces: mount(2), pivot_root(2), mknod(2), mount_namespaces(7).
"""

from __future__ import annotations

import os
import stat

from ketch.errors import SpecError, SyscallError
from ketch.fs import secure_join
from ketch.linux import syscalls as sc
from ketch.oci.runtime import Mount, Spec
from ketch.runtime.mountopts import PROPAGATION_FLAGS, parse_options

# Device nodes every container gets (runtime-spec config-linux.md "Default Devices"):
# path, type, major, minor, mode.
DEFAULT_DEVICES: tuple[tuple[str, str, int, int, int], ...] = (
    ("/dev/null", "c", 1, 3, 0o666),
    ("/dev/zero", "c", 1, 5, 0o666),
    ("/dev/full", "c", 1, 7, 0o666),
    ("/dev/random", "c", 1, 8, 0o666),
    ("/dev/urandom", "c", 1, 9, 0o666),
    ("/dev/tty", "c", 5, 0, 0o666),
)

# Symlinks in /dev (runc's defaultSymlinks): link -> target.
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
)

_STATVFS_TO_MS = ((os.ST_RDONLY, sc.MS_RDONLY), (os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
                  (os.ST_NOEXEC, sc.MS_NOEXEC), (os.ST_NOATIME, sc.MS_NOATIME),
                  (os.ST_NODIRATIME, sc.MS_NODIRATIME), (os.ST_RELATIME, sc.MS_RELATIME))


def locked_flags(path: str) -> int:
    """The per-mount flags of the mount at ``path`` (statvfs(3)), which a
    bind remount must repeat or the kernel refuses (EPERM) or drops them."""
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _STATVFS_TO_MS if f & st)


def remount_bind(path: str, flags: int) -> None:
    """Apply per-mount ``flags`` (``MS_RDONLY`` …) to the bind mount at ``path``."""
    sc.mount(None, path, None, sc.MS_REMOUNT | sc.MS_BIND | flags | locked_flags(path))


def prepare_rootfs(spec: Spec, rootfs: str, before_pivot=None) -> None:
    """Steps 1–6 above.  ``rootfs`` is the absolute host path of ``root.path``.
    ``before_pivot()`` is called once the mounts and ``/dev`` are made, before
    pivot_root (where the createRuntime/createContainer hooks run).

    ``console_slave`` (a path under the container's ``/dev/pts``) is bound to
    ``/dev/console`` when the process has a terminal.  Raises SyscallError or
    SpecError naming the mount that failed.
    """
    prop = PROPAGATION_FLAGS.get(spec.linux.rootfsPropagation or "rslave", sc.MS_SLAVE | sc.MS_REC)
    sc.mount(None, "/", None, prop)
    sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
    own_cgroupns = spec.linux.namespace("cgroup") is not None
    for m in spec.mounts:
        mount_entry(rootfs, m, own_cgroupns)
    setup_dev(rootfs, spec)
    create_devices(rootfs, spec)
    if before_pivot is not None:
        before_pivot()
    pivot_root(rootfs)


def finish_rootfs(spec: Spec) -> None:
    """After pivot_root (and after ``/dev/console``): masked paths, read-only
    paths and a read-only root, in runc's order."""
    for p in spec.linux.maskedPaths:
        mask_path(p)
    for p in spec.linux.readonlyPaths:
        readonly_path(p)
    if spec.root.readonly:
        remount_bind("/", sc.MS_RDONLY)


def _mountpoint(rootfs: str, dest: str, is_dir: bool) -> str:
    """Resolve ``dest`` inside ``rootfs`` and create it (directory, or empty
    file when binding a non-directory), like runc's createIfNotExists."""
    path = secure_join(rootfs, dest)
    if is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.lexists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
    # A symlink created between resolution and mount would be followed by mount(2):
    # resolve once more and insist the result stayed the same.
    again = secure_join(rootfs, dest)
    if again != path:
        raise SpecError(f"mount destination {dest} changed while being created")
    return path


def mount_entry(rootfs: str, m: Mount, own_ns: bool = True) -> None:
    """Mount one spec ``mounts`` entry under ``rootfs``.

    Supports bind/rbind (any source), proc, sysfs, tmpfs, devpts, mqueue,
    cgroup/cgroup2 and any other filesystem type by name.  ``own_ns``: the
    container has its own cgroup namespace (a cgroup mount shows its cgroup).  Raises SyscallError
    naming the destination, or SpecError for a bind source that does not exist.
    """
    opts = parse_options(m.options)
    mtype = m.type or ("bind" if opts.is_bind else None)
    if mtype == "bind" or opts.is_bind:
        src = m.source or ""
        try:
            st = os.stat(src)
        except FileNotFoundError:
            raise SpecError(f"mount {m.destination}: bind source {src} does not exist") from None
        target = _mountpoint(rootfs, m.destination, stat.S_ISDIR(st.st_mode))
        sc.mount(src, target, None, opts.flags | sc.MS_BIND)
        if opts.bind_remount_flags:
            remount_bind(target, opts.bind_remount_flags)
    elif mtype == "cgroup":
        _mount_cgroup(rootfs, m, opts.flags, own_ns)
        return
    else:
        target = _mountpoint(rootfs, m.destination, True)
        try:
            sc.mount(m.source or mtype, target, mtype, opts.flags, opts.data or None)
        except SyscallError as e:
            # sysfs cannot be mounted in the host's network namespace without
            # owning it: bind the host's /sys instead (runc does the same).
            if mtype == "sysfs" and e.errno in (1, 16):
                sc.mount("/sys", target, None, sc.MS_BIND | sc.MS_REC)
                remount_bind(target, opts.flags & (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC))
            else:
                raise
    for p in opts.propagation:
        sc.mount(None, target, None, p)


def _host_cgroup_mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) of the host's cgroup hierarchies, from mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _src, sopts = (right.split() + ["", ""])[:3]
            if fstype in ("cgroup", "cgroup2"):
                out.append((left.split()[4], fstype, sopts))
    return out


def _own_cgroups() -> dict[str, str]:
    out = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, ctrls, path = line.rstrip("\n").split(":", 2)
            out[ctrls] = path
    return out


def _mount_cgroup(rootfs: str, m: Mount, flags: int, own_ns: bool = True) -> None:
    """Mount the container's view of the cgroup hierarchies at ``m.destination``.

    cgroup v2 only: one ``cgroup2`` mount.  v1 or hybrid: a tmpfs with one
    mount per v1 hierarchy (named as on the host, ``cpu,cpuacct`` …) and the
    unified one, all seen through the container's cgroup namespace (runc's
    mountCgroupV1); without a cgroup namespace, each one is a bind mount of
    the container's own cgroup directory, so it still sees only its cgroup.
    Read-only when the spec says ``ro``.
    """
    own = {} if own_ns else _own_cgroups()
    target = _mountpoint(rootfs, m.destination, True)
    hier = _host_cgroup_mounts()
    base = "/sys/fs/cgroup"
    if any(mp == base and t == "cgroup2" for mp, t, _ in hier):
        sc.mount("cgroup2", target, "cgroup2", flags)
        return
    sc.mount("tmpfs", target, "tmpfs", flags & ~sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
             "mode=755")
    for mp, fstype, sopts in hier:
        if not mp.startswith(base + "/"):
            continue
        sub = mp[len(base) + 1:]
        if "/" in sub:
            continue
        dst = os.path.join(target, sub)
        os.makedirs(dst, exist_ok=True)
        data = ",".join(o for o in sopts.split(",") if o not in ("rw", "ro")) if fstype == "cgroup" else None
        if not own_ns and (src := _cgroup_dir(mp, fstype, data or "", own)):
            sc.mount(src, dst, None, sc.MS_BIND | sc.MS_REC)
            remount_bind(dst, flags & (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC))
        else:
            sc.mount("cgroup", dst, fstype, flags, data)
        for part in sub.split(","):  # comounted: cpu -> cpu,cpuacct
            if part != sub and not part.startswith("name=") and not os.path.lexists(os.path.join(target, part)):
                os.symlink(sub, os.path.join(target, part))
    if flags & sc.MS_RDONLY:  # the tmpfs itself; each hierarchy was mounted with the spec's flags
        sc.mount(None, target, None, sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                 "mode=755")


def _cgroup_dir(mp: str, fstype: str, data: str, own: dict[str, str]) -> str | None:
    """The host directory of our own cgroup in the hierarchy mounted at ``mp``."""
    if fstype == "cgroup2":
        path = own.get("")
    else:
        opts = set(data.split(","))
        path = next((p for k, p in own.items() if k and set(k.split(",")) <= opts), None)
    if path is None:
        return None
    d = os.path.join(mp, path.lstrip("/"))
    return d if os.path.isdir(d) else None


def setup_dev(rootfs: str, spec: Spec) -> None:
    """Create the default device nodes and ``/dev`` symlinks under ``rootfs``.

    Needs ``/dev`` to be a fresh tmpfs (spec mounts) — if the spec did not
    mount one, the image's ``/dev`` is left alone as runc does.
    """
    dev = secure_join(rootfs, "/dev")
    if not _is_tmpfs_mount(spec):
        return
    old = os.umask(0)
    try:
        for path, kind, major, minor, mode in DEFAULT_DEVICES:
            target = os.path.join(dev, os.path.basename(path))
            if os.path.lexists(target):
                continue
            os.mknod(target, mode | (stat.S_IFCHR if kind == "c" else stat.S_IFBLK), os.makedev(major, minor))
            os.chown(target, 0, 0)
        for link, to in DEV_SYMLINKS:
            target = os.path.join(dev, os.path.basename(link))
            if not os.path.lexists(target):
                os.symlink(to, target)
        if os.path.exists("/proc/kcore") and not os.path.lexists(os.path.join(dev, "core")):
            os.symlink("/proc/kcore", os.path.join(dev, "core"))
    finally:
        os.umask(old)


_DEVICE_TYPES = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


def create_devices(rootfs: str, spec: Spec) -> None:
    """mknod the spec's ``linux.devices`` (config-linux.md "Devices") with
    their mode and owner; a path that already exists is left as it is (runc)."""
    for d in spec.linux.devices:
        target = secure_join(rootfs, d.path)
        if os.path.lexists(target):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        mode = 0o666 if d.fileMode is None else d.fileMode & 0o7777
        os.mknod(target, mode | _DEVICE_TYPES[d.type], os.makedev(d.major, d.minor) if d.type != "p" else 0)
        os.chmod(target, mode)
        os.chown(target, d.uid or 0, d.gid or 0)


def _is_tmpfs_mount(spec: Spec) -> bool:
    return any(m.destination == "/dev" and m.type == "tmpfs" for m in spec.mounts)


def bind_console(slave_path: str) -> None:
    """Bind the pty slave over ``/dev/console`` (after pivot_root), as runc does."""
    target = "/dev/console"
    if not os.path.lexists(target):
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    sc.mount(slave_path, target, None, sc.MS_BIND)


def pivot_root(rootfs: str) -> None:
    """Make ``rootfs`` the root and detach the old one (runc's pivotRoot):
    pivot_root(".", ".") stacks the old root under the new; MNT_DETACH drops it."""
    os.chdir(rootfs)
    sc.pivot_root(".", ".")
    # The old root is now mounted on top of "."; keep its unmount from
    # propagating to the host before detaching it.
    sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
    sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")


def mask_path(path: str) -> None:
    """Hide ``path``: /dev/null over a file, a read-only empty tmpfs over a directory.
    A path that does not exist is skipped (runtime-spec maskedPaths)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return
    if stat.S_ISDIR(st.st_mode):
        sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, None)
    else:
        sc.mount("/dev/null", path, None, sc.MS_BIND)


def readonly_path(path: str) -> None:
    """Make ``path`` read-only with a bind mount onto itself (runtime-spec readonlyPaths);
    a path that does not exist is skipped."""
    if not os.path.exists(path):
        return
    sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    remount_bind(path, sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
