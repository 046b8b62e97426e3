"""Path resolution inside a container's root filesystem.

An image is untrusted: its ``/etc/passwd`` or a mount destination can be a
symlink pointing anywhere, ``../../`` included.  :func:`secure_join` resolves
a path the way the kernel would *if the root were chrooted*, so the result is
always inside ``root`` (the approach of runc's ``filepath-securejoin``).
"""

from __future__ import annotations

import errno
import os
import stat

_MAX_LINKS = 255


def secure_join(root: str | os.PathLike, unsafe: str) -> str:
    """Join ``unsafe`` (absolute or relative, treated as relative to ``root``)
    onto ``root``, resolving symlinks as if ``root`` were ``/``.

    Returns an absolute host path under ``root``; components that do not exist
    are appended unresolved (so the caller can create them).  ``..`` never
    climbs above ``root``.  Raises OSError(ELOOP) after 255 symlinks.
    """
    root = os.path.abspath(os.fspath(root))
    todo = [c for c in unsafe.split("/") if c not in ("", ".")]
    todo.reverse()
    parts: list[str] = []
    links = 0
    while todo:
        comp = todo.pop()
        if comp == ".":
            continue
        if comp == "..":
            if parts:
                parts.pop()
            continue
        cur = os.path.join(root, *parts, comp)
        try:
            st = os.lstat(cur)
        except (FileNotFoundError, NotADirectoryError):
            parts.append(comp)
            continue
        if not stat.S_ISLNK(st.st_mode):
            parts.append(comp)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.path.join("/", *parts, comp))
        target = os.readlink(cur)
        if target.startswith("/"):
            parts = []
        rest = [c for c in target.split("/") if c not in ("", ".")]
        todo.extend(reversed(rest))
    return os.path.join(root, *parts)
