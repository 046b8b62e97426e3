"""Signal names → numbers, as runc and Docker parse them (signal(7)).

Standard library only: ``ketch-runtime`` imports it at start-up.
"""

from __future__ import annotations

import signal


def parse_signal(text: str) -> int:
    """``KILL``, ``SIGKILL``, ``kill``, ``9``, ``RTMIN+3``, ``SIGRTMAX-1`` →
    the signal number.  Raises ValueError naming the text for anything else
    (0, numbers ≥ NSIG, unknown names)."""
    s = str(text).strip()
    if s.isdigit():
        n = int(s)
        if 0 < n < signal.NSIG:
            return n
        raise ValueError(f"unknown signal {text!r}")
    name = s.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    for base, sign in (("SIGRTMIN+", 1), ("SIGRTMAX-", -1)):
        if name.startswith(base) and name[len(base):].isdigit():
            n = (signal.SIGRTMIN if sign > 0 else signal.SIGRTMAX) + sign * int(name[len(base):])
            if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
                return n
    if name in signal.Signals.__members__:
        return int(signal.Signals[name])
    raise ValueError(f"unknown signal {text!r}")
