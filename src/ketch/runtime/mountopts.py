"""Mount option strings of the runtime spec → mount(2) flags and data.

One table (:data:`MOUNT_FLAGS`) maps each option name of config.md "Mounts"
(the same names as mount(8)) to ``(clear, flag)``; propagation options have
their own table because they take a separate mount(2) call.  Anything not in
either table is passed to the filesystem as data (``size=64k``, ``mode=755``).
``features`` and the compatibility analyzer derive their lists from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ketch.linux import syscalls as sc

# option -> (clears the flag?, flag)
MOUNT_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID),
    "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV),
    "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC),
    "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS),
    "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC),
    "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK),
    "nomand": (True, sc.MS_MANDLOCK),
    "atime": (True, sc.MS_NOATIME),
    "noatime": (False, sc.MS_NOATIME),
    "diratime": (True, sc.MS_NODIRATIME),
    "nodiratime": (False, sc.MS_NODIRATIME),
    "relatime": (False, sc.MS_RELATIME),
    "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME),
    "nostrictatime": (True, sc.MS_STRICTATIME),
    "lazytime": (False, sc.MS_LAZYTIME),
    "nolazytime": (True, sc.MS_LAZYTIME),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW),
    "symfollow": (True, sc.MS_NOSYMFOLLOW),
    "bind": (False, sc.MS_BIND),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "silent": (False, sc.MS_SILENT),
    "loud": (True, sc.MS_SILENT),
}

PROPAGATION_FLAGS: dict[str, int] = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}

# Flags a bind mount keeps only through a separate MS_REMOUNT (mount(2) ignores them with MS_BIND).
_REMOUNT_ON_BIND = (sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME
                    | sc.MS_NODIRATIME | sc.MS_RELATIME | sc.MS_STRICTATIME | sc.MS_NOSYMFOLLOW)


@dataclass(frozen=True)
class MountOptions:
    """Parsed ``options`` of one mount: ``flags`` for mount(2), ``propagation``
    flags for a second call, ``data`` for the filesystem (comma-joined)."""

    flags: int
    propagation: tuple[int, ...]
    data: str

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & sc.MS_BIND)

    @property
    def bind_remount_flags(self) -> int:
        """Flags that a bind mount must apply in a second ``MS_REMOUNT|MS_BIND`` call (0 if none)."""
        return self.flags & _REMOUNT_ON_BIND


def parse_options(options: tuple[str, ...] | list[str]) -> MountOptions:
    """Split spec mount options into flags, propagation and filesystem data.

    ``("rbind", "ro", "rprivate")`` → flags ``MS_BIND|MS_REC|MS_RDONLY``,
    propagation ``(MS_PRIVATE|MS_REC,)``, data ``""``.  Later options win over
    earlier ones, as in mount(8).  ``rro`` and other recursive-attribute
    options (mount_setattr) are passed through as data for now.
    """
    flags = 0
    prop: list[int] = []
    data: list[str] = []
    for opt in options:
        if opt in MOUNT_FLAGS:
            clear, f = MOUNT_FLAGS[opt]
            flags = flags & ~f if clear else flags | f
        elif opt in PROPAGATION_FLAGS:
            prop.append(PROPAGATION_FLAGS[opt])
        elif opt in ("defaults", ""):
            continue
        else:
            data.append(opt)
    return MountOptions(flags=flags, propagation=tuple(prop), data=",".join(data))
