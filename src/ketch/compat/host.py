"""The kernel a container will run on: the host's facts, or a *target* that overrides them.

Everything is read from the host without privileges (``/proc``, ``/boot``,
``uname``); a fact that cannot be read is ``None``, never guessed.  A target
profile (``ketch compat --kernel 3.10 --vsyscall none``) is the host profile
with those fields replaced, so verdicts are computed the same way for both.

vsyscall (``Documentation/admin-guide/kernel-parameters.txt`` "vsyscall="):
the legacy page at 0xffffffffff600000 is

* ``emulate`` — readable and callable (the ``[vsyscall]`` line of
  ``/proc/self/maps`` is ``r-xp``);
* ``xonly`` — calls are emulated, reads fault (``--xp``; the default since 5.x);
* ``none`` — absent (no ``[vsyscall]`` line): any use is SIGSEGV.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

VSYSCALL_MODES = ("emulate", "xonly", "none")

# Kernel config options worth showing (and that verdicts consult when known).
CONFIG_KEYS = (
    "CONFIG_SECCOMP", "CONFIG_SECCOMP_FILTER", "CONFIG_USER_NS", "CONFIG_TIME_NS", "CONFIG_CGROUPS",
    "CONFIG_OVERLAY_FS", "CONFIG_IA32_EMULATION", "CONFIG_X86_X32_ABI", "CONFIG_X86_VSYSCALL_EMULATION",
    "CONFIG_LEGACY_VSYSCALL_EMULATE", "CONFIG_LEGACY_VSYSCALL_XONLY", "CONFIG_LEGACY_VSYSCALL_NONE",
)


def parse_version(text: str) -> tuple[int, int, int]:
    """``"6.18.44-fc-v595"`` → ``(6, 18, 44)``; ``"3.10"`` → ``(3, 10, 0)``; ValueError otherwise."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not m:
        raise ValueError(f"not a kernel version: {text!r} (expected X.Y or X.Y.Z)")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def format_version(v: tuple[int, ...]) -> str:
    """``(3, 10, 0)`` → ``"3.10"``; ``(2, 6, 32)`` → ``"2.6.32"``."""
    return ".".join(str(x) for x in (v if len(v) < 3 or v[2] else v[:2]))


@dataclass(frozen=True)
class KernelProfile:
    """What the kernel offers a container.

    ``release`` is uname's string (or the ``--kernel`` value); ``version`` its
    numeric part.  ``vsyscall`` is one of :data:`VSYSCALL_MODES` (``None`` if
    unknown) and ``vsyscall_source`` says where it came from (``maps``,
    ``cmdline``, ``config``, ``--vsyscall``).  ``config`` holds the
    :data:`CONFIG_KEYS` found (``"y"``, ``"m"`` or ``"n"``), empty if no config
    was readable.  ``target`` is True for a profile built from command-line
    overrides.
    """

    release: str
    version: tuple[int, int, int]
    machine: str
    vsyscall: str | None
    vsyscall_source: str
    vsyscall_cmdline: str | None = None
    config_source: str | None = None
    config: dict[str, str] = field(default_factory=dict)
    seccomp: bool | None = None
    namespaces: dict[str, bool] = field(default_factory=dict)
    overlayfs: bool | None = None
    cgroup: str | None = None          # "v1", "v2", "hybrid" or None
    target: bool = False
    overrides: tuple[str, ...] = ()

    @property
    def version_str(self) -> str:
        return format_version(self.version)

    def config_enabled(self, key: str) -> bool | None:
        """True/False when the kernel config is known and names ``key``; None when unknown."""
        if not self.config:
            return None
        return self.config.get(key, "n") in ("y", "m")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["version"] = self.version_str
        d["overrides"] = list(self.overrides)
        return d

    def with_target(self, kernel: str | None = None, vsyscall: str | None = None) -> "KernelProfile":
        """This profile with ``--kernel``/``--vsyscall`` applied (ValueError for bad values)."""
        changes: dict = {}
        overrides = list(self.overrides)
        if kernel:
            v = parse_version(kernel)
            changes.update(release=kernel.strip(), version=v)
            overrides.append("kernel")
        if vsyscall:
            if vsyscall not in VSYSCALL_MODES:
                raise ValueError(f"unknown vsyscall mode {vsyscall!r} (emulate, xonly or none)")
            changes.update(vsyscall=vsyscall, vsyscall_source="--vsyscall")
            overrides.append("vsyscall")
        if not changes:
            return self
        return dataclasses.replace(self, target=True, overrides=tuple(overrides), **changes)


