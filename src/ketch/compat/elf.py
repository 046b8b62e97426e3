"""Static facts about one ELF file: what it asks of the kernel.

:func:`scan_file` returns an :class:`ElfInfo` (plain data, JSON-able for the
cache).  ELF structures are read with pyelftools; x86-64 code is decoded with
capstone, but only around places a byte search found first, so a 2 MB libc
costs a few thousand decoded instructions, not half a million:

* **direct system calls** (the static pattern of sysfilter and B-Side): every
  ``0f 05`` in an executable segment is decoded in a window that ends on it;
  the decode is accepted only if it lands exactly on a ``syscall``; then a
  bounded backwards walk looks for the instruction that set ``eax``/``rax``
  (``mov eax, imm`` / ``xor eax, eax``).  Numbers that come from elsewhere (the
  generic ``syscall()`` function, a register) are counted as unknown.
* **the legacy vsyscall page** (0xffffffffff600000–0xffffffffff600fff): every
  4-byte little-endian value ``0xff600XYZ`` in executable code (how both a
  sign-extended imm32/disp32 and an imm64 begin) is decoded in a window and
  kept if an instruction's operand names the page.  ``mov reg, imm`` (then
  ``call reg`` or, in an IFUNC resolver, ``ret``) *executes* the page, which
  ``vsyscall=xonly`` still emulates; a memory operand *reads* it, which only
  ``vsyscall=emulate`` allows.
* **libc identity**: ``DT_NEEDED``/``PT_INTERP`` for dynamic binaries; for the
  C library itself, its version string (glibc ``GNU C Library … version
  2.41``; musl keeps the bare ``1.2.5`` next to ``musl libc``); for static
  binaries, strings only one library has (musl's ``No error information``,
  uClibc's ``Unknown signal `` without a format, glibc's ``GLIBC``).
"""

from __future__ import annotations

import functools
import mmap
import os
import re
from dataclasses import asdict, dataclass, field

SCANNER_VERSION = 1
VSYSCALL_START = 0xFFFFFFFFFF600000
VSYSCALL_END = 0xFFFFFFFFFF601000
ELF_MAGIC = b"\x7fELF"
MIN_SIZE = 64                 # smaller than an ELF header: not worth opening with pyelftools

# Functions old C libraries implemented through the vsyscall page.
VSYSCALL_FUNCTIONS = ("time", "gettimeofday", "getcpu", "sched_getcpu", "clock_gettime")

_MACHINES = {"EM_X86_64": "x86_64", "EM_386": "i386", "EM_AARCH64": "aarch64", "EM_ARM": "arm",
             "EM_PPC64": "ppc64", "EM_S390": "s390x", "EM_RISCV": "riscv64", "EM_MIPS": "mips"}

_SYSCALL_RE = re.compile(rb"\x0f\x05")
_VSYSCALL_RE = re.compile(rb"[\x00-\x0f]\x60\xff", re.S)   # low 3 bytes of 0xff600XYZ after byte XYZ&0xff
_WINDOW = 40                 # bytes decoded before a syscall instruction
_BACK = 12                   # instructions walked back from it
_GLIBC_VER_RE = re.compile(rb"GNU C Library[^\n\x00]*? version (\d+\.\d+(?:\.\d+)?)")
_GLIBC_PKG_RE = re.compile(rb"\(\w*[^()\x00]*GLIBC (\d+\.\d+)")
_MUSL_VER_RE = re.compile(rb"\x00(1\.\d+\.\d+)\x00")
_GLIBC_TAG_RE = re.compile(r"^GLIBC_(\d+)\.(\d+)(?:\.(\d+))?$")


@dataclass
class VsyscallRef:
    addr: int          # where the code references the page
    target: int        # the address in the page
    kind: str          # "exec" or "read"
    function: str | None = None   # exported function containing it (libraries)


