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
class IOPriority:
    """``process.ioPriority``: ``class`` (IOPRIO_CLASS_RT/BE/IDLE) and ``priority``."""

    ioclass: str
    priority: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "IOPriority":
        _typed(d, "process.ioPriority", dict)
        return cls(ioclass=_req(d, "class", "process.ioPriority", str),
                   priority=_opt_int(d, "priority", "process.ioPriority") or 0)

    def to_json(self) -> dict[str, Any]:
        return {"class": self.ioclass, "priority": self.priority}


@dataclass(frozen=True)
class Scheduler:
    """``process.scheduler`` (sched_setattr(2) fields)."""

    policy: str
    nice: int = 0
    priority: int = 0
    flags: tuple[str, ...] = ()
    runtime: int = 0
    deadline: int = 0
    period: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Scheduler":
        w = "process.scheduler"
        _typed(d, w, dict)
        return cls(policy=_req(d, "policy", w, str), nice=_opt_int(d, "nice", w) or 0,
                   priority=_opt_int(d, "priority", w) or 0, flags=_strs(d.get("flags") or [], f"{w}.flags"),
                   runtime=_opt_int(d, "runtime", w) or 0, deadline=_opt_int(d, "deadline", w) or 0,
                   period=_opt_int(d, "period", w) or 0)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": self.policy}
        for k in ("nice", "priority", "runtime", "deadline", "period"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        if self.flags:
            out["flags"] = list(self.flags)
        return out


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
            ioPriority=None if iop is None else IOPriority.from_json(iop),
            scheduler=None if sched is None else Scheduler.from_json(sched),
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


def _ints(cls, d: dict[str, Any], where: str, kinds: dict[str, type] | None = None) -> Any:
    """Build dataclass ``cls`` whose fields are all optional ints (or ``kinds``) from ``d``."""
    _typed(d, where, dict)
    kinds = kinds or {}
    vals = {}
    for name in cls.__dataclass_fields__:
        if name in d and d[name] is not None:
            vals[name] = _typed(d[name], f"{where}.{name}", kinds.get(name, int))
    return cls(**vals)


def _dropnone(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__ if getattr(obj, k) is not None}


@dataclass(frozen=True)
class DeviceRule:
    """One ``linux.resources.devices`` entry of the device cgroup (allow/deny list)."""

    allow: bool
    type: str = "a"  # a, c, b
    major: int | None = None  # None: every major ("*")
    minor: int | None = None
    access: str = "rwm"

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "DeviceRule":
        _typed(d, where, dict)
        t = d.get("type") or "a"
        if t not in ("a", "c", "b"):
            raise SpecError(f"config.json: {where}.type {t!r} must be a, c or b")
        access = d.get("access") or "rwm"
        if not access or set(access) - set("rwm"):
            raise SpecError(f"config.json: {where}.access {access!r} must be made of r, w, m")
        return cls(allow=bool(_req(d, "allow", where, bool)), type=t, major=_opt_int(d, "major", where),
                   minor=_opt_int(d, "minor", where), access=access)

    def to_json(self) -> dict[str, Any]:
        return _dropnone(self)


@dataclass(frozen=True)
class Memory:
    """``linux.resources.memory``: bytes (-1: unlimited); ``swap`` is memory+swap, as on cgroup v1."""

    limit: int | None = None
    reservation: int | None = None
    swap: int | None = None
    kernel: int | None = None
    kernelTCP: int | None = None
    swappiness: int | None = None
    disableOOMKiller: bool | None = None
    useHierarchy: bool | None = None
    checkBeforeUpdate: bool | None = None


@dataclass(frozen=True)
class CPU:
    """``linux.resources.cpu``."""

    shares: int | None = None
    quota: int | None = None
    burst: int | None = None
    period: int | None = None
    realtimeRuntime: int | None = None
    realtimePeriod: int | None = None
    cpus: str | None = None
    mems: str | None = None
    idle: int | None = None


@dataclass(frozen=True)
class ThrottleDevice:
    """A ``blockIO`` per-device rate (bytes or operations per second)."""

    major: int
    minor: int
    rate: int


@dataclass(frozen=True)
class WeightDevice:
    """A ``blockIO.weightDevice`` entry."""

    major: int
    minor: int
    weight: int | None = None
    leafWeight: int | None = None


@dataclass(frozen=True)
class BlockIO:
    """``linux.resources.blockIO``."""

    weight: int | None = None
    leafWeight: int | None = None
    weightDevice: tuple[WeightDevice, ...] = ()
    throttleReadBpsDevice: tuple[ThrottleDevice, ...] = ()
    throttleWriteBpsDevice: tuple[ThrottleDevice, ...] = ()
    throttleReadIOPSDevice: tuple[ThrottleDevice, ...] = ()
    throttleWriteIOPSDevice: tuple[ThrottleDevice, ...] = ()

    THROTTLES = ("throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice",
                 "throttleWriteIOPSDevice")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "BlockIO":
        w = "linux.resources.blockIO"
        _typed(d, w, dict)
        vals: dict[str, Any] = {"weight": _opt_int(d, "weight", w), "leafWeight": _opt_int(d, "leafWeight", w)}
        vals["weightDevice"] = tuple(
            WeightDevice(_req(x, "major", f"{w}.weightDevice[{i}]", int), _req(x, "minor", f"{w}.weightDevice[{i}]", int),
                         _opt_int(x, "weight", f"{w}.weightDevice[{i}]"),
                         _opt_int(x, "leafWeight", f"{w}.weightDevice[{i}]"))
            for i, x in enumerate(_typed(d.get("weightDevice") or [], f"{w}.weightDevice", list)))
        for k in cls.THROTTLES:
            vals[k] = tuple(ThrottleDevice(_req(x, "major", f"{w}.{k}[{i}]", int), _req(x, "minor", f"{w}.{k}[{i}]", int),
                                           _req(x, "rate", f"{w}.{k}[{i}]", int))
                            for i, x in enumerate(_typed(d.get(k) or [], f"{w}.{k}", list)))
        return cls(**vals)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("weight", self.weight), ("leafWeight", self.leafWeight))
                               if v is not None}
        if self.weightDevice:
            out["weightDevice"] = [_dropnone(x) for x in self.weightDevice]
        for k in self.THROTTLES:
            if getattr(self, k):
                out[k] = [_dropnone(x) for x in getattr(self, k)]
        return out


