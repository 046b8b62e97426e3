"""OCI runtime-spec data: the ``config.json`` of a bundle.

Frozen dataclasses named after the spec's fields (runtime-spec v1.1
config.md and config-linux.md) with ``from_json(dict)`` that validates and
raises :class:`~ketch.errors.SpecError` naming the offending field, and
``to_json() -> dict``.  Fields this runtime does not act on yet are kept
verbatim in ``extra`` dicts so a round trip loses nothing.

:func:`default_spec` returns what ``runc spec`` writes: runc's default mounts,
masked and read-only paths; the engine starts from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ketch.errors import SpecError

TYPE_CHECKING = False  # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    from typing import Any

    from ketch.oci.security import Device, Hook, IOPriority, Personality, Resources, Scheduler, Seccomp

OCI_VERSION = "1.1.0"

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

# runc's defaults (libcontainer/specconv/example.go), also Docker's.
DEFAULT_MASKED_PATHS = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)


def _req(d: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in d:
        raise SpecError(f"config.json: {where}.{key} is required")
    return _typed(d[key], f"{where}.{key}", kind)


def _typed(v: Any, where: str, kind: type | tuple[type, ...]) -> Any:
    if kind is int and isinstance(v, bool) or not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SpecError(f"config.json: {where} must be {names}, not {type(v).__name__}")
    return v


def _strs(v: Any, where: str) -> tuple[str, ...]:
    _typed(v, where, list)
    for i, x in enumerate(v):
        _typed(x, f"{where}[{i}]", str)
    return tuple(v)


@dataclass(frozen=True)
class User:
    """``process.user``: numeric IDs the process runs as (config.md "User")."""

    uid: int = 0
    gid: int = 0
    umask: int | None = None
    additionalGids: tuple[int, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "User":
        _typed(d, "process.user", dict)
        extra = d.get("additionalGids") or []
        for i, g in enumerate(_typed(extra, "process.user.additionalGids", list)):
            _typed(g, f"process.user.additionalGids[{i}]", int)
        umask = d.get("umask")
        return cls(uid=_req(d, "uid", "process.user", int), gid=_req(d, "gid", "process.user", int),
                   umask=None if umask is None else _typed(umask, "process.user.umask", int),
                   additionalGids=tuple(extra))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uid": self.uid, "gid": self.gid}
        if self.umask is not None:
            out["umask"] = self.umask
        if self.additionalGids:
            out["additionalGids"] = list(self.additionalGids)
        return out


@dataclass(frozen=True)
class Rlimit:
    """One ``process.rlimits`` entry: ``type`` is ``RLIMIT_*``; limits in the resource's unit."""

    type: str
    soft: int
    hard: int

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "Rlimit":
        t = _req(d, "type", where, str)
        if not t.startswith("RLIMIT_"):
            raise SpecError(f"config.json: {where}.type {t!r} is not an RLIMIT_* name")
        return cls(type=t, soft=_req(d, "soft", where, int), hard=_req(d, "hard", where, int))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "soft": self.soft, "hard": self.hard}


HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")

# Dataclasses of ketch.oci.security, imported when a spec uses them (see there).
_SECURITY_NAMES = ("IOPriority", "Scheduler", "DeviceRule", "Memory", "CPU", "ThrottleDevice", "WeightDevice",
                   "BlockIO", "Resources", "Device", "SeccompArg", "SeccompSyscall", "Seccomp", "Personality",
                   "Hook", "parse_hooks")


def _sec():
    from ketch.oci import security
    return security