@dataclass
class ElfInfo:
    """Facts about one ELF file (see the module docstring for how each is found).

    ``kind``: ``exec`` (dynamic executable), ``static``, ``static-pie``,
    ``library``, ``object`` (relocatable, core…).  ``libc``/``libc_version``:
    what the file *is* or embeds (a static binary, the C library itself) or,
    for dynamic binaries, the family it links against (version then comes
    from the image).  ``abi_tag``: the ``NT_GNU_ABI_TAG`` minimum kernel.
    ``glibc_needed``: ``GLIBC_x.y`` versions required (verneed), sorted.
    ``syscalls``: numbers of direct ``syscall`` instructions recovered;
    ``syscalls_unknown``: sites whose number was not.
    """

    arch: str
    bits: int
    kind: str
    interp: str | None = None
    needed: list[str] = field(default_factory=list)
    soname: str | None = None
    libc: str | None = None
    libc_version: str | None = None
    abi_tag: str | None = None
    glibc_needed: list[str] = field(default_factory=list)
    glibc_defined: str | None = None      # highest GLIBC_x.y a library defines (verdef)
    vsyscall: list[VsyscallRef] = field(default_factory=list)
    syscalls: list[int] = field(default_factory=list)
    syscalls_unknown: int = 0
    imports: list[str] = field(default_factory=list)
    size: int = 0
    error: str | None = None

    @property
    def is_program(self) -> bool:
        return self.kind in ("exec", "static", "static-pie")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ElfInfo":
        d = dict(d)
        d["vsyscall"] = [VsyscallRef(**v) for v in d.get("vsyscall", ())]
        return cls(**d)


@functools.lru_cache(maxsize=1)
def _interesting() -> frozenset[bytes]:
    """Function names whose import changes a verdict: syscall wrappers of the same name,
    :data:`~ketch.compat.tables.LIBC_CALLS` and :data:`VSYSCALL_FUNCTIONS`."""
    from ketch.compat.tables import LIBC_CALLS, syscalls
    names = set(syscalls().by_name) | {c.function for c in LIBC_CALLS} | set(VSYSCALL_FUNCTIONS)
    return frozenset(n.encode() for n in names)


