"""ketch.compat on tiny ELF programs built here with gcc (never run), and on fake layers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ketch.compat import host, tables
from ketch.compat.elf import scan_file
from ketch.compat.scan import MergedView, walk_layer
from ketch.compat.verdict import Judge, SeccompPolicy, load_policy

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
HOST_LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")


def profile(kernel="6.18", vsyscall="xonly") -> host.KernelProfile:
    base = host.KernelProfile(release="6.18.0", version=(6, 18, 0), machine="x86_64", vsyscall="xonly",
                              vsyscall_source="test")
    return base.with_target(kernel, vsyscall)


def cc(tmp: Path, name: str, src: str, *flags: str) -> Path:
    c = tmp / f"{name}.c"
    c.write_text(src)
    out = tmp / name
    subprocess.run(["gcc", "-O1", "-o", str(out), str(c), *flags], check=True, capture_output=True)
    return out


SYSCALL_SRC = r"""
int main(void) {
    long r;
    __asm__ volatile ("mov $%c1, %%eax\n\tsyscall" : "=a"(r) : "i"(NR) : "rcx", "r11", "memory");
    return (int)r;
}
"""
VSYSCALL_CALL_SRC = r"""
int main(void) {
    long r;
    __asm__ volatile ("movabs $0xffffffffff600400, %%rax\n\tcall *%%rax" : "=a"(r) :: "rdi", "rcx", "r11", "memory");
    return (int)r;
}
"""
VSYSCALL_READ_SRC = r"""
int main(void) {
    long r;
    __asm__ volatile ("mov 0xffffffffff600000, %%rax" : "=a"(r));
    return (int)r;
}
"""
ABI_NOTE_SRC = r"""
__asm__(".section .note.ABI-tag, \"a\", @note\n"
        ".p2align 2\n"
        ".long 4, 16, 1\n"          /* namesz, descsz, NT_GNU_ABI_TAG */
        ".asciz \"GNU\"\n"
        ".long 0, 99, 1, 0\n"       /* Linux 99.1.0 */
        ".previous\n");
