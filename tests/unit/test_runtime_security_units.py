"""Unit tests (no root) of the security/resource tables and mappings:
capability names → masks, cgroup v1 and v2 files for linux.resources,
cgroup paths, and the spec dataclasses of those fields."""

from __future__ import annotations

import pytest

from ketch.errors import SpecError
from ketch.oci.runtime import Resources, Spec, default_spec
from ketch.runtime import capabilities as caps
from ketch.runtime import cgroups as cg


# ------------------------------------------------------------------ capabilities
def test_capability_table_is_dense_and_matches_the_kernel_header():
    nums = sorted(caps.CAPABILITIES.values())
    assert nums == list(range(len(nums)))
    assert caps.CAPABILITIES["CAP_SYS_ADMIN"] == 21 and caps.CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40


def test_masks_and_unknown_names():
    c = Spec.from_json({**default_spec().to_json(), "process": {
        "args": ["sh"], "cwd": "/", "capabilities": {"bounding": ["CAP_KILL", "CAP_CHOWN"], "ambient": ["kill"]}}}
    ).process.capabilities
    m = caps.masks(c, last=40)
    assert m.bounding == 1 << 5 | 1 << 0 and m.ambient == 1 << 5 and m.effective == 0
    with pytest.raises(SpecError, match="CAP_TEST"):
        caps.masks(type(c)(bounding=("CAP_TEST",)), last=40)
    # a real capability the running kernel lacks is ignored, as runc does
    assert caps.masks(type(c)(bounding=("CAP_BPF", "CAP_KILL")), last=38).bounding == 1 << 5


def test_features_lists_the_capability_table():
    from ketch.runtime.features import features
    f = features()
    assert f["linux"]["capabilities"] == list(caps.CAPABILITIES)
    assert f["linux"]["cgroup"]["v1"] and f["linux"]["cgroup"]["v2"] and not f["linux"]["cgroup"]["systemd"]


# ------------------------------------------------------------------ cgroup mappings
def res(d: dict) -> Resources:
    return Resources.from_json(d)


def test_v1_files():
    r = res({"memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": 32 << 20, "kernel": 1,
                        "swappiness": 10, "disableOOMKiller": True},
             "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0"},
             "pids": {"limit": 50}, "blockIO": {"weight": 300, "throttleReadBpsDevice": [
                 {"major": 8, "minor": 0, "rate": 1048576}]},
             "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
             "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 1, "minor": 3,
                                                             "access": "rw"}]})
    files = cg.v1_files(r, (("c", 136, None, "rwm"),))
    assert files == [
        ("memory", "memory.limit_in_bytes", str(64 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(128 << 20)),
        ("memory", "memory.soft_limit_in_bytes", str(32 << 20)),
        ("memory", "memory.swappiness", "10"),
        ("memory", "memory.oom_control", "1"),
        ("cpu", "cpu.shares", "512"), ("cpu", "cpu.cfs_period_us", "100000"), ("cpu", "cpu.cfs_quota_us", "50000"),
        ("cpuset", "cpuset.cpus", "0-1"), ("cpuset", "cpuset.mems", "0"),
        ("pids", "pids.max", "50"),
        ("blkio", "blkio.weight", "300"), ("blkio", "blkio.throttle.read_bps_device", "8:0 1048576"),
        ("hugetlb", "hugetlb.2MB.limit_in_bytes", "0"),
        ("devices", "devices.deny", "a"), ("devices", "devices.allow", "c 1:3 rw"),
        ("devices", "devices.allow", "c 136:* rwm"),
    ]
    assert cg.v1_files(res({"pids": {"limit": -1}})) == [("pids", "pids.max", "max")]
    with pytest.raises(SpecError, match="unified"):
        cg.v1_files(res({"unified": {"memory.high": "1G"}}))


def test_v2_files():
    r = res({"memory": {"limit": 64 << 20, "swap": 96 << 20, "reservation": 32 << 20},
             "cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"},
             "pids": {"limit": 50}, "blockIO": {"weight": 500, "throttleWriteIOPSDevice": [
                 {"major": 8, "minor": 0, "rate": 100}]},
             "hugepageLimits": [{"pageSize": "2MB", "limit": 4194304}],
             "unified": {"memory.high": "50000000"},
             "devices": [{"allow": False, "access": "rwm"}]})
    assert cg.v2_files(r) == [
        ("memory.swap.max", str(32 << 20)), ("memory.max", str(64 << 20)), ("memory.low", str(32 << 20)),
        ("cpu.weight", "39"), ("cpu.max", "50000 100000"), ("cpuset.cpus", "0"),
        ("pids.max", "50"), ("io.weight", "default 4950"), ("io.max", "8:0 wiops=100"),
        ("hugetlb.2MB.max", "4194304"), ("memory.high", "50000000"),
    ]
    assert cg.v2_files(res({"blockIO": {"weight": 500}}), bfq=True) == [("io.bfq.weight", "500")]
    assert cg.v2_files(res({"memory": {"limit": 100, "swap": -1}, "cpu": {"quota": -1, "period": 1000}})) == [
        ("memory.swap.max", "max"), ("memory.max", "100"), ("cpu.max", "max 1000")]
    with pytest.raises(SpecError, match="swap"):
        cg.v2_files(res({"memory": {"limit": 100, "swap": 50}}))
    with pytest.raises(SpecError, match="realtime"):
        cg.v2_files(res({"cpu": {"realtimeRuntime": 5}}))
    with pytest.raises(SpecError, match="not a cgroup file"):
        cg.v2_files(res({"unified": {"../x": "1"}}))
    assert cg.cpu_weight(2) == 1 and cg.cpu_weight(262144) == 10000
    assert cg.controller_of("memory.max") == "memory" and cg.controller_of("cgroup.freeze") is None


MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/other rw - cgroup cgroup rw,memory
"""


def test_hierarchies_and_paths_on_a_hybrid_host():
    hier = cg.hierarchies(MOUNTINFO)
    assert [(h.mountpoint, h.version, h.controllers) for h in hier] == [
        ("/sys/fs/cgroup/cpu,cpuacct", 1, ("cpu", "cpuacct")), ("/sys/fs/cgroup/memory", 1, ("memory",)),
        ("/sys/fs/cgroup/systemd", 1, ("name=systemd",)), ("/sys/fs/cgroup/unified", 2, hier[3].controllers)]
    own = cg.own_cgroups("4:memory:/sandbox/abc\n1:cpu,cpuacct:/\n9:name=systemd:/\n0::/\n")
    dirs = cg.resolve_dirs("/ketch/c1", hier, own)
    assert dirs == {"cpu,cpuacct": "/sys/fs/cgroup/cpu,cpuacct/ketch/c1", "memory": "/sys/fs/cgroup/memory/ketch/c1",
                    "name=systemd": "/sys/fs/cgroup/systemd/ketch/c1", "": "/sys/fs/cgroup/unified/ketch/c1"}
    # relative: below this process's own cgroup in each hierarchy
    assert cg.resolve_dirs("c1", hier, own)["memory"] == "/sys/fs/cgroup/memory/sandbox/abc/c1"
    assert cg.resolve_dirs("/../../x", hier, own)["memory"] == "/sys/fs/cgroup/memory/x"
    c = cg.Cgroup(dirs)
    assert c.dir_of("cpuacct") == dirs["cpu,cpuacct"] and c.dir_of("pids") is None
    assert cg.Cgroup.from_json(c.to_json()) == c


def test_device_rule_lines():
    from ketch.oci.runtime import DeviceRule
    assert cg.device_rule_line(DeviceRule(allow=False)) == ("devices.deny", "a")
    assert cg.device_rule_line(DeviceRule(allow=True, type="b", major=8, access="r")) == ("devices.allow", "b 8:* r")
    assert cg.device_rule_line(("c", None, None, "m")) == ("devices.allow", "c *:* m")


# ------------------------------------------------------------------ spec dataclasses
def test_security_fields_round_trip():
    d = default_spec().to_json()
    d["process"].update(capabilities={"bounding": ["CAP_KILL"], "effective": [], "inheritable": [],
                                      "permitted": [], "ambient": []},
                        apparmorProfile="p", ioPriority={"class": "IOPRIO_CLASS_BE", "priority": 4},
                        scheduler={"policy": "SCHED_BATCH", "nice": 5})
    d["linux"].update(resources={"memory": {"limit": 1}, "pids": {"limit": 5}, "devices": [
        {"allow": False, "access": "rwm"}], "unified": {"memory.high": "1"}, "rdma": {"x": {}}},
        seccomp={"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
             "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
        devices=[{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}],
        personality={"domain": "LINUX32"})
    d["hooks"] = {"prestart": [{"path": "/bin/true", "timeout": 5}]}
    s = Spec.from_json(d)
    assert s.linux.resources.memory.limit == 1 and s.linux.resources.extra == {"rdma": {"x": {}}}
    assert s.linux.seccomp.syscalls[0].args[0].op == "SCMP_CMP_EQ"
    assert s.hooks["prestart"][0].timeout == 5
    assert Spec.from_json(s.to_json()) == s
    for bad, msg in (({"linux": {**d["linux"], "devices": [{"path": "x", "type": "c"}]}}, "absolute"),
                     ({"hooks": {"poststop": [{"path": "/x", "timeout": 0}]}}, "timeout"),
                     ({"linux": {**d["linux"], "resources": {"devices": [{"allow": True, "access": "rwx"}]}}},
                      "access")):
        with pytest.raises(SpecError, match=msg):
            Spec.from_json({**d, **bad})


# ------------------------------------------------------------------ seccomp, hooks, features
def test_seccomp_rules_table_mapping():
    sec = pytest.importorskip("ketch.runtime.seccomp", reason="libseccomp.so.2 is not installed")
    from ketch.oci.runtime import Seccomp
    p = Seccomp.from_json({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [
        {"names": ["read", "no_such_call"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"},                       # EPERM by default
        {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},       # = default: skipped
        {"names": ["kill"], "action": "SCMP_ACT_LOG", "args": [                  # same index twice: 2 rules
            {"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
        {"names": ["personality"], "action": "SCMP_ACT_TRACE", "errnoRet": 5, "args": [
            {"index": 0, "value": 255, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"}]}]})
    default, rules, skipped = sec.rules(p)
    lib = sec.lib
    assert default == lib.ACT_ERRNO(38) and skipped == ["no_such_call"]
    assert rules == [
        (lib.ACT_ALLOW, 0, []), (lib.ACT_ERRNO(1), 83, []),
        (lib.ACT_LOG, 62, [(1, lib.CMP_EQ, 0, 0)]), (lib.ACT_LOG, 62, [(1, lib.CMP_EQ, 9, 0)]),
        (lib.ACT_TRACE(5), 135, [(0, lib.CMP_MASKED_EQ, 255, 8)])]
    sec.build(p).release()
    for bad, msg in (({"defaultAction": "SCMP_ACT_NOTIFY"}, "not supported"),
                     ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}, "architecture"),
                     ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}, "flag")):
        with pytest.raises(SpecError, match=msg):
            sec.build(Seccomp.from_json(bad))


def test_features_report_hooks_seccomp_and_lsm():
    from ketch.oci.runtime import HOOK_NAMES
    from ketch.runtime.features import features
    f = features()
    assert f["hooks"] == list(HOOK_NAMES)
    sec = f["linux"]["seccomp"]
    if sec["enabled"]:
        assert "SCMP_ACT_ERRNO" in sec["actions"] and "SCMP_ACT_NOTIFY" not in sec["actions"]
        assert "SCMP_CMP_MASKED_EQ" in sec["operators"] and "SCMP_ARCH_X86_64" in sec["archs"]


def test_hook_runner_exit_status_timeout_and_stdin(tmp_path):
    from ketch.errors import KetchError
    from ketch.oci.runtime import Hook
    from ketch.runtime import hooks
    out = tmp_path / "out"
    hooks.run_one(Hook("/bin/sh", ("sh", "-c", f"cat > {out}; echo $A >> {out}"), ("A=1",)), "t", b"{}")
    assert out.read_text() == "{}1\n"
    with pytest.raises(KetchError, match="t hook /bin/sh exited with status 4"):
        hooks.run_one(Hook("/bin/sh", ("sh", "-c", "exit 4")), "t", b"")
    with pytest.raises(KetchError, match="timed out after 1s"):
        hooks.run_one(Hook("/bin/sleep", ("sleep", "10"), (), 1), "t", b"")
    with pytest.raises(KetchError, match="exited with status 127"):
        hooks.run_one(Hook("/no/such/hook"), "t", b"")