def is_elf(path: str | os.PathLike) -> bool:
    """True if the file starts with the ELF magic (reads 4 bytes)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def glibc_tag_version(tag: str) -> tuple[int, ...] | None:
    m = _GLIBC_TAG_RE.match(tag)
    return tuple(int(x) for x in m.groups() if x is not None) if m else None


def libc_of_name(name: str) -> str | None:
    """C library family from a DT_NEEDED or PT_INTERP name."""
    base = os.path.basename(name)
    if base.startswith("ld-musl-") or base.startswith("libc.musl-"):
        return "musl"
    if base.startswith("ld-uClibc") or base.startswith("libuClibc") or base == "libc.so.0":
        return "uclibc"
    if base in ("libc.so.6", "ld-linux-x86-64.so.2", "ld-linux.so.2", "ld-linux-aarch64.so.1") \
            or base.startswith("ld-linux"):
        return "glibc"
    return None


_cs = None


def _capstone():
    global _cs
    if _cs is None:
        import capstone
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _cs.detail = False
    return _cs


def _decode_to(code: bytes, start: int, end: int, base: int) -> list[tuple] | None:
    """Decode ``code[start:end+2]`` so that an instruction begins exactly at ``end``;
    try later starts until one lands.  Returns the (address, size, mnemonic, op_str)
    list ending with the instruction at ``end``, or None."""
    cs = _capstone()
    for s in range(start, end):
        insns = []
        for ins in cs.disasm_lite(code[s:end + 2], base + s):
            insns.append(ins)
            if ins[0] >= base + end:
                break
        if insns and insns[-1][0] == base + end:
            return insns
    return None


_EAX = ("eax", "rax")
_STOP = {"call", "ret", "jmp", "syscall", "int", "hlt", "ud2", "retn", "leave"}


def _syscall_number(insns: list[tuple]) -> int | None:
    """Walk back from the ``syscall`` (last insn) to the instruction that set eax."""
    for _addr, _size, mn, ops in reversed(insns[-_BACK - 1:-1]):
        if mn in _STOP:
            return None
        dst, _, src = ops.partition(", ")
        if dst in _EAX or dst in ("ax", "al"):
            if mn == "mov" and dst in _EAX:
                try:
                    return int(src, 0)
                except ValueError:
                    return None
            if mn == "xor" and src == dst:
                return 0
            return None
    return None


def _scan_syscalls(code: bytes, base: int, out: set[int]) -> int:
    """Add the numbers of the direct syscalls in ``code`` (loaded at ``base``) to ``out``;
    return how many sites had no recoverable number."""
    unknown = 0
    for m in _SYSCALL_RE.finditer(code):
        p = m.start()
        insns = _decode_to(code, max(0, p - _WINDOW), p, base)
        if insns is None or insns[-1][2] != "syscall":
            continue   # the bytes 0f 05 inside another instruction, or data
        nr = _syscall_number(insns)
        if nr is None or nr < 0 or nr > 0xFFFF:
            unknown += 1
        else:
            out.add(nr)
    return unknown


_PAGE_RE = re.compile(r"0xffffffffff60[0-9a-f]{4}\b")


def _scan_vsyscall(code: bytes, base: int) -> list[VsyscallRef]:
    refs: list[VsyscallRef] = []
    seen: set[int] = set()
    cs = _capstone()
    for m in _VSYSCALL_RE.finditer(code):
        v = m.start() - 1          # the value's first byte (XYZ & 0xff)
        if v < 1:
            continue
        for s in range(max(0, v - 12), v):
            insns = list(cs.disasm_lite(code[s:v + 24], base + s))
            hit = None
            for i, (addr, size, mn, ops) in enumerate(insns):
                if addr <= base + v < addr + size and _PAGE_RE.search(ops):
                    hit = i
                    break
            if hit is None:
                continue
            addr, size, mn, ops = insns[hit]
            if addr in seen:
                break
            seen.add(addr)
            target = int(_PAGE_RE.search(ops).group(0), 16)
            kind = "read" if "[" in ops else "exec"
            refs.append(VsyscallRef(addr=addr, target=target, kind=kind))
            break
    return refs


def _exec_segments(elf) -> list[tuple[int, int, int]]:
    """(file offset, size, vaddr) of each executable PT_LOAD."""
    out = []
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1 and seg["p_filesz"]:
            out.append((seg["p_offset"], seg["p_filesz"], seg["p_vaddr"]))
    return out


def _static_libc(data) -> tuple[str | None, str | None]:
    """(family, version) of the C library linked into a static binary, from its strings."""
    m = _GLIBC_VER_RE.search(data) or _GLIBC_PKG_RE.search(data)
    if m:
        return "glibc", m.group(1).decode()
    if data.find(b"GLIBC_") >= 0 or data.find(b"glibc.") >= 0:
        return "glibc", None
    if data.find(b"No error information\x00") >= 0:
        m = _MUSL_VER_RE.search(data) if data.find(b"musl libc") >= 0 else None
        return "musl", m.group(1).decode() if m else None
    if data.find(b"uClibc") >= 0 or data.find(b"Unknown signal \x00") >= 0:
        return "uclibc", None
    return None, None


def scan_file(path: str | os.PathLike, want_syscalls: bool = True) -> ElfInfo | None:
    """Facts about the ELF file at ``path``; None if it is not ELF.  Never raises for a
    malformed file: the :class:`ElfInfo` then has ``error`` set."""
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        if f.read(4) != ELF_MAGIC:
            return None
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        try:
            return _scan(f, size, want_syscalls)
        except Exception as e:   # pyelftools raises assorted errors on corrupt input
            return ElfInfo(arch="unknown", bits=0, kind="object", size=size, error=f"{type(e).__name__}: {e}")


def _scan(f, size: int, want_syscalls: bool) -> ElfInfo:
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

    elf = ELFFile(f)
    arch = _MACHINES.get(elf["e_machine"], str(elf["e_machine"]))
    info = ElfInfo(arch=arch, bits=elf.elfclass, kind="object", size=size)
    etype = elf["e_type"]
    dyn = None
    for seg in elf.iter_segments():
        t = seg["p_type"]
        if t == "PT_INTERP":
            info.interp = seg.get_interp_name()
        elif t == "PT_DYNAMIC":
            dyn = seg
        elif t == "PT_NOTE":
            for note in seg.iter_notes():
                if note["n_type"] == "NT_GNU_ABI_TAG" and note["n_name"] == "GNU":
                    d = note["n_desc"]
                    if d.get("abi_os") == "ELF_NOTE_OS_LINUX":
                        info.abi_tag = f"{d['abi_major']}.{d['abi_minor']}.{d['abi_tiny']}"
    if isinstance(dyn, DynamicSegment):
        try:
            for tag in dyn.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    info.needed.append(tag.needed)
                elif tag.entry.d_tag == "DT_SONAME":
                    info.soname = tag.soname
        except Exception:
            pass
    if etype == "ET_EXEC":
        info.kind = "exec" if info.interp else "static"
    elif etype == "ET_DYN":
        if info.soname or (info.needed and not info.interp):
            info.kind = "library"
        elif info.interp:
            info.kind = "exec"
        else:
            info.kind = "static-pie" if elf["e_entry"] else "library"
    # A C library runs as a program too (ld.so, libc.so.6 print their version) but is a library here.
    own = libc_of_name(info.soname or "")
    if info.soname and info.soname.startswith(("ld-", "libc.")):
        info.kind = "library"

    # Symbol versions (sections; stripped files keep .gnu.version_r/.gnu.version_d).
    try:
        for sec in elf.iter_sections():
            if isinstance(sec, GNUVerNeedSection):
                tags = set()
                for _vn, auxs in sec.iter_versions():
                    for aux in auxs:
                        if aux.name.startswith("GLIBC_") and glibc_tag_version(aux.name):
                            tags.add(aux.name)
                info.glibc_needed = sorted(tags, key=glibc_tag_version)
            elif isinstance(sec, GNUVerDefSection):
                best = None
                for vd, auxs in sec.iter_versions():
                    for aux in auxs:
                        v = glibc_tag_version(aux.name)
                        if v and (best is None or v > glibc_tag_version(best)):
                            best = aux.name
                info.glibc_defined = best
            elif sec["sh_type"] == "SHT_DYNSYM" and info.kind != "library":
                # The names the dynamic string table holds (what the program imports, and
                # the few it exports), kept when they matter: reading the symbol entries
                # themselves costs ten times more in pure Python.
                strtab = elf.get_section(sec["sh_link"])
                names = strtab.data().split(b"\x00")
                info.imports = [n.decode() for n in set(names) if n in _interesting()]
    except Exception:
        pass
    info.imports.sort()

    # libc family
    fam = None
    for n in ([info.interp] if info.interp else []) + info.needed:
        fam = libc_of_name(n) or fam
        if fam:
            break
    if own and info.kind == "library":
        fam = own
    info.libc = fam

    if arch != "x86_64":
        return info
    segs = _exec_segments(elf)
    is_libc_itself = info.soname in ("libc.so.6",) or (info.soname or "").startswith("ld-musl") \
        or (info.soname or "").startswith("libc.musl")
    static = info.kind in ("static", "static-pie")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if static or is_libc_itself or (own == "musl"):
            fam2, ver = _static_libc(mm)
            if is_libc_itself or own == "musl":
                fam2 = own or fam2
            if fam2:
                info.libc = fam2
                info.libc_version = ver
            if info.libc == "glibc" and not info.libc_version and info.glibc_defined:
                info.libc_version = info.glibc_defined[6:]
        nrs: set[int] = set()
        for off, n, vaddr in segs:
            code = mm[off:off + n]
            info.vsyscall += _scan_vsyscall(code, vaddr)
            if want_syscalls:
                info.syscalls_unknown += _scan_syscalls(code, vaddr, nrs)
        info.syscalls = sorted(nrs)
    if info.vsyscall and info.kind == "library":
        _name_vsyscall_refs(elf, info.vsyscall)
    return info


def _name_vsyscall_refs(elf, refs: list[VsyscallRef]) -> None:
    """Name the exported function containing each reference (IFUNC resolvers included)."""
    sec = elf.get_section_by_name(".dynsym")
    if sec is None:
        return
    funcs = []
    for sym in sec.iter_symbols():
        if sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC") and sym["st_shndx"] != "SHN_UNDEF":
            funcs.append((sym["st_value"], max(sym["st_size"], 1), sym.name))
    for r in refs:
        names = sorted(n for v, s, n in funcs if v <= r.addr < v + s)
        if names:
            r.function = min(names, key=lambda n: (n.startswith("_"), len(n)))