@dataclass(frozen=True)
class Resources:
    """``linux.resources`` (config-linux.md "Control groups")."""

    devices: tuple[DeviceRule, ...] = ()
    memory: Memory | None = None
    cpu: CPU | None = None
    pids: int | None = None  # pids.limit
    blockIO: BlockIO | None = None
    hugepageLimits: tuple[tuple[str, int], ...] = ()  # (pageSize, limit)
    network: dict[str, Any] | None = None  # classID, priorities
    unified: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # rdma, ... verbatim

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Resources":
        w = "linux.resources"
        _typed(d, w, dict)
        known = {"devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "network", "unified"}
        mem, cpu, pids, bio = d.get("memory"), d.get("cpu"), d.get("pids"), d.get("blockIO")
        bools = {k: bool for k in ("disableOOMKiller", "useHierarchy", "checkBeforeUpdate")}
        return cls(
            devices=tuple(DeviceRule.from_json(x, f"{w}.devices[{i}]")
                          for i, x in enumerate(_typed(d.get("devices") or [], f"{w}.devices", list))),
            memory=None if mem is None else _ints(Memory, mem, f"{w}.memory", bools),
            cpu=None if cpu is None else _ints(CPU, cpu, f"{w}.cpu", {"cpus": str, "mems": str}),
            pids=None if pids is None else _opt_int(_typed(pids, f"{w}.pids", dict), "limit", f"{w}.pids"),
            blockIO=None if bio is None else BlockIO.from_json(bio),
            hugepageLimits=tuple((_req(x, "pageSize", f"{w}.hugepageLimits[{i}]", str),
                                  _req(x, "limit", f"{w}.hugepageLimits[{i}]", int))
                                 for i, x in enumerate(_typed(d.get("hugepageLimits") or [],
                                                              f"{w}.hugepageLimits", list))),
            network=d.get("network"),
            unified={str(k): str(v) for k, v in (_typed(d.get("unified") or {}, f"{w}.unified", dict)).items()},
            extra={k: v for k, v in d.items() if k not in known},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        if self.devices:
            out["devices"] = [r.to_json() for r in self.devices]
        if self.memory is not None:
            out["memory"] = _dropnone(self.memory)
        if self.cpu is not None:
            out["cpu"] = _dropnone(self.cpu)
        if self.pids is not None:
            out["pids"] = {"limit": self.pids}
        if self.blockIO is not None:
            out["blockIO"] = self.blockIO.to_json()
        if self.hugepageLimits:
            out["hugepageLimits"] = [{"pageSize": p, "limit": n} for p, n in self.hugepageLimits]
        if self.network is not None:
            out["network"] = self.network
        if self.unified:
            out["unified"] = dict(self.unified)
        return out


@dataclass(frozen=True)
class Device:
    """One ``linux.devices`` entry: a node to create in the container's /dev."""

    path: str
    type: str  # c, u (unbuffered char), b, p
    major: int = 0
    minor: int = 0
    fileMode: int | None = None
    uid: int | None = None
    gid: int | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "Device":
        _typed(d, where, dict)
        path = _req(d, "path", where, str)
        if not path.startswith("/"):
            raise SpecError(f"config.json: {where}.path {path!r} must be an absolute path")
        t = _req(d, "type", where, str)
        if t not in ("c", "u", "b", "p"):
            raise SpecError(f"config.json: {where}.type {t!r} must be c, u, b or p")
        if t != "p":
            _req(d, "major", where, int)
            _req(d, "minor", where, int)
        return cls(path=path, type=t, major=d.get("major", 0), minor=d.get("minor", 0),
                   fileMode=_opt_int(d, "fileMode", where), uid=_opt_int(d, "uid", where),
                   gid=_opt_int(d, "gid", where))

    def to_json(self) -> dict[str, Any]:
        return _dropnone(self)


@dataclass(frozen=True)
class SeccompArg:
    """One condition of a seccomp rule: argument ``index`` compared with ``op``."""

    index: int
    value: int
    op: str
    valueTwo: int = 0


@dataclass(frozen=True)
class SeccompSyscall:
    """One ``linux.seccomp.syscalls`` entry."""

    names: tuple[str, ...]
    action: str
    errnoRet: int | None = None
    args: tuple[SeccompArg, ...] = ()


@dataclass(frozen=True)
class Seccomp:
    """``linux.seccomp`` (config-linux.md "Seccomp")."""

    defaultAction: str
    defaultErrnoRet: int | None = None
    architectures: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    listenerPath: str | None = None
    listenerMetadata: str | None = None
    syscalls: tuple[SeccompSyscall, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Seccomp":
        w = "linux.seccomp"
        _typed(d, w, dict)
        calls = []
        for i, x in enumerate(_typed(d.get("syscalls") or [], f"{w}.syscalls", list)):
            ws = f"{w}.syscalls[{i}]"
            _typed(x, ws, dict)
            args = tuple(SeccompArg(index=_req(a, "index", f"{ws}.args[{j}]", int),
                                    value=_req(a, "value", f"{ws}.args[{j}]", int),
                                    op=_req(a, "op", f"{ws}.args[{j}]", str),
                                    valueTwo=_opt_int(a, "valueTwo", f"{ws}.args[{j}]") or 0)
                         for j, a in enumerate(_typed(x.get("args") or [], f"{ws}.args", list)))
            calls.append(SeccompSyscall(names=_strs(_req(x, "names", ws, list), f"{ws}.names"),
                                        action=_req(x, "action", ws, str),
                                        errnoRet=_opt_int(x, "errnoRet", ws), args=args))
        return cls(defaultAction=_req(d, "defaultAction", w, str),
                   defaultErrnoRet=_opt_int(d, "defaultErrnoRet", w),
                   architectures=_strs(d.get("architectures") or [], f"{w}.architectures"),
                   flags=_strs(d.get("flags") or [], f"{w}.flags"),
                   listenerPath=d.get("listenerPath") or None, listenerMetadata=d.get("listenerMetadata") or None,
                   syscalls=tuple(calls))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"defaultAction": self.defaultAction}
        if self.defaultErrnoRet is not None:
            out["defaultErrnoRet"] = self.defaultErrnoRet
        for k in ("architectures", "flags"):
            if getattr(self, k):
                out[k] = list(getattr(self, k))
        for k in ("listenerPath", "listenerMetadata"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        if self.syscalls:
            out["syscalls"] = []
            for c in self.syscalls:
                e: dict[str, Any] = {"names": list(c.names), "action": c.action}
                if c.errnoRet is not None:
                    e["errnoRet"] = c.errnoRet
                if c.args:
                    e["args"] = [_dropnone(a) for a in c.args]
                out["syscalls"].append(e)
        return out


@dataclass(frozen=True)
class Personality:
    """``linux.personality``: ``domain`` LINUX or LINUX32."""

    domain: str
    flags: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Personality":
        _typed(d, "linux.personality", dict)
        dom = _req(d, "domain", "linux.personality", str)
        if dom not in ("LINUX", "LINUX32"):
            raise SpecError(f"config.json: linux.personality.domain {dom!r} must be LINUX or LINUX32")
        return cls(domain=dom, flags=_strs(d.get("flags") or [], "linux.personality.flags"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"domain": self.domain}
        if self.flags:
            out["flags"] = list(self.flags)
        return out


@dataclass(frozen=True)
class Hook:
    """One hook: a program run by the runtime with the container's state on stdin."""

    path: str
    args: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    timeout: int | None = None  # seconds

    @classmethod
    def from_json(cls, d: dict[str, Any], where: str) -> "Hook":
        _typed(d, where, dict)
        path = _req(d, "path", where, str)
        if not path.startswith("/"):
            raise SpecError(f"config.json: {where}.path {path!r} must be an absolute path")
        t = _opt_int(d, "timeout", where)
        if t is not None and t <= 0:
            raise SpecError(f"config.json: {where}.timeout must be greater than zero")
        return cls(path=path, args=_strs(d.get("args") or [], f"{where}.args"),
                   env=_strs(d.get("env") or [], f"{where}.env"), timeout=t)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.args:
            out["args"] = list(self.args)
        if self.env:
            out["env"] = list(self.env)
        if self.timeout is not None:
            out["timeout"] = self.timeout
        return out


HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def parse_hooks(d: Any) -> dict[str, tuple[Hook, ...]]:
    """``hooks`` → {name: hooks} for the names in :data:`HOOK_NAMES` that are present."""
    _typed(d, "hooks", dict)
    out = {}
    for name in HOOK_NAMES:
        if d.get(name):
            out[name] = tuple(Hook.from_json(h, f"hooks.{name}[{i}]")
                              for i, h in enumerate(_typed(d[name], f"hooks.{name}", list)))
    return out


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
                   resources=None if res is None else Resources.from_json(res),
                   seccomp=None if sec is None else Seccomp.from_json(sec),
                   devices=tuple(Device.from_json(x, f"linux.devices[{i}]")
                                 for i, x in enumerate(_typed(d.get("devices") or [], "linux.devices", list))),
                   personality=None if pers is None else Personality.from_json(pers),
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
            hooks=parse_hooks(d.get("hooks") or {}),
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
