"""The security and resource parts of config.json, applied for real through
``ketch-runtime`` on an alpine bundle: capabilities, cgroups (limits,
pause/resume, ps, kill --all, removal), seccomp, devices, hooks, and the
same enforced when podman drives ketch-runtime."""

from __future__ import annotations

import glob
import json
import os
import signal
import time

import pytest

from tests.integration.test_runtime_cli import BIN, ULIMITS, podman, rt  # noqa: F401 - fixtures

pytestmark = pytest.mark.integration


def edit(rt, fn) -> None:
    spec = json.loads((rt.bundle / "config.json").read_text())
    fn(spec)
    (rt.bundle / "config.json").write_text(json.dumps(spec))


def run_out(rt, cid: str) -> tuple[int, str, str]:
    p = rt("run", "--bundle", str(rt.bundle), cid)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def status_field(text: str, name: str) -> int:
    line = next(x for x in text.splitlines() if x.startswith(name + ":"))
    return int(line.split()[1], 16)


def cgroup_leftovers(name: str) -> list[str]:
    return glob.glob(f"/sys/fs/cgroup/*/ketch/{name}") + glob.glob(f"/sys/fs/cgroup/*/ketch-test-*/{name}")


# ------------------------------------------------------------------ capabilities
def test_capabilities_match_the_spec(rt):
    kill, chown, net_bind = 5, 0, 10
    rt.config("sh", "-c", "grep ^Cap /proc/self/status")
    edit(rt, lambda s: s["process"].update(capabilities={
        "bounding": ["CAP_KILL", "CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_KILL", "CAP_CHOWN"], "permitted": ["CAP_KILL", "CAP_CHOWN"],
        "inheritable": [], "ambient": []}))
    code, out, err = run_out(rt, "cap1")
    assert code == 0, err
    assert status_field(out, "CapBnd") == 1 << kill | 1 << chown | 1 << net_bind
    # root execs: the kernel gives it its bounding set as permitted and effective
    assert status_field(out, "CapEff") == status_field(out, "CapBnd")
    assert status_field(out, "CapAmb") == 0


def test_capabilities_of_a_non_root_user_with_ambient(rt):
    rt.config("sh", "-c", "grep ^Cap /proc/self/status; id -u", user={"uid": 1000, "gid": 1000})
    edit(rt, lambda s: s["process"].update(capabilities={k: ["CAP_NET_BIND_SERVICE"] for k in
                                                         ("bounding", "effective", "permitted",
                                                          "inheritable", "ambient")}))
    code, out, err = run_out(rt, "cap2")
    assert code == 0, err
    assert out.splitlines()[-1] == "1000"
    for f in ("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"):
        assert status_field(out, f) == 1 << 10, f


def test_no_capabilities_at_all(rt):
    rt.config("sh", "-c", "grep ^CapEff /proc/self/status; touch /dev/shm/f; chown 1:1 /dev/shm/f 2>&1; exit 0")
    edit(rt, lambda s: s["process"].update(capabilities={}))
    code, out, _ = run_out(rt, "cap3")
    assert status_field(out, "CapEff") == 0
    assert "Operation not permitted" in out


def test_unknown_capability_is_an_error_naming_it(rt):
    rt.config("true")
    edit(rt, lambda s: s["process"].update(capabilities={"bounding": ["CAP_KILL", "CAP_TEST"]}))
    code, _, err = run_out(rt, "cap4")
    assert code == 1 and "CAP_TEST" in err
    assert rt("list", "-q").stdout == b""


