"""The security and resource parts of the runtime spec's ``config.json``:
``linux.resources``, ``linux.seccomp``, ``linux.devices``,
``linux.personality``, ``process.ioPriority``/``scheduler`` and ``hooks``.

Frozen dataclasses named after the spec's fields, as in
:mod:`ketch.oci.runtime`, which imports this module only when a spec has one
of these fields (and re-exports its names): creating a dataclass costs about
half a millisecond, and a plain bundle or ``ketch run`` should not pay for
twenty of them on every start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ketch.errors import SpecError
from ketch.oci.runtime import HOOK_NAMES, _opt_int, _req, _strs, _typed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


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




def parse_hooks(d: Any) -> dict[str, tuple[Hook, ...]]:
    """``hooks`` → {name: hooks} for the names in :data:`HOOK_NAMES` that are present."""
    _typed(d, "hooks", dict)
    out = {}
    for name in HOOK_NAMES:
        if d.get(name):
            out[name] = tuple(Hook.from_json(h, f"hooks.{name}[{i}]")
                              for i, h in enumerate(_typed(d[name], f"hooks.{name}", list)))
    return out
