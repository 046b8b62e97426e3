"""Verdicts: will this image's userland work on that kernel (and seccomp profile)?

Each program gets ``works``, ``degraded`` or ``fails`` with a one-line
reason and a remedy; the image gets one too.  The rules, worst first:

* wrong architecture (``exec format error``), or i386 without
  ``CONFIG_IA32_EMULATION`` → fails;
* a missing program interpreter (``PT_INTERP``) → fails (exit 127);
* ``NT_GNU_ABI_TAG`` (of the program, or of the image's glibc for a dynamic
  one) newer than the kernel → fails, glibc prints ``FATAL: kernel too old``;
* ``GLIBC_x.y`` required but newer than the image's glibc → fails;
* the vsyscall page: executed under ``vsyscall=none``, or read under
  ``xonly``/``none`` → fails with SIGSEGV (exit 139);
* a system call newer than the kernel: ``degraded`` if the C library falls
  back on ENOSYS (:data:`~ketch.compat.tables.FALLBACKS`) or the call is made
  inside a static binary's C library (which was built to cope with the
  kernels its ABI tag admits), ``fails`` when the program asks for it itself
  (an imported wrapper, its own ``syscall`` instruction) with no fallback;
* a seccomp profile answering a call with an errno other than ENOSYS where
  the C library only falls back on ENOSYS → fails (glibc ≥ 2.34's clone3
  under an EPERM profile); blocked calls without a fallback → degraded.

The image verdict is the entrypoint's when that fails, else ``degraded``
if any program is not ``works``.
"""

from __future__ import annotations

import errno as _errno
import json
from dataclasses import dataclass, field
from pathlib import Path

from ketch.compat.elf import VSYSCALL_FUNCTIONS, ElfInfo, glibc_tag_version
from ketch.compat.host import KernelProfile, format_version, parse_version
from ketch.compat.tables import (STARTUP_CALLS, Version, calls_of_function, fallback_for, syscalls,
                                 vtuple)

RANK = {"works": 0, "degraded": 1, "fails": 2}
ENOSYS = _errno.ENOSYS
EPERM = _errno.EPERM


# --------------------------------------------------------------------------
# Seccomp profiles (Docker's JSON format)


@dataclass(frozen=True)
class SeccompPolicy:
    """What a seccomp profile answers.  ``default_action`` None means no filter."""

    name: str
    default_action: str | None = None
    default_errno: int = EPERM
    rules: dict = field(default_factory=dict)      # syscall -> (action, errno, conditional)
    note: str = ""

    @classmethod
    def unconfined(cls, note: str = "") -> "SeccompPolicy":
        return cls("unconfined", note=note)

    @classmethod
    def from_file(cls, path: str | Path) -> "SeccompPolicy":
        """Parse a Docker/moby seccomp profile (ValueError when it is not one)."""
        try:
            doc = json.loads(Path(path).read_text())
        except OSError as e:
            raise ValueError(f"cannot read seccomp profile {path}: {e.strerror}") from None
        except ValueError as e:
            raise ValueError(f"seccomp profile {path} is not JSON: {e}") from None
        if not isinstance(doc, dict) or "defaultAction" not in doc:
            raise ValueError(f"seccomp profile {path} has no defaultAction")
        default_errno = int(doc.get("defaultErrnoRet") or EPERM)
        rules: dict = {}
        for rule in doc.get("syscalls") or ():
            inc = rule.get("includes") or {}
            exc = rule.get("excludes") or {}
            if inc.get("caps") or inc.get("minKernel"):
                continue   # granted only with capabilities/kernels we do not assume
            arches = inc.get("arches")
            if arches and not {"amd64", "x86_64", "x32"} & set(arches):
                continue
            if {"amd64", "x86_64"} & set(exc.get("arches") or ()):
                continue
            names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
            action = rule.get("action", "")
            err = int(rule.get("errnoRet") or EPERM)
            for n in names:
                prev = rules.get(n)
                cond = bool(rule.get("args"))
                if prev and prev[0] == "SCMP_ACT_ALLOW" and not prev[2]:
                    continue   # an unconditional allow wins
                rules[n] = (action, err, cond)
        return cls(str(path), doc["defaultAction"], default_errno, rules)

    def answer(self, syscall: str) -> tuple[str, int | None]:
        """(``allow``|``errno``|``kill``|``trap``, errno) for ``syscall``."""
        if self.default_action is None:
            return "allow", None
        action, err, _cond = self.rules.get(syscall, (self.default_action, self.default_errno, False))
        if action in ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE"):
            return "allow", None
        if action == "SCMP_ACT_ERRNO":
            return "errno", err
        if action in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS"):
            return "kill", None
        if action == "SCMP_ACT_TRAP":
            return "trap", None
        return "errno", err