# ------------------------------------------------------------------ cgroups
def test_memory_limit_visible_and_enforced(rt):
    rt.config("sh", "-c", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes; cat /proc/self/cgroup | grep memory")
    edit(rt, lambda s: s["linux"].update(resources={"memory": {"limit": 64 << 20, "swap": 64 << 20}}))
    code, out, err = run_out(rt, "mem1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == str(64 << 20)
    assert lines[1].endswith(":memory:/"), "its cgroup namespace is rooted at its own cgroup"
    rt.config("dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1")
    code, _, _ = run_out(rt, "mem2")
    assert code == 137, "a process allocating past the limit is OOM-killed"
    assert not cgroup_leftovers("mem1") and not cgroup_leftovers("mem2")


def test_pids_limit_bounds_a_fork_bomb(rt):
    # After the bomb no fork is left: builtins only (read, set, echo, kill).
    rt.config("sh", "-c", "(for i in $(seq 100); do sleep 5 & done) 2>/dev/null; "
                          "read m < /sys/fs/cgroup/pids/pids.max; echo $m; set -- /proc/[0-9]*; echo $#; kill -9 -1")
    edit(rt, lambda s: s["linux"].update(resources={"pids": {"limit": 20}}))
    code, out, err = run_out(rt, "pids1")
    assert code == 0, err
    assert out.splitlines()[0] == "20"
    assert int(out.splitlines()[-1]) <= 20


def test_cgroups_path_cpu_and_cpuset_written_and_removed_on_delete(rt):
    path = f"/ketch-test-{os.getpid()}/cg1"
    rt.config("sleep", "60")
    edit(rt, lambda s: s["linux"].update(cgroupsPath=path, resources={
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "memory": {"limit": 128 << 20, "reservation": 64 << 20}}))
    rt("create", "--bundle", str(rt.bundle), "cg1", check=True)
    pid = rt.state("cg1")["pid"]
    base = "/sys/fs/cgroup"
    assert open(f"{base}/cpu{path}/cpu.shares").read().strip() == "512"
    assert open(f"{base}/cpu{path}/cpu.cfs_quota_us").read().strip() == "50000"
    assert open(f"{base}/cpuset{path}/cpuset.cpus").read().strip() == "0"
    assert open(f"{base}/memory{path}/memory.soft_limit_in_bytes").read().strip() == str(64 << 20)
    for d in ("memory", "pids", "freezer", "cpu", "systemd"):
        assert str(pid) in open(f"{base}/{d}{path}/cgroup.procs").read().split()
    rt("delete", "--force", "cg1", check=True)
    left = glob.glob(f"{base}/*/ketch-test-{os.getpid()}")
    assert not left, left


def test_pause_resume_ps_and_kill_all(rt):
    out = rt.base / "out"
    out.mkdir()
    rt.config("sh", "-c", "sleep 60 & i=0; while true; do i=$((i+1)); echo $i > /out/n; sleep 0.05; done")
    edit(rt, lambda s: s["mounts"].append({"destination": "/out", "type": "bind", "source": str(out),
                                           "options": ["rbind"]}))
    rt("run", "--detach", "--bundle", str(rt.bundle), "p1", check=True)
    pid = rt.state("p1")["pid"]
    for _ in range(100):
        pids = json.loads(rt("ps", "--format", "json", "p1", check=True).stdout)
        if len(pids) >= 2 and (out / "n").exists():
            break
        time.sleep(0.05)
    assert pids[0] == pid and len(pids) >= 2

    rt("pause", "p1", check=True)
    assert rt.state("p1")["status"] == "paused"
    n1 = (out / "n").read_text()
    time.sleep(0.4)
    assert (out / "n").read_text() == n1, "the counter stopped while paused"
    rt("resume", "p1", check=True)
    assert rt.state("p1")["status"] == "running"
    time.sleep(0.4)
    assert (out / "n").read_text() != n1, "the counter advances again"

    rt("kill", "--all", "p1", "KILL", check=True)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    rt("delete", "p1", check=True)
    assert not cgroup_leftovers("p1")


def test_paused_container_is_force_deleted(rt):
    rt.config("sleep", "60")
    rt("run", "--detach", "--bundle", str(rt.bundle), "p2", check=True)
    rt("pause", "p2", check=True)
    rt("delete", "--force", "p2", check=True)
    assert rt("list", "-q").stdout == b""
    assert not cgroup_leftovers("p2")


def test_device_cgroup_denies_what_the_spec_denies(rt):
    rt.config("sh", "-c", "echo ok > /dev/null && echo null-ok; head -c1 /dev/zero >/dev/null 2>&1 || echo zero-denied")
    edit(rt, lambda s: s["linux"].update(resources={"devices": [
        {"allow": False, "access": "rwm"}, {"allow": False, "type": "c", "major": 1, "minor": 5, "access": "r"}]}))
    # the default allowed devices come after the spec's rules, as in runc: /dev/zero is allowed again
    code, out, err = run_out(rt, "dev1")
    assert code == 0, err
    assert out == "null-ok\n"


# ------------------------------------------------------------------ podman's own config.json
def test_podman_limits_and_cap_drop_are_enforced(podman):
    run = ["run", "--rm", "--network", "none", *ULIMITS, "--memory", "64m", "--pids-limit", "50",
           "--cap-drop", "all", "alpine:3.20.3"]
    out = podman(*run, "sh", "-c", "grep ^CapEff /proc/self/status; "
                 "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max").stdout.decode()
    lines = out.split()
    assert lines[1] == "0000000000000000"
    assert lines[2] == str(64 << 20) and lines[3] == "50"
    p = podman(*run, "dd", "if=/dev/zero", "of=/dev/null", "bs=300M", "count=1", check=False)
    assert p.returncode == 137
    p = podman(*run, "sh", "-c", "for i in $(seq 80); do sleep 5 & done; wait", check=False)
    assert b"can't fork" in p.stderr


def test_cgroup_v2_freeze_procs_kill_on_the_unified_hierarchy():
    """The v2 code on a real cgroup2 hierarchy: this hybrid host's
    /sys/fs/cgroup/unified has no resource controllers, but cgroup.procs,
    cgroup.freeze/events and removal are v2's own."""
    import subprocess

    from tests.conftest import require_root
    from ketch.runtime.cgroups import Cgroup
    require_root()
    base = "/sys/fs/cgroup/unified"
    if not os.path.exists(os.path.join(base, "cgroup.freeze")) and not os.path.exists(base + "/cgroup.procs"):
        pytest.skip("no cgroup2 hierarchy at /sys/fs/cgroup/unified")
    parent = f"{base}/ketch-test-{os.getpid()}"
    c = Cgroup({"": f"{parent}/v2"}, unified_only=True)
    c.create(None)
    p = subprocess.Popen(["sh", "-c", "while true; do sleep 0.05; done"])
    try:
        c.join(p.pid)
        assert p.pid in c.pids()
        c.freeze(True)
        assert c.frozen() and open(f"{parent}/v2/cgroup.freeze").read().strip() == "1"
        stat = open(f"/proc/{p.pid}/stat").read()
        assert stat[stat.rindex(")") + 2] in "St", "a frozen task is stopped"
        c.freeze(False)
        assert not c.frozen()
        c.kill_all(signal.SIGKILL)
        assert p.wait(timeout=10) == -signal.SIGKILL
    finally:
        p.kill()
        p.wait()
        c.destroy()
    assert not os.path.exists(parent)


# ------------------------------------------------------------------ seccomp
def test_seccomp_errno_for_one_syscall(rt):
    rt.config("sh", "-c", "mkdir /tmp/x; echo rc=$?")
    edit(rt, lambda s: (s["root"].update(readonly=False), s["linux"].update(seccomp={
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
        "syscalls": [{"names": ["mkdir", "mkdirat", "no_such_syscall"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1}]})))
    code, out, err = run_out(rt, "sc1")
    assert code == 0 and out == "rc=1\n" and "Operation not permitted" in err


SH_ALLOW = ["execve", "brk", "mmap", "munmap", "mprotect", "arch_prctl", "set_tid_address", "exit_group",
            "read", "write", "writev", "open", "openat", "close", "fstat", "stat", "lstat", "newfstatat",
            "ioctl", "getpid", "getppid", "getuid", "geteuid", "getgid", "getegid", "rt_sigaction",
            "rt_sigprocmask", "rt_sigreturn", "fcntl", "dup2", "dup3", "uname", "getcwd", "chdir",
            "setgroups", "setgid", "setuid", "capset", "prctl", "umask", "madvise", "poll", "exit",
            "set_robust_list", "rseq", "prlimit64", "getrandom", "futex"]


def test_seccomp_allow_list_with_enosys_default_and_no_new_privs(rt):
    # an allow-list profile: everything else fails with ENOSYS (38), not EPERM
    rt.config("mkdir", "/tmp/y", noNewPrivileges=True)
    edit(rt, lambda s: (s["root"].update(readonly=False), s["linux"].update(seccomp={
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
        "syscalls": [{"names": SH_ALLOW, "action": "SCMP_ACT_ALLOW"}]})))
    code, out, err = run_out(rt, "sc2")
    assert code == 1 and "mkdir: can't create directory '/tmp/y': Function not implemented" in err, err


def test_seccomp_kill_process_and_args(rt):
    # kill(2) with signal 0 kills the caller (SIGSYS); with another signal it is allowed
    rt.config("sh", "-c", "kill -0 $$; echo unreachable")
    edit(rt, lambda s: s["linux"].update(seccomp={
        "defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS",
             "args": [{"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}]}))
    code, out, _ = run_out(rt, "sc3")
    assert code == 128 + signal.SIGSYS and out == ""


def test_seccomp_notify_and_unknown_action_are_clear_errors(rt):
    rt.config("true")
    for action, msg in (("SCMP_ACT_NOTIFY", "SCMP_ACT_NOTIFY is not supported"),
                        ("SCMP_ACT_BOGUS", "unknown seccomp action")):
        edit(rt, lambda s: s["linux"].update(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": action}]}))
        code, _, err = run_out(rt, "sc4")
        assert code == 1 and msg in err, err
    assert rt("list", "-q").stdout == b""


# ------------------------------------------------------------------ hooks, devices, personality, LSM
def test_hooks_run_at_their_points_with_state_on_stdin(rt):
    out = rt.base / "hooks"
    out.mkdir()
    rt.config("sh", "-c", "cat /hook-start; echo; echo main")
    edit(rt, lambda s: (s["root"].update(readonly=False), s.update(hooks={
        "prestart": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}/prestart"]}],
        "createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}/createRuntime; echo $X > {out}/env"],
                           "env": ["X=from-env"]}],
        "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}/createContainer"]}],
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "cat > /hook-start"]}],  # inside the container
        "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}/poststart"]}],
        "poststop": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {out}/poststop"]}]})))
    code, stdout, err = run_out(rt, "h1")
    assert code == 0, err
    inside = json.loads(stdout.splitlines()[0])
    assert stdout.splitlines()[1] == "main"
    assert inside["id"] == "h1" and inside["status"] == "created" and inside["pid"] > 1
    states = {n: json.loads((out / n).read_text()) for n in
              ("prestart", "createRuntime", "createContainer", "poststart", "poststop")}
    assert {n: s["status"] for n, s in states.items()} == {
        "prestart": "creating", "createRuntime": "creating", "createContainer": "creating",
        "poststart": "running", "poststop": "stopped"}
    assert len({s["pid"] for s in states.values()} | {inside["pid"]}) == 1, "the host PID of the container"
    assert all(s["bundle"] == str(rt.bundle) for s in states.values())
    assert (out / "env").read_text() == "from-env\n"


def test_failing_or_slow_create_hook_fails_create(rt):
    rt.config("true")
    edit(rt, lambda s: s.update(hooks={"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}))
    code, _, err = run_out(rt, "h2")
    assert code == 1 and "createRuntime hook /bin/sh exited with status 3" in err
    edit(rt, lambda s: s.update(hooks={"createContainer": [{"path": "/bin/sleep", "args": ["sleep", "30"],
                                                            "timeout": 1}]}))
    t = time.monotonic()
    code, _, err = run_out(rt, "h3")
    assert code == 1 and "timed out after 1s" in err and time.monotonic() - t < 10
    assert rt("list", "-q").stdout == b""
    assert not cgroup_leftovers("h2") and not cgroup_leftovers("h3")


def test_linux_devices_are_created(rt):
    rt.config("sh", "-c", "stat -c '%F %t:%T %a %u:%g' /dev/fuse /dev/sub/blk /dev/fifo0")
    edit(rt, lambda s: s["linux"].update(devices=[
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o620, "uid": 7, "gid": 8},
        {"path": "/dev/sub/blk", "type": "b", "major": 7, "minor": 200},
        {"path": "/dev/fifo0", "type": "p"}]))
    code, out, err = run_out(rt, "dv1")
    assert code == 0, err
    assert out.splitlines() == ["character special file a:e5 620 7:8", "block special file 7:c8 666 0:0",
                                "fifo 0:0 666 0:0"]


def test_personality_and_scheduler_and_io_priority(rt):
    rt.config("sh", "-c", "uname -m; grep -E '^(policy|prio) ' /proc/self/sched | tr -s ' '; "
                          "cat /proc/self/personality")
    edit(rt, lambda s: (s["linux"].update(personality={"domain": "LINUX32"}), s["process"].update(
        scheduler={"policy": "SCHED_BATCH", "nice": 5}, ioPriority={"class": "IOPRIO_CLASS_IDLE", "priority": 0})))
    code, out, err = run_out(rt, "pe1")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] in ("i686", "i386") and lines[-1] == "00000008"
    assert "policy : 3" in out and "prio : 125" in out  # SCHED_BATCH, nice 5


def test_lsm_labels_are_a_clear_error_where_the_host_has_none(rt):
    from ketch.runtime.init import lsm_enabled
    if lsm_enabled("apparmor"):
        pytest.skip("AppArmor is enabled here")
    rt.config("true")
    edit(rt, lambda s: s["process"].update(apparmorProfile="docker-default"))
    code, _, err = run_out(rt, "lsm1")
    assert code == 1 and "AppArmor is not enabled on this host" in err
