"""Pull and push progress as Docker prints it.

Not a TTY: one plain line per layer event, as ``docker pull | cat`` shows::

    3.20.3: Pulling from library/alpine
    43c4264eed91: Pulling fs layer
    43c4264eed91: Verifying Checksum
    43c4264eed91: Download complete
    43c4264eed91: Pull complete
    Digest: sha256:…
    Status: Downloaded newer image for alpine:3.20.3

A TTY: one line per layer, rewritten in place (ANSI cursor movement, as the
Docker CLI's ``jsonmessage``) with a bar and ``1.2MB/3.6MB`` while
downloading.  Events arrive from several download threads; a lock
serializes the output.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

_QUIET_PLAIN = frozenset({"Downloading", "Pushing"})


def human_size(size: float) -> str:
    """go-units ``HumanSize``: decimal units, 3 significant digits (``3.62MB``)."""
    units = ["B", "kB", "MB", "GB", "TB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000.0
        i += 1
    return f"{size:.3g}{units[i]}"


def bar(current: int, total: int, width: int = 50) -> str:
    """Docker's progress bar: ``[=====>      ]  1.2MB/3.6MB``."""
    if total <= 0:
        return ""
    n = min(width, int(width * current / total))
    filled = "=" * max(0, n - 1) + (">" if n else "")
    return f"[{filled}{' ' * (width - len(filled))}] {human_size(current):>8}/{human_size(total)}"


class PlainProgress:
    """A :data:`ketch.image.registry.ProgressFn` writing Docker-style lines to ``out``.

    ``tty`` (default: ``out.isatty()``) chooses the live display.
    """

    def __init__(self, out: TextIO | None = None, tty: bool | None = None):
        self.out = out or sys.stdout
        if tty is None:
            try:
                tty = self.out.isatty()
            except (AttributeError, ValueError):
                tty = False
        self.tty = bool(tty)
        self._lock = threading.Lock()
        self._order: list[str] = []
        self._lines: dict[str, str] = {}

    def header(self, ref) -> None:
        """``3.20.3: Pulling from library/alpine`` for a parsed reference."""
        self._print(f"{ref.digest or ref.tag or 'latest'}: Pulling from {ref.path}")

    def footer(self, result, ref) -> None:
        """``Digest:`` and ``Status:`` lines of a finished pull."""
        digest = getattr(result, "digest", None) or result.image.manifest_digest
        self._print(f"Digest: {digest}")
        verb = "Image is up to date for" if result.up_to_date else "Downloaded newer image for"
        self._print(f"Status: {verb} {ref.familiar}")

    def line(self, text: str) -> None:
        """Print one whole line (a header or footer), serialized with the events."""
        self._print(text)

    def _print(self, line: str) -> None:
        with self._lock:
            print(line, file=self.out, flush=True)

    def __call__(self, p) -> None:
        if not self.tty:
            if p.status in _QUIET_PLAIN:
                return
            self._print(f"{p.id}: {p.status}")
            return
        if p.status in _QUIET_PLAIN:
            text = f"{p.id}: {p.status} {bar(p.current, p.total)}"
        else:
            text = f"{p.id}: {p.status}"
        with self._lock:
            if p.id not in self._lines:
                self._order.append(p.id)
                self._lines[p.id] = text
                self.out.write(text + "\n")
            else:
                self._lines[p.id] = text
                up = len(self._order) - self._order.index(p.id)
                self.out.write(f"\x1b[{up}A\r\x1b[2K{text}\x1b[{up}B\r")
            self.out.flush()


__all__ = ["PlainProgress", "bar", "human_size"]
