"""Resolve a ``docker run -u`` / image ``User`` string against the image's own
``/etc/passwd`` and ``/etc/group``.

Semantics are runc's ``libcontainer/user.GetExecUser`` as Docker calls it
(moby ``daemon/oci_linux.go`` ``getUser``):

- forms ``""``, ``name``, ``uid``, ``name:group``, ``uid:gid``, ``uid:group``,
  ``name:gid``; a numeric part is always an ID, never a name;
- ``""`` means uid 0, looked up by uid in passwd (name and home from there);
- a user found in passwd gives uid, primary gid and home; a numeric uid
  missing from passwd (or with no passwd at all) is allowed: gid 0, home
  unknown; an unknown *name* is an error;
- with no explicit group, the supplementary groups are every ``/etc/group``
  entry listing the user's name as a member; with an explicit group there are
  none, and the group replaces the primary gid (an unknown group name is an
  error, an unknown numeric gid is allowed);
- Docker then sets ``additionalGids`` to the primary gid followed by the
  supplementary ones (we drop duplicates, which changes nothing for
  ``setgroups``).

The files are read from the container's rootfs *on the host*, so the path is
resolved with :func:`ketch.fs.secure_join` and opened with ``O_NOFOLLOW``: a
symlinked ``/etc/passwd`` resolves inside the rootfs, never to the host's.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import namedtuple

from ketch.errors import SpecError
from ketch.fs import secure_join

PASSWD_PATH = "/etc/passwd"
GROUP_PATH = "/etc/group"
MAX_ID = 2**31 - 1  # runc's maxID
_READ_LIMIT = 64 << 20


# collections.namedtuple, not typing.NamedTuple: typing is not imported at run time (start-up).
class PasswdEntry(namedtuple("PasswdEntry", "name uid gid home shell")):
    """One line of passwd(5): ``name:password:uid:gid:gecos:home:shell``
    (``name: str, uid: int, gid: int, home: str, shell: str``)."""

    __slots__ = ()


class GroupEntry(namedtuple("GroupEntry", "name gid members")):
    """One line of group(5): ``name:password:gid:member,member``
    (``name: str, gid: int, members: tuple[str, ...]``)."""

    __slots__ = ()


class ExecUser(namedtuple("ExecUser", "uid gid additional_gids home")):
    """What the container process runs as: ``(uid, gid, additional_gids, home)``
    (``int, int, tuple[int, ...], str``).

    ``additional_gids`` starts with ``gid`` (as Docker writes
    ``process.user.additionalGids``); ``home`` is the passwd home directory,
    or ``/root`` for uid 0 and ``/`` otherwise when passwd has no entry.
    """

    __slots__ = ()


def read_file_in_root(rootfs: str | os.PathLike[str], path: str) -> str | None:
    """Text of the regular file ``path`` inside ``rootfs`` (resolved as if
    ``rootfs`` were ``/``), or ``None`` when it does not exist.

    The final component is opened with ``O_NOFOLLOW|O_NONBLOCK``; a directory,
    FIFO or device raises :class:`SpecError` (reading a FIFO would block the
    engine).  Undecodable bytes are replaced, not fatal.
    """
    try:
        host = secure_join(rootfs, path)
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise SpecError(f"cannot read {path} of the image: {os.strerror(e.errno or 0)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SpecError(f"{path} of the image is not a regular file")
        chunks, size = [], 0
        while size < _READ_LIMIT and (chunk := os.read(fd, min(1 << 20, _READ_LIMIT - size))):
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _int(s: str) -> int | None:
    s = s.strip()
    if not s or not (s.isdigit() or (s[0] in "+-" and s[1:].isdigit())):
        return None
    return int(s)


def parse_passwd(text: str) -> list[PasswdEntry]:
    """Entries of a passwd file; blank lines and lines whose uid/gid are not
    integers (NIS ``+``/``-`` lines, garbage) are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        f = line.split(":")
        f += [""] * (7 - len(f))
        uid, gid = _int(f[2]), _int(f[3]) if f[3].strip() else 0
        if uid is None or gid is None:
            continue
        out.append(PasswdEntry(f[0], uid, gid, f[5], f[6]))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    """Entries of a group file; blank and malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        f = line.split(":")
        f += [""] * (4 - len(f))
        gid = _int(f[2])
        if gid is None:
            continue
        out.append(GroupEntry(f[0], gid, tuple(m for m in f[3].split(",") if m)))
    return out


def _check_range(v: int) -> int:
    if not 0 <= v <= MAX_ID:
        raise SpecError(f"uids and gids must be in range 0-{MAX_ID}")
    return v


def resolve_user(user_spec: str, passwd: str | None, group: str | None) -> ExecUser:
    """Resolve ``user_spec`` against passwd/group *contents* (``None`` = file absent).

    See the module docstring for the rules.  Raises :class:`SpecError`:
    ``unable to find user NAME: no matching entries in passwd file``,
    ``unable to find group NAME: no matching entries in group file``, or an
    out-of-range ID.
    """
    user_arg, _, group_arg = user_spec.partition(":")
    uid_num, gid_num = _int(user_arg), _int(group_arg)
    users = parse_passwd(passwd) if passwd is not None else []

    if user_arg == "":
        match = next((u for u in users if u.uid == 0), None)
    elif uid_num is not None:
        match = next((u for u in users if u.uid == uid_num), None)
    else:
        match = next((u for u in users if u.name == user_arg), None)

    if match is not None:
        uid, gid, home, name = match.uid, match.gid, match.home, match.name
    elif user_arg != "" and uid_num is None:
        raise SpecError(f"unable to find user {user_arg}: no matching entries in passwd file")
    else:
        uid, gid, home, name = _check_range(uid_num or 0), 0, "", ""

    sgids: list[int] = []
    if group_arg or name:
        groups = parse_group(group) if group is not None else []
        if group_arg:
            if gid_num is not None:
                g = next((g for g in groups if g.gid == gid_num), None)
            else:
                g = next((g for g in groups if g.name == group_arg), None)
            if g is not None:
                gid = g.gid
            elif gid_num is None:
                raise SpecError(f"unable to find group {group_arg}: no matching entries in group file")
            else:
                gid = _check_range(gid_num)
        else:
            sgids = [g.gid for g in groups if name in g.members]

    extra: list[int] = []
    for g in [gid, *sgids]:
        if g not in extra:
            extra.append(g)
    if not home:
        home = "/root" if uid == 0 else "/"
    return ExecUser(uid, gid, tuple(extra), home)


def resolve_user_in_rootfs(rootfs: str | os.PathLike[str], user_spec: str) -> ExecUser:
    """:func:`resolve_user` with the rootfs's own ``/etc/passwd`` and ``/etc/group``,
    read safely with :func:`read_file_in_root` (missing files are fine for
    numeric IDs).  Raises :class:`SpecError`."""
    passwd = read_file_in_root(rootfs, PASSWD_PATH)
    group = read_file_in_root(rootfs, GROUP_PATH)
    return resolve_user(user_spec, passwd, group)