def load_policy(spec: str | None) -> SeccompPolicy:
    """``--seccomp`` value → policy: ``unconfined``, ``default`` or a profile file."""
    if spec in (None, "", "unconfined"):
        return SeccompPolicy.unconfined()
    if spec == "default":
        return SeccompPolicy.unconfined(note="ketch has no default seccomp profile yet: nothing is filtered")
    return SeccompPolicy.from_file(spec)


# --------------------------------------------------------------------------
# Verdicts


@dataclass
class Verdict:
    path: str
    verdict: str
    reason: str
    remedy: str
    libc: str
    kind: str
    findings: list[dict] = field(default_factory=list)
    syscalls_new: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)     # other names of the same file (hard links)
    facts: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"path": self.path, "links": self.links, "verdict": self.verdict, "reason": self.reason,
                "remedy": self.remedy, "libc": self.libc, "kind": self.kind, "facts": self.facts,
                "findings": self.findings}


@dataclass
class ImageLibc:
    family: str | None
    version: str | None
    path: str | None
    abi_tag: str | None
    vsyscall_functions: dict[str, str]      # function -> "exec"/"read" (old glibc's time() …)

    def label(self) -> str:
        if not self.family:
            return "-"
        return f"{self.family} {self.version}" if self.version else self.family

    @property
    def vtuple(self) -> Version | None:
        try:
            return vtuple(self.version) if self.version else None
        except ValueError:
            return None


def image_libc(elf: dict[str, ElfInfo]) -> ImageLibc:
    """The image's C library: the shared one if present, else the most common static one."""
    for fam, pred in (("glibc", lambda p, i: i.soname == "libc.so.6"),
                      ("musl", lambda p, i: i.libc == "musl" and i.kind == "library"
                       and (i.soname or p).split("/")[-1].startswith(("libc.musl", "ld-musl"))),
                      ("uclibc", lambda p, i: (i.soname or "").startswith(("libc.so.0", "libuClibc", "ld-uClibc")))):
        for p, i in sorted(elf.items()):
            if pred(p, i):
                funcs = {r.function: r.kind for r in i.vsyscall if r.function}
                return ImageLibc(fam, i.libc_version, "/" + p, i.abi_tag, funcs)
    counts: dict[tuple, int] = {}
    for i in elf.values():
        if i.is_program and i.libc:
            k = (i.libc, i.libc_version)
            counts[k] = counts.get(k, 0) + 1
    if counts:
        (fam, ver), _ = max(counts.items(), key=lambda kv: kv[1])
        return ImageLibc(fam, ver, None, None, {})
    return ImageLibc(None, None, None, None, {})


def _kernel_label(k: KernelProfile) -> str:
    return f"target kernel {k.version_str}" if "kernel" in k.overrides else f"host kernel {k.version_str}"


def _errname(n: int | None) -> str:
    return _errno.errorcode.get(n or 0, str(n))


