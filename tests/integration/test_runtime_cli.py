"""``ketch-runtime`` driven as a subprocess, as containerd's shim and podman's
conmon drive runc: the lifecycle on a bundle, ``run`` exit codes, stdio,
``--preserve-fds``, ``--console-socket``, ``list``/``ps``/errors; then the
real clients — podman with ``--runtime`` and containerd's runc-v2 shim with
ketch-runtime as its runc binary.

Like containerd's shim, the test process makes itself the child subreaper
while containers are alive (``create`` does not wait for PID 1), and reaps
them at the end.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED_IMAGES, mounts_under, require_root

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent / "ketch-runtime"
RUNTIME = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "ketch.cli.runtime"]
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
PR_SET_CHILD_SUBREAPER = 36


def alpine_layer() -> Path:
    layout = SHARED_IMAGES / "alpine"
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m["annotations"]["org.opencontainers.image.ref.name"] == "3.20.3")
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_text())
    return layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]


def host_mounts() -> set[tuple[str, str]]:
    """(mount point, source) of every mount in our mount namespace (``findmnt -rn``)."""
    with open("/proc/self/mountinfo") as f:
        out = set()
        for line in f:
            left, _, right = line.partition(" - ")
            out.add((left.split()[4], (right.split() + ["", ""])[1]))
        return out


def new_mounts(before: set[tuple[str, str]], *ours: str) -> list[tuple[str, str]]:
    """Mounts that appeared since ``before`` and belong to this test (a path in
    ``ours`` in their mount point or source).  The machine is shared: other
    people's mounts come and go meanwhile, so a bare count would be flaky."""
    return sorted(m for m in host_mounts() - before if any(o in m[0] or o in m[1] for o in ours))


