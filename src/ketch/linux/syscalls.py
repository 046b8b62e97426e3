"""Typed wrappers of the kernel interfaces Python 3.11's ``os`` lacks.

mount(2), umount2(2), pivot_root(2), unshare(2), setns(2), sethostname(2),
prctl(2) through ctypes on the C library, each checking errno and raising
:class:`~ketch.errors.SyscallError` ``(errno, call, path)``.  No policy lives
here; flag tables follow ``<sys/mount.h>`` and ``<sched.h>``.

Every function is bound at import time: after ``pivot_root`` the container's
init cannot import anything, so nothing here may load lazily.
"""

from __future__ import annotations

import ctypes
import os

from ketch.errors import SyscallError


def _load_libc() -> ctypes.CDLL:
    # glibc's soname first: ctypes.util.find_library runs `ldconfig -p` (a
    # process, and the subprocess module) on every start-up.
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # another C library (musl: libc.so)
        from ctypes.util import find_library
        return ctypes.CDLL(find_library("c") or "libc.so", use_errno=True)


_libc = _load_libc()

# --- mount(2) flags, <sys/mount.h> --------------------------------------------------
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# umount2(2) flags
MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# --- namespaces, <sched.h> ------------------------------------------------------------
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# --- prctl(2), <linux/prctl.h> --------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# --- capset(2), <linux/capability.h> --------------------------------------------------
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# --- ioprio_set(2), sched_setattr(2), personality(2): x86-64 syscall numbers ----------
_SYS_ioprio_set = 251
_SYS_sched_setattr = 314
IOPRIO_WHO_PROCESS = 1

_mount = _libc.mount
_mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_umount2 = _libc.umount2
_umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_unshare = _libc.unshare
_unshare.argtypes = [ctypes.c_int]
_setns = _libc.setns
_setns.argtypes = [ctypes.c_int, ctypes.c_int]
_sethostname = _libc.sethostname
_sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_setdomainname = _libc.setdomainname
_setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_prctl = _libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_syscall = _libc.syscall
_capset = _libc.capset
_capset.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_capget = _libc.capget
_capget.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_personality = _libc.personality
_personality.argtypes = [ctypes.c_ulong]
_SYS_pivot_root = 155  # x86_64


def _enc(s: str | bytes | None) -> bytes | None:
    if s is None or isinstance(s, bytes):
        return s
    return os.fsencode(s)


def _check(ret: int, call: str, path: str | bytes | None = None) -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise SyscallError(err, call, os.fsdecode(path) if path is not None else None)
    return ret


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2).  Raises SyscallError(errno, "mount", target)."""
    _check(_mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data)), "mount", target)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2) with ``flags`` (``MNT_DETACH`` …).  Raises SyscallError(errno, "umount", target)."""
    _check(_umount2(_enc(target), flags), "umount", target)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2) (x86-64 syscall 155).  Raises SyscallError(errno, "pivot_root", new_root)."""
    _check(_syscall(_SYS_pivot_root, _enc(new_root), _enc(put_old)), "pivot_root", new_root)


def unshare(flags: int) -> None:
    """unshare(2) with ``CLONE_NEW*`` flags.  Raises SyscallError(errno, "unshare")."""
    _check(_unshare(flags), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace open at ``fd`` (0 = any type)."""
    _check(_setns(fd, nstype), "setns")


def sethostname(name: str) -> None:
    """sethostname(2) in the current UTS namespace."""
    b = name.encode()
    _check(_sethostname(b, len(b)), "sethostname", name)


def setdomainname(name: str) -> None:
    """setdomainname(2) in the current UTS namespace."""
    b = name.encode()
    _check(_setdomainname(b, len(b)), "setdomainname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2); returns the call's non-negative result."""
    return _check(_prctl(option, arg2, arg3, arg4, arg5), "prctl")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) on this thread with 64-bit masks (``_LINUX_CAPABILITY_VERSION_3``)."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_capset(ctypes.byref(hdr), data), "capset")


def capget() -> tuple[int, int, int]:
    """capget(2) of this thread: (effective, permitted, inheritable) 64-bit masks."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_capget(ctypes.byref(hdr), data), "capget")
    e, p, i = ((getattr(data[0], f) | getattr(data[1], f) << 32) for f in ("effective", "permitted", "inheritable"))
    return e, p, i


def personality(persona: int) -> int:
    """personality(2); returns the previous persona."""
    return _check(_personality(persona), "personality")


def ioprio_set(ioclass: int, priority: int, who: int = 0) -> None:
    """ioprio_set(2) for process ``who`` (0: this one): ``(class << 13) | priority``."""
    _check(_syscall(_SYS_ioprio_set, IOPRIO_WHO_PROCESS, who, (ioclass << 13) | priority), "ioprio_set")


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64)]


def sched_setattr(policy: int, flags: int = 0, nice: int = 0, priority: int = 0, runtime: int = 0,
                  deadline: int = 0, period: int = 0, pid: int = 0) -> None:
    """sched_setattr(2) for ``pid`` (0: this thread)."""
    attr = _SchedAttr(ctypes.sizeof(_SchedAttr), policy, flags, nice, priority, runtime, deadline, period)
    _check(_syscall(_SYS_sched_setattr, ctypes.c_int(pid), ctypes.byref(attr), ctypes.c_uint(0)),
           "sched_setattr")
