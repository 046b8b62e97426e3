"""``process.capabilities``: the five capability sets of the container's process.

One table, :data:`CAPABILITIES` (name → number, ``<linux/capability.h>``),
from which the masks are built and ``features`` derives its list.

Applied as runc's ``finalizeNamespace`` does (capabilities(7)):

1. :func:`drop_bounding` — PR_CAPBSET_DROP every capability not in the
   bounding set (needs CAP_SETPCAP, so before anything is dropped);
2. PR_SET_KEEPCAPS, then setgroups/setgid/setuid (the caller), so a change
   of UID away from 0 keeps the permitted set;
3. :func:`apply_sets` — clear KEEPCAPS, capset(2) effective, permitted and
   inheritable, then raise each ambient capability (PR_CAP_AMBIENT; the
   kernel wants it permitted and inheritable already).

A name that is no capability at all is a spec error naming it; a real
capability newer than the running kernel (above
``/proc/sys/kernel/cap_last_cap``) is ignored, as runc does.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketch.errors import SpecError
from ketch.linux import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ketch.oci.runtime import Capabilities

CAPABILITIES: dict[str, int] = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_DAC_READ_SEARCH": 2, "CAP_FOWNER": 3, "CAP_FSETID": 4,
    "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10, "CAP_NET_BROADCAST": 11, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14, "CAP_IPC_OWNER": 15, "CAP_SYS_MODULE": 16, "CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21, "CAP_SYS_BOOT": 22, "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24, "CAP_SYS_TIME": 25, "CAP_SYS_TTY_CONFIG": 26, "CAP_MKNOD": 27, "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29, "CAP_AUDIT_CONTROL": 30, "CAP_SETFCAP": 31, "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33, "CAP_SYSLOG": 34, "CAP_WAKE_ALARM": 35, "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37, "CAP_PERFMON": 38, "CAP_BPF": 39, "CAP_CHECKPOINT_RESTORE": 40,
}


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return max(CAPABILITIES.values())


@dataclass(frozen=True)
class CapMasks:
    """The five sets as bit masks (bit N = capability N)."""

    bounding: int
    effective: int
    inheritable: int
    permitted: int
    ambient: int


def masks(caps: Capabilities, last: int | None = None) -> CapMasks:
    """Bit masks of ``caps``.  Raises SpecError naming an unknown capability;
    capabilities above ``last`` (the kernel's ``cap_last_cap``) are left out."""
    last = last_cap() if last is None else last
    out = {}
    for name in ("bounding", "effective", "inheritable", "permitted", "ambient"):
        m = 0
        for cap in getattr(caps, name):
            n = CAPABILITIES.get(cap.upper() if cap.upper().startswith("CAP_") else "CAP_" + cap.upper())
            if n is None:
                raise SpecError(f"config.json: process.capabilities.{name}: unknown capability {cap!r}")
            if n <= last:
                m |= 1 << n
        out[name] = m
    return CapMasks(**out)


def drop_bounding(m: CapMasks, last: int | None = None) -> None:
    """PR_CAPBSET_DROP every capability (up to ``last``) outside ``m.bounding``."""
    last = last_cap() if last is None else last
    for n in range(last + 1):
        if not m.bounding >> n & 1:
            sc.prctl(sc.PR_CAPBSET_DROP, n)


def keep_caps(on: bool) -> None:
    """PR_SET_KEEPCAPS: keep the permitted set across a change of UID away from 0."""
    sc.prctl(sc.PR_SET_KEEPCAPS, int(on))


def apply_sets(m: CapMasks, last: int | None = None) -> None:
    """capset(2) effective/permitted/inheritable, then the ambient set."""
    last = last_cap() if last is None else last
    sc.capset(m.effective, m.permitted, m.inheritable)
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    for n in range(last + 1):
        if m.ambient >> n & 1:
            sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, n)
