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
