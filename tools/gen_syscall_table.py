#!/usr/bin/env python3
"""Generate ``src/ketch/compat/data/syscalls_x86_64.json``: x86-64 syscall number → name → first kernel.

Offline sources, all from Debian packages (nothing is downloaded):

* numbers and names: ``<asm/unistd_64.h>`` of ``linux-libc-dev``
  (``/usr/include/x86_64-linux-gnu/asm/unistd_64.h``), cross-checked
  against libseccomp's own table through ``libseccomp.so.2``
  (``seccomp_syscall_resolve_num_arch``) when that library is installed;
* the kernel version that introduced each call: the "System call / Kernel /
  Notes" table of syscalls(2) in ``manpages-dev``
  (``/usr/share/man/man2/syscalls.2.gz``);
* calls newer than both (Debian 12 ships 6.1 headers and man-pages 6.03):
  :data:`NEWER` below, transcribed from the kernel's
  ``arch/x86/entry/syscalls/syscall_64.tbl`` and the release each entry was
  added in.

The man page's version is when the call first appeared on *any*
architecture; x86-64 itself exists since Linux 2.4/2.6, so versions below
2.6 only mean "always there" for this table.

Usage: tools/gen_syscall_table.py [OUT]   (default: the path above)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import json
import re
import sys
from pathlib import Path

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
MANPAGE = Path("/usr/share/man/man2/syscalls.2.gz")
OUT = Path(__file__).resolve().parents[1] / "src/ketch/compat/data/syscalls_x86_64.json"

# Calls newer than linux-libc-dev 6.1 / man-pages 6.03: (number, name, kernel).
# Source: arch/x86/entry/syscalls/syscall_64.tbl of Linux 6.17 and the
# kernel release that first carried each line.
NEWER = [
    (335, "uretprobe", "6.11"),
    (451, "cachestat", "6.5"),
    (452, "fchmodat2", "6.6"),
    (453, "map_shadow_stack", "6.6"),
    (454, "futex_wake", "6.7"),
    (455, "futex_wait", "6.7"),
    (456, "futex_requeue", "6.7"),
    (457, "statmount", "6.8"),
    (458, "listmount", "6.8"),
    (459, "lsm_get_self_attr", "6.8"),
    (460, "lsm_set_self_attr", "6.8"),
    (461, "lsm_list_modules", "6.8"),
    (462, "mseal", "6.10"),
    (463, "setxattrat", "6.13"),
    (464, "getxattrat", "6.13"),
    (465, "listxattrat", "6.13"),
    (466, "removexattrat", "6.13"),
    (467, "open_tree_attr", "6.15"),
    (468, "file_getattr", "6.17"),
    (469, "file_setattr", "6.17"),
]

# Calls in unistd_64.h the man page names differently or leaves without a
# version: name -> (kernel, why).
ALIASES = {
    "pread64": ("2.2", "syscalls(2): added as pread in 2.2, renamed pread64 in 2.6"),
    "pwrite64": ("2.2", "syscalls(2): added as pwrite in 2.2, renamed pwrite64 in 2.6"),
    # In the 6.1 headers but after man-pages 6.03's table: the release that merged them.
    "mount_setattr": ("5.12", "merged in Linux 5.12"),
    "process_mrelease": ("5.15", "merged in Linux 5.15"),
    "futex_waitv": ("5.16", "merged in Linux 5.16"),
    "set_mempolicy_home_node": ("5.17", "merged in Linux 5.17"),
}

# Numbers reserved in the table but never implemented (sys_ni_syscall): always ENOSYS.
UNIMPLEMENTED = {"getpmsg", "putpmsg", "afs_syscall", "tuxcall", "security", "epoll_ctl_old",
                 "epoll_wait_old", "vserver"}


def unistd_table() -> dict[int, str]:
    out = {}
    for m in re.finditer(r"^#define __NR_(\w+)\s+(\d+)\s*$", UNISTD.read_text(), re.M):
        out[int(m.group(2))] = m.group(1)
    return out


def libseccomp_table(numbers) -> dict[int, str] | None:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.seccomp_syscall_resolve_num_arch.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_num_arch.argtypes = [ctypes.c_uint32, ctypes.c_int]
    libc = ctypes.CDLL(None)
    libc.free.argtypes = [ctypes.c_void_p]
    scmp_arch_x86_64 = 0xC000003E  # AUDIT_ARCH_X86_64, <seccomp.h> SCMP_ARCH_X86_64
    out = {}
    for nr in numbers:
        p = lib.seccomp_syscall_resolve_num_arch(scmp_arch_x86_64, nr)
        if p:
            out[nr] = ctypes.string_at(p).decode()
            libc.free(p)
    return out


def manpage_versions() -> dict[str, str]:
    text = gzip.decompress(MANPAGE.read_bytes()).decode("utf-8", "replace")
    out = {}
    for m in re.finditer(r"^\\fB(\w+)\\fP\(2\)\t([0-9.]*)", text, re.M):
        if m.group(2):
            out.setdefault(m.group(1), m.group(2))
    return out


def main(argv: list[str]) -> int:
    out_path = Path(argv[1]) if len(argv) > 1 else OUT
    numbers = unistd_table()
    seccomp = libseccomp_table(sorted(numbers))
    if seccomp:
        for nr, name in seccomp.items():
            if numbers.get(nr) != name:
                print(f"warning: {nr}: unistd_64.h says {numbers.get(nr)}, libseccomp says {name}",
                      file=sys.stderr)
    versions = manpage_versions()
    rows = []
    for nr, name in sorted(numbers.items()):
        if name in versions:
            kernel, src = versions[name], "syscalls(2)"
        elif name in ALIASES:
            kernel, src = ALIASES[name]
        elif name in UNIMPLEMENTED:
            kernel, src = None, "not implemented (sys_ni_syscall)"
        else:
            print(f"warning: no kernel version for {name} ({nr})", file=sys.stderr)
            kernel, src = None, None
        rows.append({"nr": nr, "name": name, "kernel": kernel, "source": src})
    have = set(numbers)
    for nr, name, kernel in NEWER:
        if nr in have:
            if numbers[nr] != name:
                raise SystemExit(f"{nr}: headers say {numbers[nr]}, NEWER says {name}")
            continue
        rows.append({"nr": nr, "name": name, "kernel": kernel, "source": "syscall_64.tbl (NEWER)"})
    rows.sort(key=lambda r: r["nr"])
    doc = {
        "description": "x86-64 system calls: number, name, first Linux release that had it",
        "arch": "x86_64",
        "source": {
            "numbers": f"{UNISTD} (Debian linux-libc-dev)"
                       + (", checked against libseccomp.so.2" if seccomp else ""),
            "kernel": f"{MANPAGE} (Debian manpages-dev), table 'System call / Kernel / Notes'",
            "newer": "tools/gen_syscall_table.py NEWER: arch/x86/entry/syscalls/syscall_64.tbl",
            "note": "the man page's version is the first release on any architecture",
        },
        "generator": "tools/gen_syscall_table.py",
        "syscalls": rows,
    }
    out_path.write_text(json.dumps(doc, indent=0).replace("{\n", "{").replace("\n}", "}")
                        .replace(",\n\"", ", \"") + "\n")
    print(f"{out_path}: {len(rows)} syscalls", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