# --------------------------------------------------------------------------
# Probes (each takes the path it reads, so tests can point it at a fixture)


def vsyscall_from_maps(maps: str) -> str:
    """Mode from the text of ``/proc/self/maps``: ``r-xp`` emulate, ``--xp`` xonly, no line none."""
    for line in maps.splitlines():
        if line.rstrip().endswith("[vsyscall]"):
            perms = line.split()[1]
            return "emulate" if perms.startswith("r") else "xonly"
    return "none"


def vsyscall_from_cmdline(cmdline: str) -> str | None:
    """The ``vsyscall=`` boot parameter, if given (last one wins, as the kernel's parser)."""
    found = None
    for word in cmdline.split():
        if word == "--":
            break   # the rest goes to init
        if word.startswith("vsyscall="):
            found = word.split("=", 1)[1]
    return found


def parse_kernel_config(text: str) -> dict[str, str]:
    """``CONFIG_X=y`` / ``# CONFIG_X is not set`` lines → ``{"CONFIG_X": "y"|"m"|"n"|value}``."""
    out = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_"):
            k, _, v = line.partition("=")
            out[k] = v.strip('"')
        else:
            m = re.match(r"# (CONFIG_\w+) is not set", line)
            if m:
                out[m.group(1)] = "n"
    return out


def read_kernel_config(release: str, proc: Path = Path("/proc"), boot: Path = Path("/boot")
                       ) -> tuple[str | None, dict[str, str]]:
    """(source path, options) from /proc/config.gz or /boot/config-RELEASE; (None, {}) if neither."""
    for path in (proc / "config.gz", boot / f"config-{release}"):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                continue
        return str(path), parse_kernel_config(data.decode("utf-8", "replace"))
    return None, {}


def cgroup_mode(mountinfo: str) -> str | None:
    """``v2`` (cgroup2 at /sys/fs/cgroup), ``v1`` (only v1 hierarchies), ``hybrid`` (both), None."""
    v1 = v2 = False
    for line in mountinfo.splitlines():
        parts = line.split(" - ", 1)
        if len(parts) != 2:
            continue
        fstype = parts[1].split()[0]
        if fstype == "cgroup2":
            v2 = True
        elif fstype == "cgroup":
            v1 = True
    if v1 and v2:
        return "hybrid"
    return "v2" if v2 else "v1" if v1 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def probe(proc: Path = Path("/proc"), boot: Path = Path("/boot")) -> KernelProfile:
    """The running kernel's profile."""
    u = os.uname()
    release = u.release
    maps = _read(proc / "self/maps")
    cmdline = _read(proc / "cmdline") or ""
    cmd_vs = vsyscall_from_cmdline(cmdline)
    config_source, config = read_kernel_config(release, proc, boot)
    config = {k: v for k, v in config.items() if k in CONFIG_KEYS}
    if maps is not None:
        vs, vs_src = vsyscall_from_maps(maps), "/proc/self/maps"
    elif cmd_vs in VSYSCALL_MODES:
        vs, vs_src = cmd_vs, "/proc/cmdline"
    else:
        vs, vs_src = None, "unknown"
    status = _read(proc / "self/status") or ""
    m = re.search(r"^Seccomp:\s*(\d+)", status, re.M)
    # The Seccomp field exists iff CONFIG_SECCOMP; filters need CONFIG_SECCOMP_FILTER too.
    seccomp: bool | None = None
    if config:
        seccomp = config.get("CONFIG_SECCOMP_FILTER") == "y"
    elif m is not None:
        seccomp = True
    elif status:
        seccomp = False
    ns = {}
    for name in ("user", "cgroup", "time", "pid", "net", "ipc", "uts", "mnt"):
        ns[name] = os.path.exists(proc / "self/ns" / name)
    fs = _read(proc / "filesystems")
    overlay = None if fs is None else any(line.split()[-1:] == ["overlay"] for line in fs.splitlines())
    mi = _read(proc / "self/mountinfo")
    try:
        version = parse_version(release)
    except ValueError:
        version = (0, 0, 0)
    return KernelProfile(release=release, version=version, machine=u.machine, vsyscall=vs,
                         vsyscall_source=vs_src, vsyscall_cmdline=cmd_vs, config_source=config_source,
                         config=config, seccomp=seccomp, namespaces=ns, overlayfs=overlay,
                         cgroup=cgroup_mode(mi) if mi is not None else None)
