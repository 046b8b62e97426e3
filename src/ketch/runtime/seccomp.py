"""``linux.seccomp``: the spec's profile → a libseccomp filter.

Tables (the spec's names → libseccomp's values): :data:`ACTIONS`,
:data:`OPERATORS`, :data:`ARCHITECTURES` (spec name → libseccomp's),
:data:`FLAGS` (filter flag → libseccomp attribute); ``features`` lists them.

As runc (libcontainer/seccomp/seccomp_linux.go):

- ``SCMP_ACT_ERRNO`` and ``SCMP_ACT_TRACE`` return ``errnoRet`` (default
  EPERM), the default action ``defaultErrnoRet``;
- a syscall name libseccomp does not know is skipped;
- a rule whose action is the default action is skipped (libseccomp refuses it);
- conditions on distinct arguments are one rule (all must hold); several
  conditions on the *same* argument become one rule each (libseccomp cannot
  AND one argument with itself);
- libseccomp's own no_new_privs attribute is off: ``noNewPrivileges`` alone
  decides, and without it the filter is loaded while the init still has
  CAP_SYS_ADMIN (see :mod:`ketch.runtime.init`).

``SCMP_ACT_NOTIFY`` (a seccomp agent on ``listenerPath``) is refused with a
clear error: ketch-runtime does not pass the notify fd to an agent.

Built by :func:`build` before pivot_root (libseccomp is loaded from the
host), loaded by ``Filter.load`` just before execve.
"""

from __future__ import annotations

import errno

from ketch.errors import SpecError
from ketch.linux import seccomp as lib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ketch.oci.runtime import Seccomp

# action name -> function of errnoRet -> libseccomp action
ACTIONS = {
    "SCMP_ACT_KILL": lambda e: lib.ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": lambda e: lib.ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": lambda e: lib.ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": lambda e: lib.ACT_TRAP,
    "SCMP_ACT_ERRNO": lambda e: lib.ACT_ERRNO(errno.EPERM if e is None else e),
    "SCMP_ACT_TRACE": lambda e: lib.ACT_TRACE(errno.EPERM if e is None else e),
    "SCMP_ACT_LOG": lambda e: lib.ACT_LOG,
    "SCMP_ACT_ALLOW": lambda e: lib.ACT_ALLOW,
}
UNSUPPORTED_ACTIONS = ("SCMP_ACT_NOTIFY",)

OPERATORS = {
    "SCMP_CMP_NE": lib.CMP_NE, "SCMP_CMP_LT": lib.CMP_LT, "SCMP_CMP_LE": lib.CMP_LE, "SCMP_CMP_EQ": lib.CMP_EQ,
    "SCMP_CMP_GE": lib.CMP_GE, "SCMP_CMP_GT": lib.CMP_GT, "SCMP_CMP_MASKED_EQ": lib.CMP_MASKED_EQ,
}

ARCHITECTURES = {
    "SCMP_ARCH_X86": "x86", "SCMP_ARCH_X86_64": "x86_64", "SCMP_ARCH_X32": "x32", "SCMP_ARCH_ARM": "arm",
    "SCMP_ARCH_AARCH64": "aarch64", "SCMP_ARCH_MIPS": "mips", "SCMP_ARCH_MIPS64": "mips64",
    "SCMP_ARCH_MIPS64N32": "mips64n32", "SCMP_ARCH_MIPSEL": "mipsel", "SCMP_ARCH_MIPSEL64": "mipsel64",
    "SCMP_ARCH_MIPSEL64N32": "mipsel64n32", "SCMP_ARCH_PPC": "ppc", "SCMP_ARCH_PPC64": "ppc64",
    "SCMP_ARCH_PPC64LE": "ppc64le", "SCMP_ARCH_S390": "s390", "SCMP_ARCH_S390X": "s390x",
    "SCMP_ARCH_PARISC": "parisc", "SCMP_ARCH_PARISC64": "parisc64", "SCMP_ARCH_RISCV64": "riscv64",
}

FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": lib.ATTR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": lib.ATTR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": lib.ATTR_CTL_SSB,
}


def action(name: str, errno_ret: int | None, where: str) -> int:
    if name in UNSUPPORTED_ACTIONS:
        raise SpecError(f"config.json: {where}: {name} is not supported by ketch-runtime "
                        "(no seccomp agent support for listenerPath)")
    if name not in ACTIONS:
        raise SpecError(f"config.json: {where}: unknown seccomp action {name!r}")
    return ACTIONS[name](errno_ret)


def rules(profile: Seccomp) -> tuple[int, list[tuple[int, int, list[tuple[int, int, int, int]]]], list[str]]:
    """(default action, [(action, syscall nr, conditions)], skipped names) of ``profile``;
    pure apart from libseccomp's name lookup."""
    default = action(profile.defaultAction, profile.defaultErrnoRet, "linux.seccomp.defaultAction")
    out, skipped = [], []
    for i, call in enumerate(profile.syscalls):
        where = f"linux.seccomp.syscalls[{i}]"
        act = action(call.action, call.errnoRet, where)
        conds = []
        for a in call.args:
            if a.op not in OPERATORS:
                raise SpecError(f"config.json: {where}: unknown seccomp operator {a.op!r}")
            if not 0 <= a.index < 6:
                raise SpecError(f"config.json: {where}: argument index {a.index} is not 0-5")
            conds.append((a.index, OPERATORS[a.op], a.value, a.valueTwo))
        if act == default:
            continue
        indexes = [c[0] for c in conds]
        groups = [[c] for c in conds] if len(set(indexes)) != len(indexes) else [conds]
        for name in call.names:
            nr = lib.resolve_syscall(name)
            if nr == lib.NR_SCMP_ERROR:
                skipped.append(name)
                continue
            for g in groups:
                out.append((act, nr, g))
    return default, out, skipped


def build(profile: Seccomp) -> lib.Filter:
    """The filter of ``profile``, ready to ``load()``.  Raises SpecError for
    an unknown action, operator, architecture or flag."""
    default, rs, _skipped = rules(profile)
    f = lib.Filter(default)
    try:
        f.set_attr(lib.ATTR_CTL_NNP, 0)
        for flag in profile.flags:
            if flag not in FLAGS:
                raise SpecError(f"config.json: linux.seccomp.flags: unsupported flag {flag!r}")
            f.set_attr(FLAGS[flag], 1)
        for arch in profile.architectures:
            token = lib.resolve_arch(ARCHITECTURES.get(arch, ""))
            if not token:
                raise SpecError(f"config.json: linux.seccomp.architectures: unknown architecture {arch!r}")
            f.add_arch(token)
        for act, nr, conds in rs:
            f.add_rule(act, nr, conds)
    except BaseException:
        f.release()
        raise
    return f