def _subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class RT:
    """ketch-runtime with a private ``--root``, on one alpine bundle."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "state"
        self.bundle = base / "bundle"

    def __call__(self, *args: str, check: bool = False, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run ketch-runtime; its stdout/stderr are files, not pipes: a created
        container inherits them and would hold a pipe open past the CLI's exit."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.run([*RUNTIME, "--root", str(self.root), *args], timeout=timeout,
                               stdout=out, stderr=err, **kw)
            out.seek(0)
            err.seek(0)
            p.stdout, p.stderr = out.read(), err.read()
        if check and p.returncode != 0:
            raise AssertionError(f"ketch-runtime {' '.join(args)} exited {p.returncode}: {p.stderr.decode()}")
        return p

    def state(self, cid: str) -> dict:
        return json.loads(self("state", cid, check=True).stdout)

    def config(self, *args: str, terminal: bool = False, **process) -> None:
        spec = json.loads((self.bundle / "config.json").read_text())
        spec["process"]["args"] = list(args)
        spec["process"]["terminal"] = terminal
        spec["process"].update(process)
        (self.bundle / "config.json").write_text(json.dumps(spec))

    def wait_status(self, cid: str, status: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(cid)
            if st["status"] == status or time.monotonic() > deadline:
                return st
            time.sleep(0.02)


@pytest.fixture
def rt():
    require_root()
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"test images not found at {SHARED_IMAGES}")
    before = host_mounts()
    base = Path(tempfile.mkdtemp(prefix="ketch-rtcli-", dir="/var/tmp"))
    r = RT(base)
    (r.bundle / "rootfs").mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(alpine_layer()), "-C", str(r.bundle / "rootfs")], check=True)
    r("spec", "--bundle", str(r.bundle), check=True)
    _subreaper(True)
    try:
        yield r
    finally:
        for cid in r("list", "-q").stdout.decode().split():
            r("delete", "--force", cid)
        _reap_all()
        _subreaper(False)
        leaks = mounts_under(str(base))
        shutil.rmtree(base, ignore_errors=True)
        assert not leaks
        assert not new_mounts(before, str(base))


# ------------------------------------------------------------------ lifecycle
def test_create_start_kill_delete(rt):
    out = rt.base / "out"
    out.mkdir()
    spec = json.loads((rt.bundle / "config.json").read_text())
    spec["mounts"].append({"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind"]})
    (rt.bundle / "config.json").write_text(json.dumps(spec))
    rt.config("sh", "-c", "echo started > /out/marker; exec sleep 60")
    pid_file = rt.base / "init.pid"
    p = rt("create", "--bundle", str(rt.bundle), "--pid-file", str(pid_file), "c1", check=True)
    assert p.stdout == b"" and p.stderr == b""
    st = rt.state("c1")
    assert st["status"] == "created" and st["id"] == "c1" and st["bundle"] == str(rt.bundle)
    assert st["ociVersion"] and "annotations" in st
    pid = int(pid_file.read_text())
    assert st["pid"] == pid and os.path.exists(f"/proc/{pid}")
    time.sleep(0.2)
    assert not (out / "marker").exists(), "the program ran before start"

    rt("start", "c1", check=True)
    assert rt.state("c1")["status"] == "running"
    for _ in range(100):
        if (out / "marker").exists():
            break
        time.sleep(0.05)
    assert (out / "marker").read_text() == "started\n"
    assert json.loads(rt("ps", "--format", "json", "c1", check=True).stdout) == [pid]
    table = rt("ps", "c1", check=True).stdout.decode().splitlines()
    assert "PID" in table[0] and len(table) == 2 and str(pid) in table[1].split()

    rt("kill", "c1", "KILL", check=True)
    st = rt.wait_status("c1", "stopped")
    assert st["status"] == "stopped" and st["pid"] == 0
    _, status = os.waitpid(pid, 0)  # we are the subreaper, as containerd's shim is
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    p = rt("kill", "c1")
    assert p.returncode == 1 and p.stderr == b"container not running\n"
    assert rt("kill", "--all", "c1", "KILL").returncode == 0
    rt("delete", "c1", check=True)
    p = rt("state", "c1")
    assert p.returncode == 1 and p.stderr == b"container c1 does not exist\n"


def test_kill_default_signal_and_all(rt):
    # PID 1 ignores SIGTERM unless it handles it: trap it; --all reaches the child too.
    rt.config("sh", "-c", "trap 'exit 9' TERM; sleep 60 & wait")
    st = None
    try:
        rt("run", "--detach", "--bundle", str(rt.bundle), "k1", check=True)
        st = rt.state("k1")
        for _ in range(100):
            pids = json.loads(rt("ps", "--format", "json", "k1", check=True).stdout)
            if len(pids) == 2:
                break
            time.sleep(0.05)
        assert pids[0] == st["pid"] and len(pids) == 2
        rt("kill", "--all", "k1", check=True)  # SIGTERM to both
        _, status = os.waitpid(st["pid"], 0)
        assert os.waitstatus_to_exitcode(status) == 9
        assert rt.state("k1")["status"] == "stopped"
    finally:
        rt("delete", "--force", "k1")


def test_created_container_is_deleted_without_force(rt):
    # runc's rule, which containerd's shim relies on when a task is removed before start.
    rt.config("true")
    rt("create", "--bundle", str(rt.bundle), "d1", check=True)
    pid = rt.state("d1")["pid"]
    rt("delete", "d1", check=True)
    assert rt("list", "-q").stdout == b""
    os.waitpid(pid, 0)


def test_run_foreground_exit_codes_and_stdio(rt):
    rt.config("sh", "-c", "read line; echo got $line; echo err >&2; exit 42")
    p = rt("run", "--bundle", str(rt.bundle), "r1", input=b"hello\n")
    assert (p.returncode, p.stdout, p.stderr) == (42, b"got hello\n", b"err\n")
    rt.config("true")
    assert rt("run", "--bundle", str(rt.bundle), "r2").returncode == 0
    rt.config("/no/such/program")
    p = rt("run", "--bundle", str(rt.bundle), "r3")
    assert p.returncode == 1
    assert p.stderr == b'exec: "/no/such/program": no such file or directory\n'
    assert rt("list", "-q").stdout == b"", "run deletes the container after it exits"


def test_run_keep_and_bundle_from_cwd(rt):
    rt.config("sh", "-c", "exit 3")
    assert rt("run", "--keep", "r4", cwd=rt.bundle).returncode == 3
    st = rt.state("r4")
    assert st["status"] == "stopped" and st["bundle"] == str(rt.bundle)
    rt("delete", "r4", check=True)


def test_preserve_fds(rt):
    """fd 3 (a pipe) is preserved; fd 4 (inherited, not preserved) is closed in the container."""
    rt.config("sh", "-c", "echo via-fd3 >&3; ls /proc/self/fd")
    r, w = os.pipe()
    extra = os.open("/dev/null", os.O_RDONLY)

    def child_fds():
        os.dup2(w, 3)
        os.dup2(extra, 4)

    try:
        p = rt("run", "--preserve-fds", "1", "--bundle", str(rt.bundle), "f1",
               pass_fds=(3, 4), preexec_fn=child_fds)
    finally:
        os.close(w)
        os.close(extra)
    with os.fdopen(r) as f:
        assert f.read() == "via-fd3\n"
    assert p.returncode == 0, p.stderr
    fds = sorted(int(x) for x in p.stdout.split())
    assert fds[:4] == [0, 1, 2, 3] and len(fds) == 5, fds  # the fifth is ls's own directory fd


def test_console_socket(rt):
    rt.config("sh", "-c", "tty; stty size", terminal=True, consoleSize={"height": 30, "width": 100})
    path = str(rt.base / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    try:
        rt("create", "--bundle", str(rt.bundle), "--console-socket", path, "t1", check=True)
        conn, _ = srv.accept()
        _msg, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        conn.close()
        master = fds[0]
        pid = rt.state("t1")["pid"]
        rt("start", "t1", check=True)
        data = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the slave side closed
                break
            if not chunk:
                break
            data += chunk
        os.close(master)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert data.replace(b"\r", b"").split(b"\n")[:2] == [b"/dev/pts/0", b"30 100"]
    finally:
        srv.close()
        rt("delete", "--force", "t1")


def test_terminal_without_console_socket_is_refused(rt):
    rt.config("true", terminal=True)
    p = rt("create", "--bundle", str(rt.bundle), "t2")
    assert p.returncode == 1 and b"console socket" in p.stderr
    assert rt("list", "-q").stdout == b""


def test_list_formats(rt):
    rt.config("sleep", "60")
    for cid in ("l1", "l2"):
        rt("create", "--bundle", str(rt.bundle), cid, check=True)
    rt("start", "l2", check=True)
    assert rt("list", "-q").stdout.decode().split() == ["l1", "l2"]
    rows = [line.split() for line in rt("list").stdout.decode().splitlines()]
    assert rows[0] == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert [(r[0], r[2], r[3], r[5]) for r in rows[1:]] == [
        ("l1", "created", str(rt.bundle), "root"), ("l2", "running", str(rt.bundle), "root")]
    js = json.loads(rt("list", "--format", "json", check=True).stdout)
    assert [(s["id"], s["status"]) for s in js] == [("l1", "created"), ("l2", "running")]
    assert all(s["pid"] > 0 and s["bundle"] == str(rt.bundle) for s in js)


def test_lifecycle_errors(rt):
    rt.config("sleep", "60")
    for args in (("start", "nope"), ("kill", "nope"), ("delete", "nope"), ("ps", "nope"), ("pause", "nope")):
        p = rt(*args)
        assert p.returncode == 1 and p.stderr == b"container nope does not exist\n", args
    assert rt("delete", "--force", "nope").returncode == 0
    rt("create", "--bundle", str(rt.bundle), "e1", check=True)
    p = rt("create", "--bundle", str(rt.bundle), "e1")
    assert p.returncode == 1 and b"already exists" in p.stderr
    rt("start", "e1", check=True)
    p = rt("start", "e1")
    assert p.returncode == 1 and p.stderr == b"cannot start a container that is running: e1\n"
    p = rt("delete", "e1")
    assert p.returncode == 1 and b"not stopped: running" in p.stderr
    p = rt("resume", "e1")
    assert p.returncode == 1 and p.stderr == b"cannot resume a container that is running: e1\n"
    rt("delete", "--force", "e1", check=True)
    assert rt("list", "-q").stdout == b""


def test_bad_bundle_reported_in_json_log(rt):
    log = rt.base / "log.json"
    p = rt("--log", str(log), "--log-format", "json", "create", "--bundle", str(rt.base / "nowhere"), "b1")
    assert p.returncode == 1 and p.stderr.count(b"\n") == 1 and b"config.json not found" in p.stderr
    rec = json.loads(log.read_text().splitlines()[-1])
    assert rec["level"] == "error" and "config.json not found" in rec["msg"] and rec["time"]


def test_concurrent_starts_release_once(rt):
    rt.config("sleep", "60")
    rt("create", "--bundle", str(rt.bundle), "s1", check=True)
    procs = [subprocess.Popen([*RUNTIME, "--root", str(rt.root), "start", "s1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    codes = sorted(p.wait(timeout=30) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert codes == [0, 1, 1, 1]
    assert rt.state("s1")["status"] == "running"


# ------------------------------------------------------------------ exec
def test_exec_in_running_container(rt):
    rt.config("sleep", "60")
    rt("run", "--detach", "--bundle", str(rt.bundle), "x1", check=True)
    try:
        # the same PID namespace: the container's init is PID 1 there
        p = rt("exec", "x1", "ps", "-o", "pid,args", check=True)
        rows = [line.split(None, 1) for line in p.stdout.decode().splitlines()[1:]]
        assert ["1", "sleep 60"] in rows, rows
        assert rt("exec", "x1", "true").returncode == 0
        p = rt("exec", "x1", "sh", "-c", "echo out; echo err >&2; exit 3")
        assert (p.returncode, p.stdout, p.stderr) == (3, b"out\n", b"err\n")
        p = rt("exec", "x1", "/no/such/program")
        assert p.returncode == 127 and b"no such file or directory" in p.stderr
        p = rt("exec", "x1", "sh", "-c", "kill -KILL $$")
        assert p.returncode == 137
        p = rt("exec", "--env", "A=1", "-e", "B=two", "--cwd", "/tmp", "--user", "65534:65534", "x1",
               "sh", "-c", "echo $A $B; pwd; id -u; id -g", check=True)
        assert p.stdout == b"1 two\n/tmp\n65534\n65534\n"
        p = rt("exec", "x1", "cat", input=b"stdin reaches it\n", check=True)
        assert p.stdout == b"stdin reaches it\n"

        proc = {"args": ["sh", "-c", "echo $FROM; pwd; id -u; grep CapEff /proc/self/status"],
                "cwd": "/etc", "env": ["PATH=/bin:/usr/bin", "FROM=file"], "user": {"uid": 1, "gid": 1},
                "capabilities": {"bounding": [], "effective": [], "permitted": []}, "noNewPrivileges": True}
        pf = rt.base / "process.json"
        pf.write_text(json.dumps(proc))
        p = rt("exec", "--process", str(pf), "x1", check=True)
        assert p.stdout.decode().split("\n")[:3] == ["file", "/etc", "1"]
        assert p.stdout.decode().split()[-1] == "0000000000000000"

        marker_pid = rt.base / "exec.pid"
        p = rt("exec", "--detach", "--pid-file", str(marker_pid), "x1", "sleep", "30", check=True)
        assert p.stdout == b"" and p.stderr == b""
        pid = int(marker_pid.read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert f.read() == b"sleep\x0030\x00"
        assert pid in json.loads(rt("ps", "--format", "json", "x1", check=True).stdout)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)  # reparented to us, the subreaper
        assert os.WTERMSIG(status) == signal.SIGKILL
    finally:
        rt("delete", "--force", "x1")


def test_exec_errors(rt):
    p = rt("exec", "nope", "true")
    assert p.returncode == 1 and p.stderr == b"container nope does not exist\n"
    rt.config("true")
    rt("run", "--keep", "--bundle", str(rt.bundle), "x2", check=True)
    p = rt("exec", "x2", "true")
    assert p.returncode == 1 and p.stderr == b"cannot exec in a stopped container\n"
    rt("delete", "x2", check=True)


# ------------------------------------------------------------------ podman
class Podman:
    """podman on a private store (root, runroot, tmpdir) with ketch-runtime as its OCI runtime."""

    def __init__(self, base: Path):
        self.base = base
        self.argv = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run"),
                     "--tmpdir", str(base / "tmp"), "--cgroup-manager=cgroupfs", "--events-backend=file",
                     "--runtime", str(BIN), "--runtime-flag", f"root={base / 'runtime'}"]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        # conmon writes an "oom" marker into its working directory when the
        # container is OOM-killed: keep that inside the store, not the checkout.
        kw.setdefault("cwd", self.base)
        p = subprocess.run([*self.argv, *args], timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {p.returncode}: {p.stderr.decode()}")
        return p


@pytest.fixture
def podman():
    require_root()
    if not shutil.which("podman"):
        pytest.skip("podman is not installed")
    if not BIN.exists():
        pytest.skip(f"{BIN} is not installed (pip install -e .)")
    if not (SHARED_IMAGES / "alpine").is_dir():
        pytest.skip(f"alpine image not found under {SHARED_IMAGES}")
    before = host_mounts()
    base = Path(tempfile.mkdtemp(prefix="ketch-podman-", dir="/var/tmp"))
    pm = Podman(base)
    try:
        pm("pull", "-q", f"oci:{SHARED_IMAGES / 'alpine'}:3.20.3")
        image = pm("images", "-q").stdout.decode().split()[0]
        pm("tag", image, "alpine:3.20.3")
        yield pm
    finally:
        pm("rm", "-af", "-t", "0", check=False)
        pm("system", "reset", "-f", check=False)
        for mp in sorted(mounts_under(str(base)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], check=False)
        shutil.rmtree(base, ignore_errors=True)
        assert not new_mounts(before, str(base), "/run/containerd", "/run/ketch-runtime")


def test_podman_run_rm(podman):
    run = ["run", "--rm", "--network", "none", *ULIMITS, "alpine:3.20.3"]
    assert podman(*run, "cat", "/etc/alpine-release").stdout == b"3.20.3\n"
    assert podman(*run, "true").returncode == 0
    assert podman(*run, "sh", "-c", "exit 7", check=False).returncode == 7
    p = podman(*run, "/no/such/program", check=False)
    assert p.returncode == 127 and b"no such file or directory" in p.stderr


def test_podman_tty(podman):
    if not shutil.which("script"):
        pytest.skip("script(1) is not installed (bsdutils): podman -t needs a terminal")
    cmd = " ".join([*podman.argv, "run", "--rm", "-t", "--network", "none", *ULIMITS, "alpine:3.20.3",
                    "sh", "-c", "'tty; exit 4'"])
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], stdout=subprocess.PIPE, timeout=120)
    assert p.returncode == 4
    assert b"/dev/pts/0" in p.stdout


def test_podman_detached_stop_rm(podman):
    cid = podman("run", "-d", "--name", "bg", "--network", "none", *ULIMITS, "alpine:3.20.3",
                 "sh", "-c", "trap 'exit 0' TERM; sleep 60 & wait").stdout.decode().strip()
    assert podman("inspect", "-f", "{{.State.Status}}", "bg").stdout == b"running\n"
    podman("stop", "-t", "10", "bg")
    assert podman("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", "bg").stdout == b"exited 0\n"
    podman("rm", "bg")
    assert cid not in podman("ps", "-aq", "--no-trunc").stdout.decode()


def test_podman_exec(podman):
    podman("run", "-d", "--name", "ex", "--network", "none", *ULIMITS, "alpine:3.20.3", "sleep", "60")
    try:
        assert podman("exec", "ex", "cat", "/etc/alpine-release").stdout == b"3.20.3\n"
        assert podman("exec", "ex", "sh", "-c", "exit 3", check=False).returncode == 3
        assert podman("exec", "-u", "65534", "-w", "/tmp", "ex", "sh", "-c", "id -u; pwd").stdout == b"65534\n/tmp\n"
    finally:
        podman("rm", "-f", "-t", "0", "ex", check=False)
    assert b"ex" not in podman("ps", "-a", "--format", "{{.Names}}").stdout


# ------------------------------------------------------------------ containerd
CTR_IMAGE = "docker.io/library/alpine:3.20.3"


class Containerd:
    """A containerd of our own (socket, root, state under /var/tmp) and ``ctr``
    whose runc-v2 shim runs ketch-runtime (``--runc-binary``, state in ``--runc-root``)."""

    def __init__(self, base: Path):
        self.base = base
        self.sock = base / "containerd.sock"
        self.ns = f"ketch-test-{os.getpid()}"
        self.proc: subprocess.Popen | None = None

    def config(self) -> str:
        b = self.base
        return (f'version = 2\nroot = "{b}/root"\nstate = "{b}/state"\n'
                f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                f'[grpc]\n  address = "{self.sock}"\n[ttrpc]\n  address = "{self.sock}.ttrpc"\n')

    def start(self) -> None:
        (self.base / "config.toml").write_text(self.config())
        log = open(self.base / "containerd.log", "wb")
        self.proc = subprocess.Popen(["containerd", "--config", str(self.base / "config.toml")],
                                     stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        for _ in range(200):
            if self("version", check=False).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError("containerd did not start: " + (self.base / "containerd.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.run(["ctr", "--address", str(self.sock), "-n", self.ns, *args], timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {p.returncode}: {p.stderr.decode()}")
        return p

    def run_args(self) -> list[str]:
        return ["--runtime", "io.containerd.runc.v2", "--runc-binary", str(BIN),
                "--runc-root", str(self.base / "runc"), "--fifo-dir", str(self.base / "fifo")]


@pytest.fixture
def containerd():
    require_root()
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2", "skopeo"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (apt-get install containerd skopeo)")
    if not BIN.exists():
        pytest.skip(f"{BIN} is not installed (pip install -e .)")
    if not (SHARED_IMAGES / "alpine").is_dir():
        pytest.skip(f"alpine image not found under {SHARED_IMAGES}")
    before = host_mounts()
    had_run_dir = os.path.exists("/run/containerd")
    base = Path(tempfile.mkdtemp(prefix="ketch-containerd-", dir="/var/tmp"))
    c = Containerd(base)
    try:
        archive = base / "alpine.tar"
        subprocess.run(["skopeo", "copy", "-q", f"oci:{SHARED_IMAGES / 'alpine'}:3.20.3",
                        f"oci-archive:{archive}:{CTR_IMAGE}"], check=True, timeout=120)
        c.start()
        c("images", "import", str(archive))
        yield c
    finally:
        if c.proc is not None and c.proc.poll() is None:
            for task in c("task", "ls", "-q", check=False).stdout.decode().split():
                c("task", "rm", "-f", task, check=False)
            for ctr in c("containers", "ls", "-q", check=False).stdout.decode().split():
                c("containers", "rm", ctr, check=False)
            c("images", "rm", CTR_IMAGE, check=False)
        c.stop()
        for mp in sorted(mounts_under(str(base)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], check=False)
        shutil.rmtree(base, ignore_errors=True)
        if not had_run_dir:  # the shim's socket directory, /run/containerd/s, is not configurable
            shutil.rmtree("/run/containerd", ignore_errors=True)
        assert not new_mounts(before, str(base), "/run/containerd", "/run/ketch-runtime")


def test_containerd_run_rm(containerd):
    run = ["run", "--rm", *containerd.run_args(), CTR_IMAGE]
    assert containerd(*run, "c1", "cat", "/etc/alpine-release").stdout == b"3.20.3\n"
    assert containerd(*run, "c2", "sh", "-c", "exit 5", check=False).returncode == 5
    p = containerd(*run, "c3", "/no/such/program", check=False)
    # the shim read the reason from ketch-runtime's --log (JSON) file
    assert p.returncode != 0
    assert b'OCI runtime create failed: exec: "/no/such/program": no such file or directory' in p.stderr
    assert containerd("containers", "ls", "-q").stdout == b""


def test_containerd_detached_kill_ps_rm(containerd):
    containerd("run", "-d", *containerd.run_args(), CTR_IMAGE, "d1", "sh", "-c", "sleep 60 & wait")
    rows = [line.split() for line in containerd("task", "ls").stdout.decode().splitlines()[1:]]
    assert rows[0][0] == "d1" and rows[0][2] == "RUNNING"
    pid = int(rows[0][1])
    for _ in range(100):
        pids = [int(line.split()[0]) for line in containerd("task", "ps", "d1").stdout.decode().splitlines()[1:]]
        if len(pids) == 2:
            break
        time.sleep(0.05)
    assert pid in pids and len(pids) == 2  # `ketch-runtime ps --format json`
    containerd("task", "kill", "-s", "KILL", "d1")
    for _ in range(200):
        if b"STOPPED" in containerd("task", "ls").stdout:
            break
        time.sleep(0.05)
    assert b"STOPPED" in containerd("task", "ls").stdout
    containerd("task", "rm", "d1")
    containerd("containers", "rm", "d1")
    assert not os.listdir(containerd.base / "runc" / containerd.ns)


def test_containerd_tty(containerd):
    if not shutil.which("script"):
        pytest.skip("script(1) is not installed (bsdutils): ctr -t needs a terminal")
    cmd = " ".join(["ctr", "--address", str(containerd.sock), "-n", containerd.ns, "run", "--rm", "-t",
                    *containerd.run_args(), CTR_IMAGE, "t1", "sh", "-c", "'tty; exit 6'"])
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], stdout=subprocess.PIPE, timeout=120)
    assert p.returncode == 6
    assert b"/dev/pts/0" in p.stdout


def test_containerd_cri_runtime_stanza_parses(containerd):
    """The README's CRI stanza (what a Kubernetes RuntimeClass selects) is
    accepted by this containerd; CRI itself is not exercised here (no crictl)."""
    cfg = containerd.base / "cri.toml"
    cfg.write_text('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ketch]\n'
                   '  runtime_type = "io.containerd.runc.v2"\n'
                   '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ketch.options]\n'
                   f'    BinaryName = "{BIN}"\n')
    out = subprocess.run(["containerd", "--config", str(cfg), "config", "dump"], stdout=subprocess.PIPE,
                         check=True, timeout=60).stdout.decode()
    section = out[out.index('containerd.runtimes.ketch]'):]
    assert 'runtime_type = "io.containerd.runc.v2"' in section
    assert f'BinaryName = "{BIN}"' in section


def test_containerd_task_exec(containerd):
    containerd("run", "-d", *containerd.run_args(), CTR_IMAGE, "e1", "sleep", "60")
    try:
        p = containerd("task", "exec", "--exec-id", "x", "e1", "cat", "/etc/alpine-release")
        assert p.stdout == b"3.20.3\n"
        p = containerd("task", "exec", "--exec-id", "y", "e1", "sh", "-c", "exit 4", check=False)
        assert p.returncode == 4
    finally:
        containerd("task", "kill", "-s", "KILL", "e1", check=False)
        for _ in range(200):
            if b"RUNNING" not in containerd("task", "ls").stdout:
                break
            time.sleep(0.05)
        containerd("task", "rm", "-f", "e1", check=False)
        containerd("containers", "rm", "e1", check=False)
