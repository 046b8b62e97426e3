"""Reading a container's json-file log (written by :mod:`ketch.engine.monitor`).

Each entry's ``log`` holds a piece of one stream; pieces without a trailing
newline are continued by the next piece of the same stream (Docker's partial
messages for lines over 16 KiB, or output that ended without a newline).
Writing the pieces of each stream in order gives back exactly the bytes the
container wrote (``surrogateescape`` undoes the monitor's escaping of bytes
that are not UTF-8).
"""

from __future__ import annotations

import calendar
import json
import os
import re
import time
from dataclasses import dataclass

from ketch.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterator


@dataclass
class Entry:
    stream: str      # "stdout" | "stderr"
    data: bytes
    time: str        # RFC 3339 with nanoseconds, UTC
    line_start: bool  # first piece of a line of its stream

    @property
    def line_end(self) -> bool:
        return self.data.endswith(b"\n")


def parse_time_ns(s: str) -> int:
    """RFC 3339 (``2024-01-02T03:04:05.123456789Z``, ``+01:00`` offsets,
    fraction optional) → nanoseconds since the epoch.  Raises ValueError."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:\.(\d{1,9}))?)?)?"
                     r"(Z|z|[+-]\d\d:?\d\d)?", s)
    if not m:
        raise ValueError(s)
    y, mo, d, hh, mm, ss, frac, tz = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0), 0, 0, 0))
    if tz and tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        tz = tz[1:].replace(":", "")
        secs -= sign * (int(tz[:2]) * 3600 + int(tz[2:]) * 60)
    elif not tz:
        secs -= 0  # Docker takes a zone-less time as local time; ketch as UTC
    return secs * 10**9 + int((frac or "0").ljust(9, "0"))


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def parse_since(value: str, now_ns: int | None = None) -> int:
    """``--since``/``--until``: a Unix timestamp (``1700000000[.5]``), an RFC
    3339 date/time, or a Go duration before now (``10m``, ``1h30m``).
    Nanoseconds since the epoch.  Raises UsageError."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    v = value.strip()
    if re.fullmatch(r"\d+(\.\d{1,9})?", v):
        whole, _, frac = v.partition(".")
        return int(whole) * 10**9 + int(frac.ljust(9, "0") or 0)
    if re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+", v):
        return now_ns - int(sum(float(n) * _UNIT_NS[u] for n, u in _DURATION.findall(v)))
    try:
        return parse_time_ns(v)
    except ValueError:
        raise UsageError(f'invalid value for "since": failed to parse value as time or duration: "{value}"') from None


def _decode(line: bytes) -> tuple[str, bytes, str] | None:
    try:
        e = json.loads(line)
        return e["stream"], e["log"].encode("utf-8", "surrogateescape"), e["time"]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def read(path: str | os.PathLike, *, follow: Callable[[], bool] | None = None,
         since_ns: int | None = None, until_ns: int | None = None, tail: int | None = None,
         skip_bytes: int = 0, poll: float = 0.05) -> Iterator[Entry]:
    """The entries of the log at ``path`` in order.

    ``tail``: only the last ``tail`` lines (a line = its pieces up to one
    ending in a newline).  ``follow``: after the end, keep reading new
    entries while ``follow()`` is true (the container runs); the file is
    read once more after it turns false, so nothing written before the end
    is missed.  ``since_ns``/``until_ns``: entries in that time range only.
    ``skip_bytes``: start at that offset of the file (an entry boundary).
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        if follow is None:
            return
        while follow() and not os.path.exists(path):
            time.sleep(poll)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            return
    with f:
        f.seek(skip_bytes)
        pending = b""
        open_line: dict[str, bool] = {}

        def entries(chunk: bytes) -> Iterator[Entry]:
            nonlocal pending
            data = pending + chunk
            lines = data.split(b"\n")
            pending = lines.pop()  # an entry still being written (no newline yet)
            for raw in lines:
                got = _decode(raw)
                if got is None:
                    continue
                stream, data_, ts = got
                e = Entry(stream, data_, ts, not open_line.get(stream, False))
                open_line[stream] = not e.line_end
                if since_ns is not None or until_ns is not None:
                    t = parse_time_ns(ts)
                    if (since_ns is not None and t < since_ns) or (until_ns is not None and t > until_ns):
                        continue
                yield e

        first = list(entries(f.read()))
        if tail is not None:
            first = _tail(first, tail)
        yield from first
        if follow is None:
            return
        while True:
            running = follow()
            chunk = f.read()
            if chunk:
                yield from entries(chunk)
                continue
            if not running:
                return
            time.sleep(poll)


def _tail(entries: list[Entry], n: int) -> list[Entry]:
    """The entries of the last ``n`` lines (by where each line starts)."""
    if n < 0:
        return entries
    if n == 0:
        return []
    starts = [i for i, e in enumerate(entries) if e.line_start]
    if len(starts) <= n:
        return entries
    return entries[starts[-n]:]