class Judge:
    """Computes verdicts for the programs of one scanned image."""

    def __init__(self, kernel: KernelProfile, policy: SeccompPolicy, elf: dict[str, ElfInfo],
                 interp_exists=None):
        self.k = kernel
        self.policy = policy
        self.elf = elf
        self.libc = image_libc(elf)
        self.interp_exists = interp_exists or (lambda path: True)
        self.table = syscalls().by_name
        self.kl = _kernel_label(kernel)

    def judge(self, path: str, info: ElfInfo) -> Verdict:
        found: list[tuple[str, str, str]] = []     # (level, reason, remedy)
        name = path.rsplit("/", 1)[-1]
        libc_fam = info.libc
        static = info.kind in ("static", "static-pie")
        libc_ver = info.libc_version if static or info.kind == "library" else self.libc.version
        if not static and info.kind != "library" and libc_fam == self.libc.family:
            libc_ver = self.libc.version
        libc_label = f"{libc_fam} {libc_ver}" if libc_fam and libc_ver else (libc_fam or "-")
        if static and libc_fam:
            libc_label += " (static)"
        lv = None
        try:
            lv = vtuple(libc_ver) if libc_ver else None
        except ValueError:
            pass

        if info.error:
            found.append(("degraded", f"unreadable ELF ({info.error})", "check the file"))
        host_arch = self.k.machine
        if info.arch != host_arch and not info.error:
            if info.arch == "i386" and host_arch == "x86_64":
                if self.k.config_enabled("CONFIG_IA32_EMULATION") is False:
                    found.append(("fails", "32-bit x86 binary; kernel built without CONFIG_IA32_EMULATION"
                                  " → exec format error", "use a 64-bit image or a kernel with IA32 emulation"))
            else:
                found.append(("fails", f"{info.arch} binary on an {host_arch} kernel → exec format error"
                              " (exit 126)", f"use the image's linux/{_docker_arch(host_arch)} variant"
                              " or register qemu-user with binfmt_misc"))
        if info.interp and not self.interp_exists(info.interp):
            found.append(("fails", f"interpreter {info.interp} is not in the image → exec fails with"
                          " ENOENT (exit 127)", "install the C library the binary was built for"))

        # ABI tag: the program's, and (dynamic glibc programs) the C library's.
        abi = info.abi_tag
        if not static and libc_fam == "glibc" and self.libc.abi_tag:
            if abi is None or parse_version(self.libc.abi_tag) > parse_version(abi):
                abi = self.libc.abi_tag
        if abi and parse_version(abi) > self.k.version:
            found.append(("fails", f"ELF ABI tag requires Linux ≥ {abi}; {self.kl} is older →"
                          " 'FATAL: kernel too old' (exit 127/SIGSEGV)",
                          f"run on Linux ≥ {abi} or use an image built for older kernels"))

        if info.glibc_needed and libc_fam == "glibc" and not static and self.libc.vtuple:
            need = info.glibc_needed[-1]
            nv = glibc_tag_version(need)
            if nv and nv > self.libc.vtuple:
                found.append(("fails", f"needs {need}, the image has glibc {self.libc.version} →"
                              f" 'version `{need}' not found' (exit 1)", "rebuild against the image's glibc"))

        # vsyscall page.
        refs: list[tuple[str, str]] = []       # (what, kind)
        for r in info.vsyscall:
            refs.append((f"{r.function}()" if r.function else f"0x{r.target:x}", r.kind))
        if not static and libc_fam == self.libc.family:
            for fn in info.imports:
                if fn in self.libc.vsyscall_functions and fn in VSYSCALL_FUNCTIONS:
                    refs.append((f"{fn}()", self.libc.vsyscall_functions[fn]))
        if refs:
            what, kind = refs[0]
            bad = [(w, kd) for w, kd in refs if self.k.vsyscall == "none"
                   or (self.k.vsyscall == "xonly" and kd == "read")]
            mode = self.k.vsyscall or "unknown"
            src = "target" if "vsyscall" in self.k.overrides else "host"
            if bad:
                what, kind = bad[0]
                verb = "reads" if kind == "read" else "calls"
                found.append(("fails", f"{verb} {what} via the vsyscall page; {src} has vsyscall={mode} →"
                              " SIGSEGV (exit 139)",
                              "boot with vsyscall=emulate or use an image with glibc ≥ 2.14"))
            elif self.k.vsyscall is None:
                found.append(("degraded", f"uses the vsyscall page ({what}); the vsyscall mode is unknown",
                              "check /proc/self/maps for [vsyscall]"))

        # System calls: which, from where.
        calls: dict[str, str] = {}      # syscall -> origin ("direct", "import f", "startup")
        by_nr = syscalls().by_nr
        # A library's own syscall instructions are wrappers it offers, not calls it makes:
        # programs are judged by what they import.  Only programs count them.
        for nr in (info.syscalls if info.kind != "library" else ()):
            s = by_nr.get(nr)
            if s:
                calls.setdefault(s.name, "libc" if static else "direct")
        if not static and info.kind != "library":
            for fn in info.imports:
                for sc in calls_of_function(libc_fam, lv, fn):
                    calls.setdefault(sc, f"{fn}()")
            for fam, since, sc in STARTUP_CALLS:
                if fam == libc_fam and lv and lv >= since:
                    calls.setdefault(sc, "startup")
        new: list[str] = []
        for sc, origin in sorted(calls.items()):
            s = self.table.get(sc)
            if s is None or s.kernel is None:
                continue
            # The C library's fallback only helps calls it makes, not the program's own instructions.
            fb = fallback_for(libc_fam, lv, sc) if origin != "direct" else None
            if s.kernel > self.k.version:
                new.append(sc)
                kv = format_version(s.kernel)
                via = "" if origin in ("direct", "libc", "startup") else f" (via {origin})"
                if fb:
                    found.append(("degraded", f"{sc}{via} needs Linux {kv}; {self.kl} answers ENOSYS and"
                                  f" {libc_fam} falls back to {fb.instead}", f"Linux ≥ {kv} for the fast path"))
                elif origin in ("libc", "startup"):
                    found.append(("degraded", f"its C library may call {sc} (Linux {kv}); {self.kl}"
                                  " answers ENOSYS", f"Linux ≥ {kv}"))
                else:
                    found.append(("fails", f"calls {sc}{via} (Linux {kv}); {self.kl} answers ENOSYS and"
                                  " there is no fallback", f"run on Linux ≥ {kv}"))
            action, err = self.policy.answer(sc)
            if action == "allow":
                continue
            via = "" if origin in ("direct", "libc", "startup") else f" (via {origin})"
            if action in ("kill", "trap"):
                found.append(("fails", f"seccomp profile kills on {sc}{via} (SIGSYS, exit 159)",
                              f"allow {sc} in the profile"))
            elif fb and err != ENOSYS and (fb.on == "ENOSYS"):
                found.append(("fails", f"seccomp answers {sc}{via} with {_errname(err)}; {libc_fam} falls back"
                              " only on ENOSYS → the call fails",
                              f"make the profile return ENOSYS (errnoRet {ENOSYS}) for {sc}, or --seccomp unconfined"))
            elif fb:
                found.append(("degraded", f"seccomp answers {sc}{via} with {_errname(err)}; {libc_fam} falls back"
                              f" to {fb.instead}", f"allow {sc} in the profile"))
            elif origin not in ("libc",):
                found.append(("degraded", f"seccomp answers {sc}{via} with {_errname(err)}",
                              f"allow {sc} in the profile if the program needs it"))

        facts = {"arch": info.arch, "interp": info.interp, "abi_tag": info.abi_tag,
                 "glibc_needed": info.glibc_needed[-1] if info.glibc_needed else None,
                 "vsyscall": [f"{r.kind} 0x{r.target:x}" + (f" in {r.function}()" if r.function else "")
                              for r in info.vsyscall],
                 "syscalls": sorted(calls), "syscalls_unknown": info.syscalls_unknown,
                 "newer_than_kernel": new}
        if not found:
            return Verdict(path, "works", "", "", libc_label, info.kind, syscalls_new=new, facts=facts)
        found.sort(key=lambda f: -RANK[f[0]])
        level, reason, remedy = found[0]
        return Verdict(path, level, f"{name}: {reason}", remedy, libc_label, info.kind,
                       [{"verdict": lv_, "reason": r, "remedy": m} for lv_, r, m in found], new, facts=facts)


