"""Parsed ``docker run`` options and the parsers of their flag values.

Each parser takes the raw flag value and returns a typed value or raises
:class:`~ketch.errors.UsageError` whose one-line message names the bad value,
worded like Docker's (docker/cli ``opts/``, moby ``volume/mounts/linux_parser.go``
and ``pkg/mount`` for tmpfs options).  :class:`RunOptions` holds the result;
:mod:`ketch.engine.spec` turns it and an image config into a ``config.json``.

Not supported yet (clear errors, later issues): named and anonymous volumes.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from ketch.errors import UsageError

TYPE_CHECKING = False  # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    from typing import Any

# Propagation modes accepted for binds (moby linuxPropagationModes).
PROPAGATIONS = ("private", "rprivate", "slave", "rslave", "shared", "rshared")
DEFAULT_PROPAGATION = "rprivate"

# -v mode words by class; one of each class at most (moby linuxValidMountMode).
_RW_MODES = ("rw", "ro")
_LABEL_MODES = ("z", "Z")
_COPY_MODES = ("nocopy",)
_CONSISTENCY_MODES = ("consistent", "cached", "delegated", "default")

# Mount flags that tmpfs options may carry, grouped by the kernel flag they set
# or clear: a later word of the same group wins (moby/sys/mount MergeTmpfsOptions).
_TMPFS_FLAG_GROUP = {
    "ro": "rdonly", "rw": "rdonly", "suid": "nosuid", "nosuid": "nosuid",
    "dev": "nodev", "nodev": "nodev", "exec": "noexec", "noexec": "noexec",
    "sync": "sync", "async": "sync", "dirsync": "dirsync", "remount": "remount",
    "mand": "mand", "nomand": "mand", "atime": "noatime", "noatime": "noatime",
    "diratime": "nodiratime", "nodiratime": "nodiratime", "bind": "bind", "rbind": "rbind",
    "relatime": "relatime", "norelatime": "relatime",
    "strictatime": "strictatime", "nostrictatime": "strictatime",
    # only one propagation mode survives
    "private": "propagation", "rprivate": "propagation", "shared": "propagation",
    "rshared": "propagation", "slave": "propagation", "rslave": "propagation",
    "unbindable": "propagation", "runbindable": "propagation",
}
_TMPFS_DATA_KEYS = ("size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol")
# Docker applies these to every tmpfs (daemon/oci_linux.go WithMounts).
TMPFS_DEFAULT_OPTIONS = ("noexec", "nosuid", "nodev", DEFAULT_PROPAGATION)


@dataclass(frozen=True)
class Mount:
    """A user mount at the Docker level (``-v``, ``--mount``, ``--tmpfs``), before it
    becomes an OCI mount.

    ``type`` is ``"bind"`` or ``"tmpfs"``; ``target`` is the cleaned absolute
    path in the container; ``source`` the cleaned absolute host path (binds).
    ``propagation`` is one of :data:`PROPAGATIONS` (binds default to
    ``rprivate``); ``recursive`` False is ``bind-nonrecursive`` (``bind``
    instead of ``rbind``).  ``tmpfs_options`` are the merged option words
    (``size=``, ``mode=``, flags) without Docker's defaults.
    ``create_source``: ``-v`` creates a missing host directory at start, as
    Docker does; ``--mount`` never does (its source must exist when parsed).
    """

    type: str
    target: str
    source: str = ""
    read_only: bool = False
    propagation: str = ""
    recursive: bool = True
    tmpfs_options: tuple[str, ...] = ()
    create_source: bool = False


@dataclass(frozen=True)
class RunOptions:
    """The ``docker run`` flags ketch supports, parsed.

    ``env`` holds the raw ``-e`` values (``K=V``, or bare ``K`` resolved
    against the caller's environment by the spec builder), ``env_files`` the
    ``--env-file`` paths (read by the spec builder, in order, before ``env``).
    ``entrypoint``: None = not given, ``""`` = reset the image's.
    ``user``/``workdir``/``hostname``: None = not given.  ``volumes`` (``-v``),
    ``mounts`` (``--mount``) and ``tmpfs`` (``--tmpfs``) are parsed
    :class:`Mount` values.  Lists passed in are stored as tuples.
    """

    name: str | None = None
    env: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    workdir: str | None = None
    user: str | None = None
    hostname: str | None = None
    entrypoint: str | None = None
    volumes: tuple[Mount, ...] = ()
    mounts: tuple[Mount, ...] = ()
    tmpfs: tuple[Mount, ...] = ()
    read_only: bool = False
    interactive: bool = False
    tty: bool = False
    rm: bool = False
    network: str = "bridge"               # --network bridge|none|host|NAME (ketch.network)
    publish: tuple[str, ...] = ()         # -p values, checked by ketch.network.ports.parse_publish
    publish_all: bool = False             # -P
    command: tuple[str, ...] = ()
    detach: bool = False
    restart: tuple[str, int] = ("no", 0)  # --restart: (policy name, MaximumRetryCount)
    init: bool = False                    # --init: tini as PID 1

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
        for e in self.env:
            validate_env(e)
        if self.workdir:
            object.__setattr__(self, "workdir", parse_workdir(self.workdir))
        if self.hostname:
            validate_hostname(self.hostname)
        if self.name:  # "" is no name, as Docker's --name ""
            validate_name(self.name)
        for m in (*self.volumes, *self.mounts, *self.tmpfs):
            if not isinstance(m, Mount):
                raise TypeError(f"RunOptions mounts must be Mount values, not {type(m).__name__}")
        if self.publish:
            from ketch.network.ports import parse_publish
            for p in self.publish:
                parse_publish(p)

    def user_mounts(self) -> tuple[Mount, ...]:
        """Every user mount, checked for duplicates: binds (``-v`` then
        ``--mount``) and tmpfs (``--tmpfs`` then ``--mount type=tmpfs``).

        Two binds/``--mount`` at one target raise ``Duplicate mount point: /x``
        (Docker's registerMountPoints); a ``--tmpfs`` silently replaces a bind
        at its target (Docker's setupMounts skips it); for two ``--tmpfs`` at
        one target the last wins (Docker keeps them in a map).
        """
        binds: dict[str, Mount] = {}
        tmpfs: dict[str, Mount] = {}
        for m in (*self.volumes, *self.mounts):
            if m.type == "tmpfs":
                if m.target in binds or m.target in tmpfs:
                    raise UsageError(f"Duplicate mount point: {m.target}")
                tmpfs[m.target] = m
                continue
            if m.target in binds or m.target in tmpfs:
                raise UsageError(f"Duplicate mount point: {m.target}")
            binds[m.target] = m
        for m in self.tmpfs:
            binds.pop(m.target, None)
            tmpfs.pop(m.target, None)
            tmpfs[m.target] = m
        return (*binds.values(), *tmpfs.values())


# ---------------------------------------------------------------- env

def validate_env(value: str) -> str:
    """Check one ``-e`` value: ``K=V`` or ``K``; an empty key is refused.

    Raises :class:`UsageError` ``invalid environment variable: =x`` (docker/cli
    ``opts.ValidateEnv``).  Returns ``value`` unchanged.
    """
    if value.partition("=")[0] == "":
        raise UsageError(f"invalid environment variable: {value}")
    return value


def parse_env(values: Iterable[str], host_env: Mapping[str, str]) -> list[str]:
    """Resolve ``-e`` values against the caller's environment, as docker/cli does.

    ``K=V`` passes through (``V`` may be empty); a bare ``K`` becomes
    ``K=<host value>`` when ``K`` is set in ``host_env`` and stays a bare
    ``K`` otherwise.  A bare ``K`` reaching the daemon means *unset*: the
    spec builder drops ``K`` entirely (also the image's value), as Docker
    does.  Raises :class:`UsageError` for an empty key.
    """
    out = []
    for v in values:
        validate_env(v)
        if "=" not in v and v in host_env:
            v = f"{v}={host_env[v]}"
        out.append(v)
    return out


def parse_env_file(path: str | os.PathLike[str], host_env: Mapping[str, str]) -> list[str]:
    """The entries of an ``--env-file``, as docker/cli's ``parseKeyValueFile``.

    A UTF-8 BOM is dropped; leading whitespace is trimmed; blank lines and
    lines starting with ``#`` are skipped; ``K=V`` keeps ``V`` verbatim
    (quotes and trailing spaces included); a bare ``K`` takes the value from
    ``host_env`` or stays bare (= unset, see :func:`parse_env`).  Raises
    :class:`UsageError` when the file cannot be read, is not UTF-8, or a key
    is empty or contains whitespace (``poorly formatted environment: ...``).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"open {os.fspath(path)}: {e.strerror}") from None
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"env file {os.fspath(path)} contains invalid utf8 bytes at line {n}") from None
        line = line.lstrip()
        if not line or line.startswith("#"):
            continue
        key, has_value, value = line.partition("=")
        key = key.lstrip(" \t")
        if re.search(r"[ \t]", key):
            raise UsageError(f"poorly formatted environment: variable '{key}' contains whitespaces")
        if not key:
            raise UsageError(f"poorly formatted environment: no variable name on line '{line}'")
        if has_value:
            out.append(f"{key}={value}")
        elif key in host_env:
            out.append(f"{key}={host_env[key]}")
        else:
            out.append(key)
    return out


# ---------------------------------------------------------------- simple values

def parse_workdir(value: str) -> str:
    """``-w``: must be absolute; returned cleaned.  Raises :class:`UsageError`
    ``the working directory 'x' is invalid, it needs to be an absolute path``."""
    if not value.startswith("/"):
        raise UsageError(f"the working directory '{value}' is invalid, it needs to be an absolute path")
    return clean_path(value)


_HOSTNAME_LABEL = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_HOSTNAME_RE = re.compile(rf"^(?:{_HOSTNAME_LABEL}\.)*{_HOSTNAME_LABEL}$")


_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def validate_name(value: str) -> str:
    """``--name``: Docker's pattern ``/?[a-zA-Z0-9][a-zA-Z0-9_.-]+`` (moby
    daemon/names).  Raises :class:`UsageError` with Docker's message."""
    if not _NAME_RE.match(value):
        raise UsageError(f"Invalid container name ({value}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return value


def validate_hostname(value: str) -> str:
    """``-h``: dot-separated alphanumeric/hyphen labels, at most 64 bytes (the
    kernel's HOST_NAME_MAX); docker/cli's former check.  Raises
    :class:`UsageError` ``invalid hostname format: x``."""
    if len(value.encode()) > 64 or not _HOSTNAME_RE.match(value):
        raise UsageError(f"invalid hostname format: {value}")
    return value


def clean_path(p: str) -> str:
    """Lexically clean a path like Go's ``filepath.Clean`` (``//a/../b/`` → ``/b``)."""
    out = posixpath.normpath(p)
    if out.startswith("//"):
        out = "/" + out.lstrip("/")
    return out


def _check_target(target: str, errprefix: str) -> str:
    if not target:
        raise UsageError(f"{errprefix}field Target must not be empty")
    if not target.startswith("/"):
        raise UsageError(f"{errprefix}invalid mount path: '{target}' mount path must be absolute")
    target = clean_path(target)
    if target == "/":
        raise UsageError(f"{errprefix}invalid specification: destination can't be '/'")
    return target


def _abs_dot(src: str, cwd: str | None) -> str:
    # docker/cli turns "." and "./x" host paths into absolute ones (relative to the caller's cwd).
    if src == "." or src.startswith("./"):
        return os.path.normpath(os.path.join(cwd or os.getcwd(), src))
    return src


# ---------------------------------------------------------------- -v

def parse_volume(value: str, *, cwd: str | None = None) -> Mount:
    """``-v HOST:CTR[:MODES]`` → a bind :class:`Mount`.

    ``MODES`` is a comma list with at most one of each class: ``rw``/``ro``,
    ``z``/``Z`` (SELinux relabel: accepted, ignored — ketch does not label),
    a propagation mode, ``nocopy`` (volumes only: an error on a bind, as
    Docker), a consistency word (ignored on Linux, as Docker).  ``HOST``
    must be absolute (``.``/``./x`` are made absolute against ``cwd`` as
    docker/cli does); a missing ``HOST`` is created when the container starts
    (``create_source``).

    Raises :class:`UsageError`, worded as Docker: ``invalid volume
    specification: 'v'`` (+ reason), ``invalid mode: m``,
    ``named volumes are not supported yet: NAME`` (non-absolute HOST),
    ``anonymous volumes are not supported yet: /ctr`` (``-v /ctr``).
    """
    spec = f"invalid volume specification: '{value}'"
    arr = value.split(":", 3)
    if arr[0] == "" or len(arr) > 3:
        raise UsageError(spec)
    mode = ""
    if len(arr) == 1:
        target = _check_target(arr[0], f"{spec}: ")
        raise UsageError(f"anonymous volumes are not supported yet: {target}")
    if len(arr) == 2:
        if _valid_mode(arr[1]):  # "/foo:rw": a destination with a mode but no source
            raise UsageError(spec)
        source, target = arr
    else:
        source, target, mode = arr
    if not _valid_mode(mode):
        raise UsageError(f"invalid mode: {mode}")
    source = _abs_dot(source, cwd)
    if not source.startswith("/"):
        raise UsageError(f"named volumes are not supported yet: {source}")
    prefix = f'{spec}: invalid mount config for type "bind": '
    target = _check_target(target, prefix)
    words = mode.split(",") if mode else []
    if "nocopy" in words:
        raise UsageError(f"{prefix}field VolumeOptions must not be specified")
    propagation = next((w for w in words if w in PROPAGATIONS), DEFAULT_PROPAGATION)
    return Mount("bind", target, clean_path(source), read_only="ro" in words,
                 propagation=propagation, create_source=True)


def _valid_mode(mode: str) -> bool:
    if mode == "":
        return True
    counts = {"rw": 0, "label": 0, "prop": 0, "copy": 0, "consistency": 0}
    for w in mode.split(","):
        if w in _RW_MODES:
            counts["rw"] += 1
        elif w in _LABEL_MODES:
            counts["label"] += 1
        elif w in PROPAGATIONS:
            counts["prop"] += 1
        elif w in _COPY_MODES:
            counts["copy"] += 1
        elif w in _CONSISTENCY_MODES:
            counts["consistency"] += 1
        else:
            return False
    return all(c <= 1 for c in counts.values())


# ---------------------------------------------------------------- --mount

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _parse_bool(key: str, val: str, errprefix: str) -> bool:
    if val in _TRUE:
        return True
    if val in _FALSE:
        return False
    raise UsageError(f"{errprefix}invalid value for {key}: {val}")


_RAM_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_ram_bytes(value: str) -> int:
    """A size like go-units ``RAMInBytes``: ``1024``, ``64m``, ``1.5g``, ``10KiB``
    (binary units, case-insensitive, optional ``b``/``ib`` suffix).  Raises ValueError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTpP]?)(?:[iI]?[bB])?\s*", value)
    if not m:
        raise ValueError(value)
    return int(float(m.group(1)) * _RAM_UNITS[m.group(2).lower()])


def tmpfs_size_option(size: int) -> str:
    """``size=`` as Docker's ConvertTmpfsOptions writes it: the largest of
    g/m/k dividing ``size`` evenly, else plain bytes."""
    for suffix, div in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % div == 0:
            return f"size={size // div}{suffix}"
    return f"size={size}"


def parse_mount(value: str, *, cwd: str | None = None) -> Mount:
    """``--mount`` CSV ``key=value`` fields → a :class:`Mount` (docker/cli ``opts.MountOpt``
    then moby's validation).

    Keys (case-insensitive): ``type`` (``bind``, ``tmpfs``; ``volume``, the
    default, is not supported yet), ``source``/``src``, ``target``/
    ``destination``/``dst``, ``readonly``/``ro`` (bare, or ``=true|false``
    in strconv.ParseBool's spellings), ``bind-propagation``,
    ``bind-nonrecursive``, ``tmpfs-size`` (bytes or ``64m``), ``tmpfs-mode``
    (octal), ``consistency`` (ignored).  A bind source must be absolute and
    exist.

    Raises :class:`UsageError` ``invalid argument "v" for "--mount" flag: <why>``
    for CLI-level problems, and moby's wording for the daemon-level ones,
    e.g. ``invalid mount config for type "bind": bind source path does not
    exist: /x``.
    """
    import csv  # only --mount needs it

    flagerr = f'invalid argument "{value}" for "--mount" flag: '
    try:
        row = next(csv.reader([value]), [])
    except csv.Error as e:
        raise UsageError(f"{flagerr}{e}") from None
    mtype, source, target, read_only = "volume", "", "", False
    propagation, recursive, size, mode = "", True, None, None
    used: set[str] = set()  # option families seen: bind, tmpfs, volume
    for fld in row:
        key, has_val, val = fld.partition("=")
        key = key.lower()
        if not has_val:
            if key in ("readonly", "ro"):
                read_only = True
            elif key == "bind-nonrecursive":
                recursive = False
                used.add("bind")
            elif key == "volume-nocopy":
                used.add("volume")
            else:
                raise UsageError(f"{flagerr}invalid field '{fld}' must be a key=value pair")
            continue
        if key == "type":
            mtype = val.lower()
        elif key in ("source", "src"):
            source = _abs_dot(val, cwd)
        elif key in ("target", "dst", "destination"):
            target = val
        elif key in ("readonly", "ro"):
            read_only = _parse_bool(key, val, flagerr)
        elif key == "consistency":
            pass
        elif key == "bind-propagation":
            propagation = val.lower()
            used.add("bind")
        elif key == "bind-nonrecursive":
            recursive = not _parse_bool(key, val, flagerr)
            used.add("bind")
        elif key in ("volume-driver", "volume-subpath", "volume-nocopy", "volume-label", "volume-opt"):
            used.add("volume")
        elif key == "tmpfs-size":
            try:
                size = parse_ram_bytes(val)
            except ValueError:
                raise UsageError(f"{flagerr}invalid value for {key}: {val}") from None
            used.add("tmpfs")
        elif key == "tmpfs-mode":
            try:
                mode = int(val, 8)
                if not 0 <= mode < 1 << 32:
                    raise ValueError(val)
            except ValueError:
                raise UsageError(f"{flagerr}invalid value for {key}: {val}") from None
            used.add("tmpfs")
        else:
            raise UsageError(f"{flagerr}unexpected key '{key}' in '{fld}'")
    if not mtype:
        raise UsageError(f"{flagerr}type is required")
    if not target:
        raise UsageError(f"{flagerr}target is required")
    for family in ("volume", "bind", "tmpfs"):
        if family in used and mtype != family:
            raise UsageError(f"{flagerr}cannot mix '{family}-*' options with mount type '{mtype}'")

    prefix = f'invalid mount config for type "{mtype}": '
    if mtype == "volume":
        if source:
            raise UsageError(f"named volumes are not supported yet: {source}")
        raise UsageError(f"anonymous volumes are not supported yet: {target}")
    if mtype == "bind":
        if not source:
            raise UsageError(f"{prefix}field Source must not be empty")
        target = _check_target(target, prefix)
        if propagation and propagation not in PROPAGATIONS:
            raise UsageError(f"{prefix}invalid propagation mode: {propagation}")
        if not source.startswith("/"):
            raise UsageError(f"{prefix}invalid mount path: '{source}' mount path must be absolute")
        source = clean_path(source)
        if not os.path.exists(source):  # os.Stat: a dangling symlink does not exist
            raise UsageError(f"{prefix}bind source path does not exist: {source}")
        return Mount("bind", target, source, read_only=read_only,
                     propagation=propagation or DEFAULT_PROPAGATION, recursive=recursive)
    if mtype == "tmpfs":
        if source:
            raise UsageError(f"{prefix}field Source must not be specified")
        target = _check_target(target, prefix)
        opts: list[str] = []
        if read_only:
            opts.append("ro")
        if mode:
            opts.append(f"mode={mode:o}")
        if size:
            opts.append(tmpfs_size_option(size))
        return Mount("tmpfs", target, read_only=read_only, tmpfs_options=tuple(opts))
    raise UsageError(f"{prefix}mount type unknown")


# ---------------------------------------------------------------- --tmpfs

def merge_tmpfs_options(options: Iterable[str]) -> tuple[str, ...]:
    """Deduplicate tmpfs option words as moby/sys/mount ``MergeTmpfsOptions``:
    scanning from the end, the last word of each flag group wins (``exec``
    beats an earlier ``noexec``; one propagation mode), and the last
    ``key=value`` per key wins; the survivors keep their relative order.
    ``defaults`` is dropped.  Raises :class:`UsageError`
    ``invalid tmpfs option "x"`` for anything else."""
    seen_flags: set[str] = set()
    seen_keys: set[str] = set()
    out: list[str] = []
    for opt in reversed(list(options)):
        if opt == "defaults":
            continue
        group = _TMPFS_FLAG_GROUP.get(opt)
        if group is not None:
            if group not in seen_flags:
                out.append(opt)
                seen_flags.add(group)
            continue
        key, has_val, _ = opt.partition("=")
        if not has_val or key not in _TMPFS_DATA_KEYS:
            raise UsageError(f'invalid tmpfs option "{opt}"')
        if key not in seen_keys:
            out.append(opt)
            seen_keys.add(key)
    return tuple(reversed(out))


def parse_tmpfs(value: str) -> Mount:
    """``--tmpfs /path[:opt,opt]`` → a tmpfs :class:`Mount` (options as given, e.g.
    ``rw,size=64m,mode=1777,exec``; Docker adds ``noexec,nosuid,nodev``
    before them).  Raises :class:`UsageError` for a relative or ``/`` path
    or an unknown option."""
    path, _, opts = value.partition(":")
    target = _check_target(path, "")
    words = [w for w in opts.split(",") if w] if opts else []
    merged = merge_tmpfs_options(words)  # validate now rather than at start
    return Mount("tmpfs", target, read_only="ro" in merged, tmpfs_options=tuple(words))


RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")


def parse_restart(value: str) -> tuple[str, int]:
    """``--restart no|on-failure[:N]|always|unless-stopped`` → (name, maximum
    retry count), as docker/cli ``opts.ParseRestartPolicy``.  Raises
    :class:`UsageError`."""
    name, has_n, n = value.partition(":")
    if name not in RESTART_POLICIES:
        raise UsageError(f"invalid restart policy: unknown policy '{name}'; use one of "
                         "'no', 'always', 'on-failure', or 'unless-stopped'")
    if has_n:
        if name != "on-failure":
            raise UsageError("invalid restart policy: maximum retry count can only be used with 'on-failure'")
        try:
            count = int(n)
            if count < 0:
                raise ValueError(n)
        except ValueError:
            raise UsageError(f"invalid restart policy: invalid count '{n}'") from None
        return name, count
    return name, 0


def parse_run_options(**kw: Any) -> RunOptions:
    """Build :class:`RunOptions` from raw flag values: ``volumes``, ``mounts`` and
    ``tmpfs`` given as lists of strings are parsed with :func:`parse_volume`,
    :func:`parse_mount` and :func:`parse_tmpfs`; everything else is passed
    through.  Raises :class:`UsageError`."""
    cwd = kw.pop("cwd", None)
    if "volumes" in kw:
        kw["volumes"] = tuple(v if isinstance(v, Mount) else parse_volume(v, cwd=cwd) for v in kw["volumes"])
    if "mounts" in kw:
        kw["mounts"] = tuple(v if isinstance(v, Mount) else parse_mount(v, cwd=cwd) for v in kw["mounts"])
    if "tmpfs" in kw:
        kw["tmpfs"] = tuple(v if isinstance(v, Mount) else parse_tmpfs(v) for v in kw["tmpfs"])
    if isinstance(kw.get("restart"), str):
        kw["restart"] = parse_restart(kw["restart"])
    if kw.get("rm") and kw.get("restart", ("no", 0))[0] != "no":
        raise UsageError("Conflicting options: --restart and --rm")
    return RunOptions(**kw)


__all__ = [
    "DEFAULT_PROPAGATION", "Mount", "PROPAGATIONS", "RunOptions", "TMPFS_DEFAULT_OPTIONS",
    "clean_path", "merge_tmpfs_options", "parse_env", "parse_env_file", "parse_mount",
    "parse_ram_bytes", "parse_restart", "parse_run_options", "parse_tmpfs", "parse_volume", "parse_workdir",
    "tmpfs_size_option", "validate_env", "validate_hostname", "validate_name",
]