int main(void) { return 0; }
"""
THREAD_SRC = r"""
#include <pthread.h>
static void *f(void *a) { return a; }
int main(void) { pthread_t t; pthread_create(&t, 0, f, 0); return pthread_join(t, 0); }
"""


def judge(info, path="/bin/prog", k=None, policy=None, with_host_libc=True):
    elf = {"bin/prog": info}
    if with_host_libc and HOST_LIBC.exists():
        elf["lib/x86_64-linux-gnu/libc.so.6"] = scan_file(HOST_LIBC)
    return Judge(k or profile(), policy or SeccompPolicy.unconfined(), elf).judge(path, info)


# --------------------------------------------------------------------------
# host profile


def test_vsyscall_mode_from_maps_and_cmdline():
    line = "ffffffffff600000-ffffffffff601000 {} 00000000 00:00 0                  [vsyscall]\n"
    assert host.vsyscall_from_maps("x\n" + line.format("--xp")) == "xonly"
    assert host.vsyscall_from_maps(line.format("r-xp")) == "emulate"
    assert host.vsyscall_from_maps("55d0-55d1 r-xp 0 0:0 0 /bin/cat\n") == "none"
    assert host.vsyscall_from_cmdline("quiet vsyscall=none ro") == "none"
    assert host.vsyscall_from_cmdline("quiet -- vsyscall=none") is None


def test_kernel_config_cgroup_and_versions():
    cfg = host.parse_kernel_config("CONFIG_SECCOMP=y\n# CONFIG_USER_NS is not set\nCONFIG_X=\"a\"\n")
    assert cfg == {"CONFIG_SECCOMP": "y", "CONFIG_USER_NS": "n", "CONFIG_X": "a"}
    mi = ("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
          "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n")
    assert host.cgroup_mode(mi) == "v1"
    assert host.cgroup_mode(mi + "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n") == "hybrid"
    assert host.cgroup_mode("1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n") == "v2"
    assert host.parse_version("6.18.44-fc-v595") == (6, 18, 44)
    assert host.parse_version("3.10") == (3, 10, 0)
    with pytest.raises(ValueError):
        host.parse_version("three")
    p = profile("3.10", "none")
    assert p.target and p.version == (3, 10, 0) and p.vsyscall == "none" and p.version_str == "3.10"
    with pytest.raises(ValueError):
        profile().with_target(vsyscall="sometimes")


def test_probe_reads_this_host():
    p = host.probe()
    assert p.version > (2, 6, 0)
    assert p.vsyscall in host.VSYSCALL_MODES
    assert p.namespaces.get("mnt") is True


# --------------------------------------------------------------------------
# tables


def test_syscall_table_names_its_source_and_knows_key_calls():
    doc = json.loads((tables.DATA / "syscalls_x86_64.json").read_text())
    assert "syscalls.2.gz" in doc["source"]["kernel"] and "unistd_64.h" in doc["source"]["numbers"]
    t = tables.syscalls()
    assert t.by_nr[435].name == "clone3" and t.by_name["clone3"].kernel == (5, 3)
    assert t.by_name["faccessat2"].kernel == (5, 8)
    assert t.by_name["fchmodat2"].nr == 452 and t.by_name["fchmodat2"].kernel == (6, 6)
    assert t.by_name["read"].nr == 0
    assert tables.fallback_for("glibc", (2, 35), "clone3").instead == "clone"
    assert tables.fallback_for("glibc", (2, 31), "clone3") is None
    assert tables.calls_of_function("glibc", (2, 36), "pthread_create") >= {"clone3", "rseq"}
    assert tables.calls_of_function("glibc", (2, 36), "pidfd_open") == {"pidfd_open"}


# --------------------------------------------------------------------------
# ELF facts and verdicts on programs built by the test


@needs_gcc
def test_static_and_dynamic_detection(tmp_path):
    dyn = scan_file(cc(tmp_path, "dyn", "int main(void){return 0;}"))
    assert dyn.kind == "exec" and dyn.interp.endswith("ld-linux-x86-64.so.2") and dyn.libc == "glibc"
    assert dyn.abi_tag is not None or dyn.glibc_needed
    st = scan_file(cc(tmp_path, "st", "int main(void){return 0;}", "-static"))
    assert st.kind in ("static", "static-pie") and st.interp is None
    assert st.libc == "glibc" and st.abi_tag == "3.2.0"
    assert scan_file(tmp_path / "dyn.c") is None        # not ELF


@needs_gcc
def test_direct_syscall_number_and_kernel_verdicts(tmp_path):
    prog = scan_file(cc(tmp_path, "clone3", SYSCALL_SRC, "-DNR=435"))
    assert 435 in prog.syscalls
    assert judge(prog).verdict == "works"
    v = judge(prog, k=profile("5.2"))
    assert v.verdict == "fails" and "clone3" in v.reason and "5.3" in v.reason   # its own call: no glibc fallback
    st = scan_file(cc(tmp_path, "clone3s", SYSCALL_SRC, "-DNR=435", "-static"))
    assert 435 in st.syscalls


@needs_gcc
def test_vsyscall_call_and_read(tmp_path):
    call = scan_file(cc(tmp_path, "vcall", VSYSCALL_CALL_SRC, "-static"))
    assert [(r.target, r.kind) for r in call.vsyscall] == [(0xFFFFFFFFFF600400, "exec")]
    assert judge(call, k=profile(vsyscall="emulate")).verdict == "works"
    assert judge(call, k=profile(vsyscall="xonly")).verdict == "works"
    v = judge(call, k=profile(vsyscall="none"))
    assert v.verdict == "fails" and "vsyscall=none" in v.reason and "139" in v.reason
    assert "vsyscall=emulate" in v.remedy
    read = scan_file(cc(tmp_path, "vread", VSYSCALL_READ_SRC, "-static"))
    assert [r.kind for r in read.vsyscall] == ["read"]
    assert judge(read, k=profile(vsyscall="xonly")).verdict == "fails"
    assert judge(read, k=profile(vsyscall="emulate")).verdict == "works"
    plain = scan_file(cc(tmp_path, "plain", "int main(void){return 0;}", "-static"))
    assert plain.vsyscall == []


@needs_gcc
def test_abi_note_newer_than_kernel(tmp_path):
    prog = scan_file(cc(tmp_path, "future", ABI_NOTE_SRC, "-static", "-nostartfiles", "-nostdlib",
                        "-Wl,-e,main"))
    assert prog.abi_tag == "99.1.0"
    v = judge(prog)
    assert v.verdict == "fails" and "kernel too old" in v.reason and "99.1.0" in v.reason


@needs_gcc
@pytest.mark.skipif(not HOST_LIBC.exists(), reason="needs the host's glibc")
def test_seccomp_eperm_for_clone3_breaks_pthread_create(tmp_path):
    prog = scan_file(cc(tmp_path, "thr", THREAD_SRC, "-pthread"))
    libc = scan_file(HOST_LIBC)
    if tuple(int(x) for x in libc.libc_version.split(".")) < (2, 34):
        pytest.skip("host glibc < 2.34 does not use clone3")
    assert "pthread_create" in prog.imports
    prof = tmp_path / "seccomp.json"
    allowed = [n for n in tables.syscalls().by_name if n != "clone3"]
    prof.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": allowed, "action": "SCMP_ACT_ALLOW"}]}))
    v = judge(prog, policy=load_policy(str(prof)))
    assert v.verdict == "fails" and "clone3" in v.reason and "EPERM" in v.reason
    assert "ENOSYS" in v.remedy
    prof.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": allowed, "action": "SCMP_ACT_ALLOW"},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}))
    assert judge(prog, policy=load_policy(str(prof))).verdict == "degraded"
    assert judge(prog, policy=load_policy("unconfined")).verdict == "works"
    v = judge(prog, k=profile("5.2"))
    assert v.verdict == "degraded" and "clone3" in "".join(f["reason"] for f in v.findings)


def test_bad_seccomp_profile(tmp_path):
    with pytest.raises(ValueError):
        load_policy(str(tmp_path / "missing.json"))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError):
        load_policy(str(tmp_path / "x.json"))
    assert load_policy("default").default_action is None


# --------------------------------------------------------------------------
# merged layers: whiteouts, opaque dirs, symlinks


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts (mknod) and trusted.* xattrs need root")
def test_merge_honours_whiteouts_and_opaque_dirs(tmp_path):
    low, up = tmp_path / "low", tmp_path / "up"
    for d in (low / "bin", low / "opq", low / "gone", up / "bin", up / "opq"):
        d.mkdir(parents=True)
    elf = Path(os.path.realpath(shutil.which("true") or "/bin/true"))
    for p in (low / "bin/a", low / "bin/b", low / "opq/c", low / "gone/d", up / "opq/e"):
        shutil.copy(elf, p)
    os.mknod(up / "bin/b", 0o600 | 0o020000, 0)      # whiteout of bin/b
    os.mknod(up / "gone", 0o600 | 0o020000, 0)       # whiteout of a whole directory
    os.setxattr(up / "opq", "trusted.overlay.opaque", b"y")
    (up / "bin/sh").symlink_to("a")
    view = MergedView.merge([walk_layer(up), walk_layer(low)])
    assert sorted(view.elf) == ["bin/a", "opq/e"]
    assert view.resolve("/bin/sh") == "bin/a"
    assert view.which("sh", ["PATH=/usr/bin:/bin"]) == "bin/a"
    assert view.resolve("/bin/b") is None