def _docker_arch(machine: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


@dataclass
class ImageReport:
    image: str
    verdict: str
    reason: str
    remedy: str
    libc: ImageLibc
    entrypoint: str | None
    kernel: KernelProfile
    policy: SeccompPolicy
    binaries: list[Verdict]
    libraries: list[Verdict]
    scan: dict

    def counts(self) -> dict[str, int]:
        c = {"works": 0, "degraded": 0, "fails": 0}
        for b in self.binaries:
            c[b.verdict] += 1
        return c

    def to_json(self, all_files: bool = True) -> dict:
        return {
            "image": self.image, "verdict": self.verdict, "reason": self.reason, "remedy": self.remedy,
            "libc": {"family": self.libc.family, "version": self.libc.version, "path": self.libc.path,
                     "abi_tag": self.libc.abi_tag},
            "entrypoint": self.entrypoint,
            "kernel": self.kernel.to_json(),
            "seccomp": {"profile": self.policy.name, "defaultAction": self.policy.default_action,
                        "note": self.policy.note},
            "counts": self.counts(),
            "scan": self.scan,
            "binaries": [b.to_json() for b in self.binaries if all_files or b.verdict != "works"
                         or b.path == self.entrypoint],
            "libraries": [b.to_json() for b in self.libraries if all_files or b.verdict != "works"],
        }


def judge_image(name: str, view, config, kernel: KernelProfile, policy: SeccompPolicy,
                scan_stats: dict | None = None) -> ImageReport:
    """Verdicts for every ELF program and library of a merged image ``view``
    (:class:`~ketch.compat.scan.MergedView`); ``config`` is the image's ExecConfig."""
    judge = Judge(kernel, policy, view.elf, interp_exists=lambda p: view.resolve(p) is not None)
    argv = list(config.Entrypoint or ()) + list(config.Cmd or ())
    entry = None
    if argv:
        rel = view.which(argv[0], config.Env)
        entry = "/" + rel if rel else None
    groups: dict[int, list[str]] = {}          # one verdict per file, hard links listed with it
    for rel, info in view.elf.items():
        groups.setdefault(id(info), []).append("/" + rel)
    progs, libs = [], []
    for names in groups.values():
        names.sort(key=lambda n: (n != entry, n.count("/"), n))
        info = view.elf[names[0][1:]]
        v = judge.judge(names[0], info)
        v.links = names[1:]
        (progs if info.is_program else libs).append(v)
    progs.sort(key=lambda v: v.path)
    libs.sort(key=lambda v: v.path)
    worst = max(progs + libs, key=lambda v: RANK[v.verdict], default=None)
    ev = next((v for v in progs if v.path == entry), None)
    libc_v = next((v for v in libs if judge.libc.path and v.path == judge.libc.path), None)
    if ev is not None and ev.verdict == "fails":
        verdict, reason, remedy = "fails", ev.reason, ev.remedy
    elif libc_v is not None and libc_v.verdict == "fails":
        verdict, reason, remedy = "fails", libc_v.reason, libc_v.remedy
    elif worst is None or worst.verdict == "works":
        verdict, reason, remedy = "works", "every program works on this kernel", ""
    else:
        bad = [v for v in progs if v.verdict != "works"]
        nf = sum(v.verdict == "fails" for v in progs)
        nd = len(bad) - nf
        first = next((v for v in bad if v.verdict == "fails"), bad[0] if bad else worst)
        verdict = "degraded"
        parts = []
        if nf:
            parts.append(f"{nf} program(s) fail")
        if nd:
            parts.append(f"{nd} degraded")
        lead = ", ".join(parts) or "some libraries are affected"
        entry_note = f" (entrypoint {entry} {ev.verdict})" if ev else ""
        reason, remedy = f"{lead}{entry_note}; e.g. {first.reason}", first.remedy
    return ImageReport(name, verdict, reason, remedy, judge.libc, entry, kernel, policy, progs, libs,
                       scan_stats or {})
