"""A thin ctypes binding of libseccomp (``libseccomp.so.2``, Debian's libseccomp2).

Only the calls a runtime needs: build a filter (init, attributes,
architectures, rules with argument comparisons), resolve names, load it.
Errors (libseccomp returns ``-errno``) raise
:class:`~ketch.errors.SyscallError`.

Why not PyPI's ``pyseccomp``: it locates the library with
``ctypes.util.find_library``, which runs ``ldconfig`` in a subprocess on
every import (~26 ms here, more than a whole ``runc run``), and podman sends
a seccomp profile with every container.  The library is opened by its soname
instead, and only when a spec has ``linux.seccomp``.
"""

from __future__ import annotations

import ctypes

from ketch.errors import KetchError, SyscallError

try:
    _lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
except OSError as e:  # pragma: no cover - depends on the host
    raise KetchError("linux.seccomp needs libseccomp (libseccomp.so.2; Debian: apt-get install libseccomp2): "
                     f"{e}") from None

# scmp_compare, <seccomp.h>
CMP_NE, CMP_LT, CMP_LE, CMP_EQ, CMP_GE, CMP_GT, CMP_MASKED_EQ = range(1, 8)

# scmp_filter_attr
ATTR_ACT_DEFAULT = 1
ATTR_ACT_BADARCH = 2
ATTR_CTL_NNP = 3
ATTR_CTL_TSYNC = 4
ATTR_API_TSKIP = 5
ATTR_CTL_LOG = 6
ATTR_CTL_SSB = 7
ATTR_CTL_OPTIMIZE = 8
ATTR_API_SYSRAWRC = 9

# actions
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_NOTIFY = 0x7FC00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000


def ACT_ERRNO(n: int) -> int:  # noqa: N802 - the C macro's name
    return 0x00050000 | (n & 0xFFFF)


def ACT_TRACE(n: int) -> int:  # noqa: N802
    return 0x7FF00000 | (n & 0xFFFF)


NR_SCMP_ERROR = -1


class ArgCmp(ctypes.Structure):
    """struct scmp_arg_cmp."""
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def _fn(name: str, res, *args):
    f = getattr(_lib, name)
    f.restype = res
    f.argtypes = list(args)
    return f


_init = _fn("seccomp_init", ctypes.c_void_p, ctypes.c_uint32)
_release = _fn("seccomp_release", None, ctypes.c_void_p)
_attr_set = _fn("seccomp_attr_set", ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
_arch_add = _fn("seccomp_arch_add", ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
_arch_resolve = _fn("seccomp_arch_resolve_name", ctypes.c_uint32, ctypes.c_char_p)
_arch_native = _fn("seccomp_arch_native", ctypes.c_uint32)
_resolve = _fn("seccomp_syscall_resolve_name", ctypes.c_int, ctypes.c_char_p)
_rule_add = _fn("seccomp_rule_add_array", ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                ctypes.c_uint, ctypes.POINTER(ArgCmp))
_load = _fn("seccomp_load", ctypes.c_int, ctypes.c_void_p)
_version = _fn("seccomp_version", ctypes.c_void_p)


def _check(ret: int, call: str) -> int:
    if ret < 0:
        raise SyscallError(-ret, call)
    return ret


def version() -> tuple[int, int, int]:
    """libseccomp's version."""
    p = ctypes.cast(_version(), ctypes.POINTER(ctypes.c_uint * 3)).contents
    return p[0], p[1], p[2]


def resolve_syscall(name: str) -> int:
    """The native syscall number of ``name``, or NR_SCMP_ERROR when libseccomp does not know it."""
    return _resolve(name.encode())


def resolve_arch(name: str) -> int:
    """libseccomp's token of an architecture (``x86_64``), 0 if unknown."""
    return _arch_resolve(name.encode())


def native_arch() -> int:
    return _arch_native()


class Filter:
    """A filter under construction (``scmp_filter_ctx``)."""

    def __init__(self, default_action: int):
        self.ctx = _init(default_action)
        if not self.ctx:
            raise SyscallError(22, "seccomp_init")

    def set_attr(self, attr: int, value: int) -> None:
        _check(_attr_set(self.ctx, attr, value), "seccomp_attr_set")

    def add_arch(self, token: int) -> None:
        ret = _arch_add(self.ctx, token)
        if ret != -17:  # EEXIST: the native one is always there
            _check(ret, "seccomp_arch_add")

    def add_rule(self, action: int, nr: int, conds: list[tuple[int, int, int, int]] = ()) -> None:
        """One rule: ``conds`` are (arg index, CMP_*, datum_a, datum_b), all of which must hold."""
        arr = (ArgCmp * max(len(conds), 1))()
        for i, (idx, op, a, b) in enumerate(conds):
            arr[i].arg, arr[i].op, arr[i].datum_a, arr[i].datum_b = idx, op, a, b
        _check(_rule_add(self.ctx, action, nr, len(conds), arr), "seccomp_rule_add")

    def load(self) -> None:
        """Install the filter on this thread (seccomp(2)); then release it."""
        try:
            _check(_load(self.ctx), "seccomp_load")
        finally:
            self.release()

    def release(self) -> None:
        if self.ctx:
            _release(self.ctx)
            self.ctx = None

