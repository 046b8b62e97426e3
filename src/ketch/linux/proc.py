"""Facts about processes from /proc (proc(5)).

Imports only ``os``: the runtime, the engine and the per-container monitor
all use it.
"""

from __future__ import annotations


def start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat``: the process's start time in clock ticks
    since boot — with the PID, an identity that survives PID reuse.  None if
    ``pid`` is not positive, the process is gone, or it is a zombie (exited,
    not yet reaped)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()  # the command name may hold spaces and ")"
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])
