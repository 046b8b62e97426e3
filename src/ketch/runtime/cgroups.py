"""Control groups of a container: ``linux.cgroupsPath`` and ``linux.resources``.

Two layouts, found from ``/proc/self/mountinfo`` (runc's cgroupfs driver):

- **v1** (and *hybrid*, this machine: v1 controllers under
  ``/sys/fs/cgroup/<ctrl>`` plus an empty cgroup2 at
  ``/sys/fs/cgroup/unified``): the container gets a directory of the same
  path in *every* mounted hierarchy — named ones (``name=systemd``) and, on
  hybrid hosts, the unified one too, as runc does; limits are written to the
  v1 controller files; ``hugetlb`` falls back to the unified hierarchy when it
  is only enabled there.
- **v2** (unified at ``/sys/fs/cgroup``): one directory; the controllers the
  limits need are enabled in ``cgroup.subtree_control`` of every ancestor.

The resource → file mapping is pure (:func:`v1_files`, :func:`v2_files`), so
it is unit-tested without root; :class:`Cgroup` does the I/O.

Paths (config-linux.md "Cgroups Path"): an absolute ``cgroupsPath`` is
relative to each hierarchy's root as this process sees it; a relative one is
relative to this process's own cgroup in that hierarchy; none gives
``/ketch/<id>`` (runc: ``/<id>``).

Device rules: v1 ``devices.allow``/``devices.deny`` in order, with runc's
default allowed devices appended; cgroup v2 controls devices with an eBPF
program, which ketch does not load: on v2 the rules are **not enforced**
(``features`` says so), the container still only sees the nodes of its own
``/dev``.

Ordering (runc's ``process_linux.go``): the directories are made and the
limits written by ``create`` before the container's first process exists;
that process joins them (writes itself to ``cgroup.procs``) before it
unshares anything, so its cgroup namespace is rooted at its own cgroup.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass, field

from ketch.errors import KetchError, SpecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ketch.oci.runtime import DeviceRule, Resources

CGROUP_ROOT = "/sys/fs/cgroup"

# runc's specconv.AllowedDevices: always allowed after the spec's own rules,
# so a container whose spec denies everything still has /dev/null and a pty.
DEFAULT_ALLOWED_DEVICES: tuple[tuple[str, int | None, int | None, str], ...] = (
    ("c", None, None, "m"), ("b", None, None, "m"),
    ("c", 1, 3, "rwm"), ("c", 1, 8, "rwm"), ("c", 1, 7, "rwm"), ("c", 5, 0, "rwm"),
    ("c", 1, 5, "rwm"), ("c", 1, 9, "rwm"), ("c", 5, 1, "rwm"), ("c", 136, None, "rwm"),
    ("c", 5, 2, "rwm"), ("c", 10, 200, "rwm"),
)

# v1 controllers whose files ketch writes, for ``features``.
V1_CONTROLLERS = ("memory", "cpu", "cpuset", "pids", "blkio", "hugetlb", "devices", "freezer",
                  "net_cls", "net_prio")
V2_CONTROLLERS = ("memory", "cpu", "cpuset", "pids", "io", "hugetlb")


# --------------------------------------------------------------------------- pure mappings
def _dev(major: int | None, minor: int | None) -> str:
    return f"{'*' if major is None or major < 0 else major}:{'*' if minor is None or minor < 0 else minor}"


def device_rule_line(r: DeviceRule | tuple) -> tuple[str, str]:
    """(file, line) of one v1 device rule: ``devices.allow``/``deny`` and ``c 1:3 rwm`` or ``a``."""
    if isinstance(r, tuple):
        allow, t, major, minor, access = True, *r
    else:
        allow, t, major, minor, access = r.allow, r.type, r.major, r.minor, r.access
    f = "devices.allow" if allow else "devices.deny"
    if t == "a" and (major is None or major < 0) and (minor is None or minor < 0) and set(access) == set("rwm"):
        return f, "a"
    return f, f"{t} {_dev(major, minor)} {access}"


def v1_files(res: Resources, extra_devices: tuple = ()) -> list[tuple[str, str, str]]:
    """(controller, file, value) to write for ``res`` on cgroup v1, in write order.

    ``extra_devices``: (type, major, minor, access) allowed after the spec's
    rules (its ``linux.devices`` nodes, then runc's defaults).
    """
    out: list[tuple[str, str, str]] = []
    m = res.memory
    if m is not None:
        if m.limit is not None:
            out.append(("memory", "memory.limit_in_bytes", str(m.limit)))
        if m.swap is not None:  # memory+swap: after the memory limit it must not be below
            out.append(("memory", "memory.memsw.limit_in_bytes", str(m.swap)))
        if m.reservation is not None:
            out.append(("memory", "memory.soft_limit_in_bytes", str(m.reservation)))
        # m.kernel: kernel memory limits are gone from the kernel (5.16); ignored as runc 1.1 does.
        if m.kernelTCP is not None:
            out.append(("memory", "memory.kmem.tcp.limit_in_bytes", str(m.kernelTCP)))
        if m.swappiness is not None and m.swappiness >= 0:
            out.append(("memory", "memory.swappiness", str(m.swappiness)))
        if m.disableOOMKiller:
            out.append(("memory", "memory.oom_control", "1"))
    c = res.cpu
    if c is not None:
        if c.shares:
            out.append(("cpu", "cpu.shares", str(c.shares)))
        if c.period:
            out.append(("cpu", "cpu.cfs_period_us", str(c.period)))
        if c.quota:
            out.append(("cpu", "cpu.cfs_quota_us", str(c.quota)))
        if c.burst is not None:
            out.append(("cpu", "cpu.cfs_burst_us", str(c.burst)))
        if c.realtimePeriod:
            out.append(("cpu", "cpu.rt_period_us", str(c.realtimePeriod)))
        if c.realtimeRuntime:
            out.append(("cpu", "cpu.rt_runtime_us", str(c.realtimeRuntime)))
        if c.idle is not None:
            out.append(("cpu", "cpu.idle", str(c.idle)))
        if c.cpus:
            out.append(("cpuset", "cpuset.cpus", c.cpus))
        if c.mems:
            out.append(("cpuset", "cpuset.mems", c.mems))
    if res.pids is not None and res.pids != 0:
        out.append(("pids", "pids.max", str(res.pids) if res.pids > 0 else "max"))
    b = res.blockIO
    if b is not None:
        if b.weight:
            out.append(("blkio", "blkio.weight", str(b.weight)))
        if b.leafWeight:
            out.append(("blkio", "blkio.leaf_weight", str(b.leafWeight)))
        for wd in b.weightDevice:
            if wd.weight:
                out.append(("blkio", "blkio.weight_device", f"{wd.major}:{wd.minor} {wd.weight}"))
            if wd.leafWeight:
                out.append(("blkio", "blkio.leaf_weight_device", f"{wd.major}:{wd.minor} {wd.leafWeight}"))
        for key, f in (("throttleReadBpsDevice", "read_bps_device"), ("throttleWriteBpsDevice", "write_bps_device"),
                       ("throttleReadIOPSDevice", "read_iops_device"),
                       ("throttleWriteIOPSDevice", "write_iops_device")):
            for t in getattr(b, key):
                out.append(("blkio", f"blkio.throttle.{f}", f"{t.major}:{t.minor} {t.rate}"))
    for size, limit in res.hugepageLimits:
        out.append(("hugetlb", f"hugetlb.{size}.limit_in_bytes", str(limit)))
    if res.network:
        if res.network.get("classID") is not None:
            out.append(("net_cls", "net_cls.classid", str(res.network["classID"])))
        for p in res.network.get("priorities") or []:
            out.append(("net_prio", "net_prio.ifpriomap", f"{p['name']} {p['priority']}"))
    if res.devices:
        for r in res.devices:
            f, line = device_rule_line(r)
            out.append(("devices", f, line))
        for d in extra_devices:
            f, line = device_rule_line(d)
            out.append(("devices", f, line))
    if res.unified:
        raise SpecError("config.json: linux.resources.unified needs cgroup v2, this host uses cgroup v1")
    return out


def cpu_weight(shares: int) -> int:
    """cgroup v1 cpu.shares [2, 262144] → v2 cpu.weight [1, 10000] (runc's conversion)."""
    return 1 + ((shares - 2) * 9999) // 262142


def io_weight(blkio: int) -> int:
    """v1 blkio.weight [10, 1000] → v2 io.weight [1, 10000] (runc's conversion)."""
    return 1 + (blkio - 10) * 9999 // 990


def memory_swap_v2(limit: int | None, swap: int | None) -> str | None:
    """v1's memory+swap → v2's swap-only ``memory.swap.max`` (runc's ConvertMemorySwapToCgroupV2Value)."""
    if swap is None:
        return None
    if swap == -1:
        return "max"
    if limit is None or limit == -1:
        raise SpecError("config.json: linux.resources.memory.swap needs a memory limit on cgroup v2")
    if swap < limit:
        raise SpecError("config.json: linux.resources.memory.swap must not be below memory.limit")
    return str(swap - limit)


def v2_files(res: Resources, bfq: bool = False) -> list[tuple[str, str]]:
    """(file, value) to write for ``res`` on cgroup v2, in write order.
    ``bfq``: the cgroup has ``io.bfq.weight`` (weights in the v1 range, as runc prefers)."""
    out: list[tuple[str, str]] = []
    m = res.memory
    if m is not None:
        swap = memory_swap_v2(m.limit, m.swap)
        if swap is not None:
            out.append(("memory.swap.max", swap))
        if m.limit is not None:
            out.append(("memory.max", "max" if m.limit == -1 else str(m.limit)))
        if m.reservation is not None:
            out.append(("memory.low", "max" if m.reservation == -1 else str(m.reservation)))
        if m.disableOOMKiller:
            raise SpecError("config.json: linux.resources.memory.disableOOMKiller is not possible on cgroup v2")
    c = res.cpu
    if c is not None:
        if c.shares:
            out.append(("cpu.weight", str(cpu_weight(c.shares))))
        if c.quota or c.period:
            quota = "max" if not c.quota or c.quota < 0 else str(c.quota)
            out.append(("cpu.max", f"{quota} {c.period or 100000}"))
        if c.burst is not None:
            out.append(("cpu.max.burst", str(c.burst)))
        if c.idle is not None:
            out.append(("cpu.idle", str(c.idle)))
        if c.realtimePeriod or c.realtimeRuntime:
            raise SpecError("config.json: linux.resources.cpu realtime settings need cgroup v1")
        if c.cpus:
            out.append(("cpuset.cpus", c.cpus))
        if c.mems:
            out.append(("cpuset.mems", c.mems))
    if res.pids is not None and res.pids != 0:
        out.append(("pids.max", str(res.pids) if res.pids > 0 else "max"))
    b = res.blockIO
    if b is not None:
        if b.weight:
            out.append(("io.bfq.weight", str(b.weight)) if bfq else ("io.weight", f"default {io_weight(b.weight)}"))
        for wd in b.weightDevice:
            if wd.weight:
                out.append(("io.bfq.weight", f"{wd.major}:{wd.minor} {wd.weight}") if bfq
                           else ("io.weight", f"{wd.major}:{wd.minor} {io_weight(wd.weight)}"))
        for key, k in (("throttleReadBpsDevice", "rbps"), ("throttleWriteBpsDevice", "wbps"),
                       ("throttleReadIOPSDevice", "riops"), ("throttleWriteIOPSDevice", "wiops")):
            for t in getattr(b, key):
                out.append(("io.max", f"{t.major}:{t.minor} {k}={t.rate if t.rate > 0 else 'max'}"))
    for size, limit in res.hugepageLimits:
        out.append((f"hugetlb.{size}.max", str(limit)))
    if res.network and (res.network.get("classID") is not None or res.network.get("priorities")):
        raise SpecError("config.json: linux.resources.network (net_cls/net_prio) needs cgroup v1")
    for k, v in res.unified.items():
        if "/" in k or k.startswith("."):
            raise SpecError(f"config.json: linux.resources.unified key {k!r} is not a cgroup file name")
        out.append((k, v))
    # res.devices: cgroup v2 needs an eBPF program; not enforced (module docstring).
    return out


def controller_of(v2_file: str) -> str | None:
    """The v2 controller a file belongs to (``memory.max`` → memory), None for core files."""
    prefix = v2_file.split(".", 1)[0]
    return {"io": "io", "memory": "memory", "cpu": "cpu", "cpuset": "cpuset", "pids": "pids",
            "hugetlb": "hugetlb", "rdma": "rdma", "misc": "misc"}.get(prefix)


# --------------------------------------------------------------------------- host layout
@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: where, which version, its controllers."""

    mountpoint: str
    version: int  # 1 or 2
    controllers: tuple[str, ...]  # v1: from the mount options (name=X for named); v2: cgroup.controllers
    root: str = "/"  # the mount's root inside the hierarchy (mountinfo field 4)


def hierarchies(mountinfo: str | None = None) -> list[Hierarchy]:
    """The cgroup hierarchies mounted under /sys/fs/cgroup, from mountinfo."""
    if mountinfo is None:
        with open("/proc/self/mountinfo") as f:
            mountinfo = f.read()
    out, seen = [], set()
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        fstype, _src, sopts = (right.split() + ["", ""])[:3]
        mp = fields[4]
        if fstype not in ("cgroup", "cgroup2") or not (mp == CGROUP_ROOT or mp.startswith(CGROUP_ROOT + "/")):
            continue
        if fstype == "cgroup":
            ctrls = tuple(o for o in sopts.split(",") if o not in ("rw", "ro") and "=" not in o
                          and o not in ("noprefix", "clone_children", "xattr", "cpuset_v2_mode", "favordynmods"))
            named = tuple(o for o in sopts.split(",") if o.startswith("name="))
            key = ctrls + named
            if key in seen:
                continue
            seen.add(key)
            out.append(Hierarchy(mp, 1, key, fields[3]))
        else:
            try:
                with open(os.path.join(mp, "cgroup.controllers")) as f:
                    ctrls = tuple(f.read().split())
            except OSError:
                ctrls = ()
            out.append(Hierarchy(mp, 2, ctrls, fields[3]))
    return out


def own_cgroups(text: str | None = None) -> dict[str, str]:
    """This process's cgroup per hierarchy from /proc/self/cgroup: ``"cpu,cpuacct"`` / ``"name=systemd"`` /
    ``""`` (v2) → path."""
    if text is None:
        with open("/proc/self/cgroup") as f:
            text = f.read()
    out = {}
    for line in text.splitlines():
        _id, ctrls, path = line.split(":", 2)
        out[ctrls] = path
    return out


def resolve_dirs(cgroups_path: str, hier: list[Hierarchy], own: dict[str, str]) -> dict[str, str]:
    """{hierarchy key → directory} of the container's cgroup in each hierarchy.
    The key is the comma-joined controllers of a v1 hierarchy, ``""`` for v2."""
    out = {}
    for h in hier:
        key = ",".join(h.controllers) if h.version == 1 else ""
        if cgroups_path.startswith("/"):
            inner = cgroups_path
        else:
            inner = os.path.join(own.get(key, "/"), cgroups_path)
        # A mount of a subtree (inside a cgroup namespace): paths are relative to it.
        rel = os.path.normpath("/" + inner).lstrip("/")  # ".." cannot climb above the hierarchy's root
        out[key] = os.path.join(h.mountpoint, rel)
    return out


# --------------------------------------------------------------------------- the container's cgroup
@dataclass
class Cgroup:
    """The container's cgroup: one directory per hierarchy (``dirs``: key → path;
    key ``""`` is the v2 / unified one).  ``unified_only``: a v2 host."""

    dirs: dict[str, str]
    unified_only: bool = False
    created: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ lookup
    def dir_of(self, controller: str) -> str | None:
        """The v1 directory holding ``controller`` (or the v2 one on a v2 host)."""
        if self.unified_only:
            return self.dirs.get("")
        for key, d in self.dirs.items():
            if key and controller in key.split(","):
                return d
        return None

    @property
    def procs_dir(self) -> str | None:
        """Where to read the member processes: the freezer/pids (v1) or the unified directory."""
        for c in ("freezer", "pids", "memory", "cpu", "devices"):
            d = None if self.unified_only else self.dir_of(c)
            if d:
                return d
        return self.dirs.get("") or next(iter(self.dirs.values()), None)

    # ------------------------------------------------------------ create / join / destroy
    @classmethod
    def for_container(cls, cgroups_path: str | None, cid: str) -> "Cgroup":
        """The cgroup a container with ``cgroupsPath`` (None: ``/ketch/<id>``) gets on this host."""
        hier = hierarchies()
        if not hier:
            raise KetchError("no cgroup hierarchy is mounted under /sys/fs/cgroup")
        unified_only = any(h.mountpoint == CGROUP_ROOT and h.version == 2 for h in hier)
        if unified_only:
            hier = [h for h in hier if h.mountpoint == CGROUP_ROOT]
        path = cgroups_path or f"/ketch/{cid}"
        if ":" in path and not path.startswith("/"):
            raise SpecError(f"config.json: linux.cgroupsPath {path!r} is a systemd slice:unit path; "
                            "ketch-runtime has no systemd cgroup driver")
        return cls(resolve_dirs(path, hier, own_cgroups()), unified_only)

    def create(self, res: Resources | None, extra_devices: tuple = ()) -> None:
        """Make the directories and write the limits.  Raises KetchError naming
        the file that could not be written (and removes what it made)."""
        try:
            for key, d in self.dirs.items():
                self._mkdir(d, key)
            if res is not None:
                self.set(res, extra_devices)
        except BaseException:
            self.destroy()
            raise

    def _mkdir(self, d: str, key: str) -> None:
        for attempt in range(5):
            parts = []
            p = d
            while not os.path.isdir(p):
                parts.append(p)
                p = os.path.dirname(p)
            try:
                for p in reversed(parts):
                    try:
                        os.mkdir(p)
                    except FileExistsError:
                        continue
                    self.created.append(p)
                    if key and "cpuset" in key.split(","):
                        _copy_cpuset(p)
                return
            except FileNotFoundError:  # a parent removed meanwhile by another container's delete
                continue
            except OSError as e:
                raise KetchError(f"creating cgroup {p}: {e.strerror}") from None
        raise KetchError(f"creating cgroup {d}: its parent keeps disappearing")

    def set(self, res: Resources, extra_devices: tuple = ()) -> None:
        """Write the limits of ``res`` (also ``update`` of a running container)."""
        if self.unified_only:
            d = self.dirs[""]
            files = v2_files(res, bfq=os.path.exists(os.path.join(d, "io.bfq.weight")))
            _enable_controllers(d, {c for f, _ in files if (c := controller_of(f))})
            for f, v in files:
                _write(os.path.join(d, f), v)
            return
        for ctrl, f, v in v1_files(res, extra_devices):
            d = self.dir_of(ctrl)
            if d is None and ctrl == "hugetlb" and "" in self.dirs:  # hybrid: hugetlb only on the unified side
                d = self.dirs[""]
                _enable_controllers(d, {"hugetlb"})
                f = f.replace(".limit_in_bytes", ".max")
            if d is None:
                raise KetchError(f"cannot apply {f}: the {ctrl} cgroup controller is not mounted on this host")
            _write(os.path.join(d, f), v)

    def join(self, pid: int = 0) -> None:
        """Move process ``pid`` (0: the caller) into every directory."""
        for d in self.dirs.values():
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def pids(self) -> list[int]:
        """The processes in the container's cgroup."""
        d = self.procs_dir
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                return [int(x) for x in f.read().split()]
        except (OSError, TypeError):
            return []

    def destroy(self) -> None:
        """Remove the directories this container's ``create`` made (a
        ``cgroupsPath`` that existed before is left alone): its own, killing
        what is still inside, then its now-empty parents."""
        made = set(self.created)
        for d in self.dirs.values():
            if d in made:
                _rmdir_retry(d, self)
        for p in sorted(made - set(self.dirs.values()), key=len, reverse=True):
            try:
                os.rmdir(p)
            except OSError:
                pass
        self.created = [p for p in self.created if os.path.isdir(p)]

    # ------------------------------------------------------------ freezer
    def freezer(self) -> tuple[str, str, str, str] | None:
        """(file, frozen value, thawed value, kind) of the freezer, or None."""
        if self.unified_only:
            return os.path.join(self.dirs[""], "cgroup.freeze"), "1", "0", "v2"
        d = self.dir_of("freezer")
        if d:
            return os.path.join(d, "freezer.state"), "FROZEN", "THAWED", "v1"
        if "" in self.dirs and os.path.exists(os.path.join(self.dirs[""], "cgroup.freeze")):
            return os.path.join(self.dirs[""], "cgroup.freeze"), "1", "0", "v2"
        return None

    def frozen(self) -> bool:
        fz = self.freezer()
        if fz is None:
            return False
        try:
            with open(fz[0] if fz[3] == "v1" else os.path.join(os.path.dirname(fz[0]), "cgroup.events")) as f:
                text = f.read()
        except OSError:
            return False
        return text.strip() == "FROZEN" if fz[3] == "v1" else "frozen 1" in text

    def freeze(self, on: bool = True) -> None:
        """Freeze (or thaw) every process of the container and wait until done."""
        fz = self.freezer()
        if fz is None:
            raise KetchError("the container has no freezer cgroup (no freezer controller on this host)")
        path, frozen, thawed, kind = fz
        _write(path, frozen if on else thawed)
        for _ in range(1000):
            if self.frozen() == on:
                return
            if kind == "v1" and on:
                _write(path, frozen)  # v1 may stay FREEZING while tasks fork; ask again
            time.sleep(0.001)
        raise KetchError(f"cgroup {os.path.dirname(path)} did not {'freeze' if on else 'thaw'}")

    def kill_all(self, sig: int) -> None:
        """Send ``sig`` to every process in the cgroup, frozen meanwhile so no
        new ones escape (runc's signalAllProcesses)."""
        can_freeze = self.freezer() is not None
        was_frozen = can_freeze and self.frozen()
        if can_freeze and not was_frozen:
            self.freeze(True)
        try:
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        finally:
            if can_freeze and not was_frozen:
                self.freeze(False)

    def to_json(self) -> dict:
        return {"dirs": self.dirs, "unified_only": self.unified_only, "created": self.created}

    @classmethod
    def from_json(cls, d: dict) -> "Cgroup":
        return cls(dict(d["dirs"]), bool(d.get("unified_only")), list(d.get("created") or []))


def _write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KetchError(f"cgroup: cannot open {path}: {e.strerror}") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise KetchError(f"cgroup: writing {value!r} to {path}: {e.strerror}") from None
    finally:
        os.close(fd)


def _copy_cpuset(d: str) -> None:
    """A new v1 cpuset cgroup starts with empty cpus/mems, which no task may
    join: copy the parent's (runc's ensureParent)."""
    parent = os.path.dirname(d)
    for f in ("cpuset.cpus", "cpuset.mems"):
        try:
            with open(os.path.join(d, f)) as fh:
                if fh.read().strip():
                    continue
            with open(os.path.join(parent, f)) as fh:
                _write(os.path.join(d, f), fh.read().strip())
        except FileNotFoundError:
            return


def _enable_controllers(d: str, ctrls: set[str]) -> None:
    """Enable ``ctrls`` in ``cgroup.subtree_control`` of every ancestor of ``d`` (cgroup v2)."""
    if not ctrls:
        return
    root = d
    chain = []
    while True:
        parent = os.path.dirname(root)
        if not os.path.exists(os.path.join(parent, "cgroup.subtree_control")):
            break
        chain.append(parent)
        root = parent
    for p in reversed(chain):
        try:
            with open(os.path.join(p, "cgroup.subtree_control")) as f:
                have = set(f.read().split())
        except OSError:
            continue
        missing = ctrls - have
        if missing:
            _write(os.path.join(p, "cgroup.subtree_control"), " ".join("+" + c for c in sorted(missing)))


def _rmdir_retry(d: str, cg: Cgroup) -> None:
    for i in range(200):
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise KetchError(f"removing cgroup {d}: {e.strerror}") from None
        # Still populated: kill what is left (a process that outlived PID 1's namespace
        # is impossible, but a cgroup shared with another container's process is not).
        try:
            with open(os.path.join(d, "cgroup.procs")) as f:
                left = [int(x) for x in f.read().split()]
        except OSError:
            left = []
        if cg.frozen():
            try:
                cg.freeze(False)
            except KetchError:
                pass
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005 if i < 20 else 0.05)
    raise KetchError(f"removing cgroup {d}: still busy")