def __getattr__(name: str) -> Any:
    if name in _SECURITY_NAMES:
        return getattr(_sec(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _opt_int(d: dict[str, Any], key: str, where: str) -> int | None:
    v = d.get(key)
    return None if v is None else _typed(v, f"{where}.{key}", int)


@dataclass(frozen=True)
class Capabilities:
    """``process.capabilities`` (config.md "Linux Process"): ``CAP_*`` names per set.
    ``None`` for the whole field means "not given": the process keeps what it has."""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()

    SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Capabilities":
        _typed(d, "process.capabilities", dict)
        return cls(**{k: _strs(d.get(k) or [], f"process.capabilities.{k}") for k in cls.SETS})

    def to_json(self) -> dict[str, Any]:
        return {k: list(getattr(self, k)) for k in self.SETS}


@dataclass(frozen=True)
class Process:
    """``process`` (config.md "Process"): what runs in the container, and how."""

    args: tuple[str, ...]
    cwd: str = "/"
    env: tuple[str, ...] = ()
    user: User = field(default_factory=User)
    terminal: bool = False
    consoleSize: tuple[int, int] | None = None  # (height, width) in characters
    rlimits: tuple[Rlimit, ...] = ()
    noNewPrivileges: bool = False
    oomScoreAdj: int | None = None
    capabilities: Capabilities | None = None
    apparmorProfile: str | None = None
    selinuxLabel: str | None = None
    ioPriority: IOPriority | None = None
    scheduler: Scheduler | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields not acted on, kept verbatim

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Process":
        _typed(d, "process", dict)
        args = _strs(_req(d, "args", "process", list), "process.args")
        if not args:
            raise SpecError("config.json: process.args must not be empty")
        cwd = _req(d, "cwd", "process", str)
        if not cwd.startswith("/"):
            raise SpecError(f"config.json: process.cwd {cwd!r} must be an absolute path")
        cs = d.get("consoleSize")
        size = None
        if cs is not None:
            size = (_req(cs, "height", "process.consoleSize", int), _req(cs, "width", "process.consoleSize", int))
        known = {"args", "cwd", "env", "user", "terminal", "consoleSize", "rlimits",
                 "noNewPrivileges", "oomScoreAdj", "capabilities", "apparmorProfile", "selinuxLabel",
                 "ioPriority", "scheduler"}
        caps, iop, sched = d.get("capabilities"), d.get("ioPriority"), d.get("scheduler")
        return cls(
            args=args, cwd=cwd, env=_strs(d.get("env") or [], "process.env"),
            user=User.from_json(d.get("user") or {"uid": 0, "gid": 0}),
            terminal=bool(_typed(d.get("terminal", False), "process.terminal", bool)),
            consoleSize=size,
            rlimits=tuple(Rlimit.from_json(r, f"process.rlimits[{i}]")
                          for i, r in enumerate(_typed(d.get("rlimits") or [], "process.rlimits", list))),
            noNewPrivileges=bool(d.get("noNewPrivileges", False)),
            oomScoreAdj=_opt_int(d, "oomScoreAdj", "process"),
            capabilities=None if caps is None else Capabilities.from_json(caps),
            apparmorProfile=d.get("apparmorProfile") or None,
            selinuxLabel=d.get("selinuxLabel") or None,
            ioPriority=None if iop is None else _sec().IOPriority.from_json(iop),
            scheduler=None if sched is None else _sec().Scheduler.from_json(sched),
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update({"terminal": self.terminal, "user": self.user.to_json(), "args": list(self.args),
                    "env": list(self.env), "cwd": self.cwd})
        if self.consoleSize:
            out["consoleSize"] = {"height": self.consoleSize[0], "width": self.consoleSize[1]}
        if self.rlimits:
            out["rlimits"] = [r.to_json() for r in self.rlimits]
        if self.noNewPrivileges:
            out["noNewPrivileges"] = True
        if self.oomScoreAdj is not None:
            out["oomScoreAdj"] = self.oomScoreAdj
        if self.capabilities is not None:
            out["capabilities"] = self.capabilities.to_json()
        if self.apparmorProfile:
            out["apparmorProfile"] = self.apparmorProfile
        if self.selinuxLabel:
            out["selinuxLabel"] = self.selinuxLabel
        if self.ioPriority is not None:
            out["ioPriority"] = self.ioPriority.to_json()
        if self.scheduler is not None:
            out["scheduler"] = self.scheduler.to_json()
        return out


@dataclass(frozen=True)
class Root:
    """``root`` (config.md "Root"): the rootfs path (relative to the bundle or absolute)."""

    path: str
    readonly: bool = False

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Root":
        _typed(d, "root", dict)
        return cls(path=_req(d, "path", "root", str), readonly=bool(d.get("readonly", False)))

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "readonly": self.readonly}


@dataclass(frozen=True)
class Mount:
    """One ``mounts`` entry (config.md "Mounts"); ``destination`` is inside the container."""

    destination: str
    type: str | None = None
    source: str | None = None
    options: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "Mount":
        _typed(d, where, dict)
        dest = _req(d, "destination", where, str)
        if not dest.startswith("/"):
            raise SpecError(f"config.json: {where}.destination {dest!r} must be an absolute path")
        return cls(destination=dest, type=d.get("type"), source=d.get("source"),
                   options=_strs(d.get("options") or [], f"{where}.options"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"destination": self.destination}
        if self.type is not None:
            out["type"] = self.type
        if self.source is not None:
            out["source"] = self.source
        if self.options:
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True)
class Namespace:
    """One ``linux.namespaces`` entry: a new namespace, or the one at ``path`` to join."""

    type: str
    path: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "Namespace":
        t = _req(d, "type", where, str)
        if t not in NAMESPACE_TYPES:
            raise SpecError(f"config.json: {where}.type {t!r} is not one of {', '.join(NAMESPACE_TYPES)}")
        return cls(type=t, path=d.get("path"))

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "path": self.path} if self.path else {"type": self.type}


@dataclass(frozen=True)
class Linux:
    """``linux`` (config-linux.md): namespaces, paths to mask or make read-only, sysctls."""

    namespaces: tuple[Namespace, ...] = ()
    maskedPaths: tuple[str, ...] = ()
    readonlyPaths: tuple[str, ...] = ()
    rootfsPropagation: str | None = None
    sysctl: dict[str, str] = field(default_factory=dict)
    cgroupsPath: str | None = None
    resources: Resources | None = None
    seccomp: Seccomp | None = None
    devices: tuple[Device, ...] = ()
    personality: Personality | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # fields not acted on, verbatim

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Linux":
        _typed(d, "linux", dict)
        nss = tuple(Namespace.from_json(n, f"linux.namespaces[{i}]")
                    for i, n in enumerate(_typed(d.get("namespaces") or [], "linux.namespaces", list)))
        seen: set[str] = set()
        for n in nss:
            if n.type in seen:
                raise SpecError(f"config.json: linux.namespaces lists {n.type!r} twice")
            seen.add(n.type)
        prop = d.get("rootfsPropagation")
        if prop not in (None, "", "private", "rprivate", "slave", "rslave", "shared", "rshared",
                        "unbindable", "runbindable"):
            raise SpecError(f"config.json: linux.rootfsPropagation {prop!r} is not a propagation type")
        known = {"namespaces", "maskedPaths", "readonlyPaths", "rootfsPropagation", "sysctl", "cgroupsPath",
                 "resources", "seccomp", "devices", "personality"}
        res, sec, pers = d.get("resources"), d.get("seccomp"), d.get("personality")
        return cls(namespaces=nss,
                   maskedPaths=_strs(d.get("maskedPaths") or [], "linux.maskedPaths"),
                   readonlyPaths=_strs(d.get("readonlyPaths") or [], "linux.readonlyPaths"),
                   rootfsPropagation=prop or None,
                   sysctl={str(k): str(v) for k, v in (d.get("sysctl") or {}).items()},
                   cgroupsPath=d.get("cgroupsPath") or None,
                   resources=None if res is None else _sec().Resources.from_json(res),
                   seccomp=None if sec is None else _sec().Seccomp.from_json(sec),
                   devices=tuple(_sec().Device.from_json(x, f"linux.devices[{i}]")
                                 for i, x in enumerate(_typed(d.get("devices") or [], "linux.devices", list))),
                   personality=None if pers is None else _sec().Personality.from_json(pers),
                   extra={k: v for k, v in d.items() if k not in known})

    def namespace(self, t: str) -> Namespace | None:
        """The entry of type ``t``, or None when the container shares the host's."""
        return next((n for n in self.namespaces if n.type == t), None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out["namespaces"] = [n.to_json() for n in self.namespaces]
        if self.maskedPaths:
            out["maskedPaths"] = list(self.maskedPaths)
        if self.readonlyPaths:
            out["readonlyPaths"] = list(self.readonlyPaths)
        if self.rootfsPropagation:
            out["rootfsPropagation"] = self.rootfsPropagation
        if self.sysctl:
            out["sysctl"] = dict(self.sysctl)
        if self.cgroupsPath:
            out["cgroupsPath"] = self.cgroupsPath
        if self.resources is not None:
            out["resources"] = self.resources.to_json()
        if self.seccomp is not None:
            out["seccomp"] = self.seccomp.to_json()
        if self.devices:
            out["devices"] = [x.to_json() for x in self.devices]
        if self.personality is not None:
            out["personality"] = self.personality.to_json()
        return out


@dataclass(frozen=True)
class Spec:
    """A whole ``config.json`` (config.md)."""

    process: Process
    root: Root
    ociVersion: str = OCI_VERSION
    hostname: str | None = None
    domainname: str | None = None
    mounts: tuple[Mount, ...] = ()
    linux: Linux = field(default_factory=Linux)
    annotations: dict[str, str] = field(default_factory=dict)
    hooks: dict[str, tuple[Hook, ...]] = field(default_factory=dict)  # name (HOOK_NAMES) -> hooks
    extra: dict[str, Any] = field(default_factory=dict)  # fields not acted on, verbatim

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Spec":
        _typed(d, "config.json", dict)
        _req(d, "ociVersion", "config", str)
        known = {"ociVersion", "process", "root", "hostname", "domainname", "mounts", "linux", "annotations",
                 "hooks"}
        return cls(
            ociVersion=d["ociVersion"],
            process=Process.from_json(_req(d, "process", "config", dict)),
            root=Root.from_json(_req(d, "root", "config", dict)),
            hostname=d.get("hostname"), domainname=d.get("domainname"),
            mounts=tuple(Mount.from_json(m, f"mounts[{i}]")
                         for i, m in enumerate(_typed(d.get("mounts") or [], "mounts", list))),
            linux=Linux.from_json(d.get("linux") or {}),
            annotations=dict(d.get("annotations") or {}),
            hooks=_sec().parse_hooks(d["hooks"]) if d.get("hooks") else {},
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ociVersion": self.ociVersion, "process": self.process.to_json(),
                               "root": self.root.to_json()}
        if self.hostname is not None:
            out["hostname"] = self.hostname
        if self.domainname is not None:
            out["domainname"] = self.domainname
        out["mounts"] = [m.to_json() for m in self.mounts]
        out["linux"] = self.linux.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.hooks:
            out["hooks"] = {k: [h.to_json() for h in v] for k, v in self.hooks.items()}
        out.update(self.extra)
        return out

    def with_(self, **changes: Any) -> "Spec":
        """A copy with ``changes`` applied (dataclasses.replace)."""
        return replace(self, **changes)


def default_mounts() -> tuple[Mount, ...]:
    """runc's default mounts (``runc spec``): proc, /dev tmpfs, devpts, shm, mqueue, sysfs, cgroup."""
    return (
        Mount("/proc", "proc", "proc"),
        Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        Mount("/dev/pts", "devpts", "devpts",
              ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")),
        Mount("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", "size=65536k")),
        Mount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        Mount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
        Mount("/sys/fs/cgroup", "cgroup", "cgroup", ("nosuid", "noexec", "nodev", "relatime", "ro")),
    )


def default_spec(args: tuple[str, ...] = ("sh",), rootfs: str = "rootfs", terminal: bool = True) -> Spec:
    """The spec ``runc spec`` writes: new pid/network/ipc/uts/mount/cgroup namespaces,
    default mounts, masked and read-only paths, ``args`` run as root in ``/``."""
    return Spec(
        process=Process(args=args, cwd="/", terminal=terminal,
                        env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm")),
        root=Root(rootfs, readonly=True),
        hostname="ketch",
        mounts=default_mounts(),
        linux=Linux(namespaces=tuple(Namespace(t) for t in ("pid", "network", "ipc", "uts", "mount", "cgroup")),
                    maskedPaths=DEFAULT_MASKED_PATHS, readonlyPaths=DEFAULT_READONLY_PATHS),
    )
