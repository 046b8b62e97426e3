"""Detached containers: supervisor, json-file logs, the lifecycle commands, exec,
restart policies and --init (root only; real images, namespaces, overlayfs)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import mounts_under, require_root

pytestmark = pytest.mark.integration

IMG = "alpine:3.20.3"


def _procs_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions ``text`` (a monitor's carries its root)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        out.append(int(d))
            except OSError:
                continue
    return out


@pytest.fixture
def k(images):
    """The session's image root; every container a test made is removed after
    it, and nothing may be left: records, processes, mounts, state, layers."""
    require_root()
    yield images
    ids = images.out("ps", "-aq", "--no-trunc").split()
    if ids:
        images("rm", "-f", *ids)
    assert images.out("ps", "-aq") == ""
    time.sleep(0.05)
    assert not _procs_mentioning(str(images.root) + '"'), "a supervisor is left"
    assert not mounts_under(str(images.base))
    for d in (images.runroot / "runtime", images.root / "containers", images.root / "snapshots" / "rw",
              images.runroot / "netns"):
        assert not (d.is_dir() and list(d.iterdir())), f"left in {d}: {list(d.iterdir())}"


def inspect(k, ref: str) -> dict:
    return json.loads(k.out("inspect", "--type", "container", ref))[0]


def wait_for(pred, timeout: float = 10.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_d_ps_logs_stop_start_wait_rm(k):
    p = k("run", "-d", "--name", "web", IMG, "sh", "-c", "echo hello; echo oops >&2; exec sleep 60", check=True)
    cid = p.stdout.decode().strip()
    assert len(cid) == 64 and all(c in "0123456789abcdef" for c in cid)
    assert p.stderr == b""
    ps = k.out("ps")
    assert cid[:12] in ps and "web" in ps and "Up " in ps
    assert k.out("ps", "-q", "--no-trunc").split() == [cid]
    assert k.out("ps", "--format", "{{.ID}}|{{.Names}}|{{.State}}").strip() == f"{cid[:12]}|web|running"
    wait_for(lambda: k("logs", "web").stdout == b"hello\n", what="logs")
    lg = k("logs", "web")
    assert (lg.stdout, lg.stderr) == (b"hello\n", b"oops\n")
    assert k("logs", "-t", "web").stdout.decode().split(" ", 1)[1] == "hello\n"
    doc = inspect(k, "web")
    assert doc["Id"] == cid and doc["Name"] == "/web"
    st = doc["State"]
    assert st["Status"] == "running" and st["Running"] and st["Pid"] > 0 and st["ExitCode"] == 0
    assert doc["Config"]["Cmd"] == ["sh", "-c", "echo hello; echo oops >&2; exec sleep 60"]
    assert doc["Config"]["Image"] == IMG and doc["HostConfig"]["AutoRemove"] is False
    assert doc["HostConfig"]["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    # sleep as PID 1 ignores SIGTERM: stop -t 1 kills it after one second
    t = time.monotonic()
    assert k.out("stop", "-t", "1", "web").strip() == "web"
    assert 0.9 < time.monotonic() - t < 5
    st = inspect(k, "web")["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 137 and not st["Running"] and st["Pid"] == 0
    assert st["FinishedAt"] > st["StartedAt"]
    assert "web" not in k.out("ps") and "Exited (137)" in k.out("ps", "-a")
    assert k.out("wait", "web").strip() == "137"
    # start again: same container, same writable layer, logs appended
    assert k.out("start", "web").strip() == "web"
    assert inspect(k, "web")["State"]["Running"]
    wait_for(lambda: k("logs", "web").stdout == b"hello\nhello\n", what="second run's logs")
    p = k("rm", "web")
    assert p.returncode == 1 and b"cannot remove a running container" in p.stderr
    k.out("kill", "web")
    assert k.out("wait", "web").strip() == "137"
    assert k.out("rm", "web").strip() == "web"
    assert k("inspect", "--type", "container", "web").returncode == 1


def test_wait_and_logs_follow_until_exit(k):
    cid = k.out("run", "-d", IMG, "sh", "-c", "for i in 1 2 3; do echo line$i; sleep 0.2; done; exit 3").strip()
    f = subprocess.run(k.argv("logs", "-f", cid), stdout=subprocess.PIPE, timeout=20)
    assert f.stdout == b"line1\nline2\nline3\n"
    assert k.out("wait", cid).strip() == "3"
    assert k.out("logs", "--tail", "1", cid) == "line3\n"
    assert k.out("logs", "--since", "1h", cid).count("line") == 3
    assert k.out("logs", "--since", str(time.time() + 5), cid) == ""
    assert "Exited (3)" in k.out("ps", "-a", "--filter", "status=exited")
    assert k.out("ps", "-a", "--filter", "status=running") .count("\n") == 1  # the header only
    assert k.out("ps", "-aq", "--filter", f"id={cid[:6]}").strip() == cid[:12]


def test_exit_recorded_without_any_ketch_command(k):
    cid = k.out("run", "-d", IMG, "sleep", "60").strip()
    pid = inspect(k, cid)["State"]["Pid"]
    os.kill(pid, signal.SIGKILL)  # from the host, no ketch command running
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="PID 1 gone")
    time.sleep(0.3)
    conn = __import__("sqlite3").connect(k.root / "ketch.db")  # the supervisor wrote it, not a ketch command
    status, code, finished = conn.execute("SELECT status, exit_code, finished_at FROM containers WHERE id=?",
                                          (cid,)).fetchone()
    conn.close()
    assert (status, code) == ("exited", 137) and finished
    assert inspect(k, cid)["State"]["ExitCode"] == 137


def test_kill_9_of_supervisor_then_truthful_and_rm_f_cleans(k):
    cid = k.out("run", "-d", "--name", "orphan", IMG, "sleep", "60").strip()
    doc = inspect(k, cid)
    pid = doc["State"]["Pid"]
    monitors = _procs_mentioning(cid)
    assert len(monitors) == 1, monitors
    os.kill(monitors[0], signal.SIGKILL)
    time.sleep(0.2)
    # PID 1 outlives its supervisor: still running, and shown so
    assert inspect(k, cid)["State"]["Running"] and "orphan" in k.out("ps")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "orphan" not in k.out("ps"), what="ps to notice the exit")
    st = inspect(k, cid)["State"]
    assert st["Status"] == "exited" and st["ExitCode"] == 255  # nobody saw its status
    # a second one, left running: rm -f removes every trace (checked by the fixture)
    k.out("run", "-d", "--name", "orphan2", IMG, "sleep", "60")
    os.kill(_procs_mentioning(k.out("ps", "-q", "--no-trunc", "--filter", "name=orphan2").strip())[0],
            signal.SIGKILL)
    assert k.out("rm", "-f", "orphan", "orphan2").split() == ["orphan", "orphan2"]


def test_logs_are_byte_exact(k, tmp_path):
    blob = bytes(range(256)) * 8 + b"\xff\xfe invalid utf-8 \xc3\x28 and \xe2\x82\xac\n"
    (tmp_path / "blob").write_bytes(blob)
    long_line = b"x" * (40 * 1024) + b"\n"
    (tmp_path / "long").write_bytes(long_line)
    cid = k.out("run", "-d", "-v", f"{tmp_path}:/in:ro", IMG, "sh", "-c",
                "cat /in/long; cat /in/blob; printf 'err no newline' >&2").strip()
    assert k.out("wait", cid).strip() == "0"
    p = k("logs", cid)
    assert p.stdout == long_line + blob
    assert p.stderr == b"err no newline"
    entries = [json.loads(line) for line in (k.root / "containers" / cid / f"{cid}-json.log").read_text().splitlines()]
    assert set(entries[0]) == {"log", "stream", "time"}
    assert max(len(e["log"]) for e in entries if e["log"].startswith("x")) == 16 * 1024  # split at 16 KiB
    assert sum(e["log"].startswith("x") for e in entries) == 3


def test_stop_signal_and_timeout(k):
    cid = k.out("run", "-d", IMG, "sh", "-c",
                "trap 'echo got-usr1; exit 7' USR1; trap 'echo got-term' TERM; "
                "echo ready; while true; do sleep 0.1; done").strip()
    wait_for(lambda: b"ready" in k("logs", cid).stdout, what="ready")
    # The image's StopSignal is used (set here in the record as if the image had STOPSIGNAL SIGUSR1).
    conn = __import__("sqlite3").connect(k.root / "ketch.db")
    cfg = json.loads(conn.execute("SELECT config FROM containers WHERE id=?", (cid,)).fetchone()[0])
    cfg["StopSignal"] = "SIGUSR1"
    conn.execute("UPDATE containers SET config=? WHERE id=?", (json.dumps(cfg), cid))
    conn.commit()
    conn.close()
    t = time.monotonic()
    k.out("stop", cid)
    assert time.monotonic() - t < 3
    assert inspect(k, cid)["State"]["ExitCode"] == 7 and b"got-usr1" in k("logs", cid).stdout
    # SIGTERM is trapped and ignored: SIGKILL after -t 1
    k.out("start", cid)
    conn = __import__("sqlite3").connect(k.root / "ketch.db")
    cfg.pop("StopSignal")
    conn.execute("UPDATE containers SET config=? WHERE id=?", (json.dumps(cfg), cid))
    conn.commit()
    conn.close()
    wait_for(lambda: k("logs", cid).stdout.count(b"ready") == 2, what="ready again")
    t = time.monotonic()
    k.out("stop", "-t", "1", cid)
    assert 0.9 < time.monotonic() - t < 4
    assert inspect(k, cid)["State"]["ExitCode"] == 137 and b"got-term" in k("logs", cid).stdout


def test_kill_signal_and_errors(k):
    cid = k.out("run", "-d", IMG, "sh", "-c", "trap 'exit 42' HUP; echo ready; while true; do sleep 0.1; done").strip()
    wait_for(lambda: b"ready" in k("logs", cid).stdout, what="ready")
    k.out("kill", "-s", "HUP", cid)
    assert k.out("wait", cid).strip() == "42"
    p = k("kill", cid)
    assert p.returncode == 1 and b"is not running" in p.stderr
    p = k("stop", "nosuch")
    assert p.returncode == 1 and b"No such container: nosuch" in p.stderr
    assert k("kill", "-s", "NOPE", cid).returncode == 125


def test_restart_policies(k):
    cid = k.out("run", "-d", "--restart", "on-failure:2", IMG, "sh", "-c", "echo run; exit 3").strip()
    wait_for(lambda: inspect(k, cid)["State"]["Status"] == "exited" and inspect(k, cid)["RestartCount"] == 2,
             what="two restarts")
    assert k("logs", cid).stdout == b"run\n" * 3 and inspect(k, cid)["State"]["ExitCode"] == 3
    cid = k.out("run", "-d", "--restart", "always", IMG, "sh", "-c", "echo run; sleep 0.2").strip()
    wait_for(lambda: inspect(k, cid)["RestartCount"] >= 2, what="always restarts")
    k.out("stop", "-t", "1", cid)
    n = inspect(k, cid)["RestartCount"]
    time.sleep(0.8)
    doc = inspect(k, cid)
    assert doc["State"]["Status"] == "exited" and doc["RestartCount"] == n  # stopped by the user: no more
    p = k("run", "--rm", "--restart", "always", IMG, "true")
    assert p.returncode == 125 and b"Conflicting options" in p.stderr


def test_exec(k):
    k.out("run", "-d", "--name", "box", "-w", "/srv", "-e", "A=1", IMG, "sleep", "60")
    assert k.out("exec", "box", "sh", "-c", "echo $$ $A $(pwd) $(id -u)").split() == ["2", "1", "/srv", "0"]
    assert k("exec", "box", "sh", "-c", "exit 5").returncode == 5
    p = k("exec", "-u", "nobody", "-w", "/tmp", "-e", "A=2", "-e", "B=3", "box", "sh", "-c",
          "echo $(id -un) $(pwd) $A $B")
    assert p.stdout.split() == [b"nobody", b"/tmp", b"2", b"3"], p.stderr
    # the container's PID namespace: PID 1 is the container's sleep
    assert k.out("exec", "box", "cat", "/proc/1/cmdline").split("\0")[0] == "sleep"
    # the container's capability sets (and seccomp filter mode), not ketch's
    status = k.out("exec", "box", "sh", "-c", "grep -E '^(CapBnd|CapEff|Seccomp):' /proc/self/status /proc/1/status")
    mine = sorted(line.split(":", 1)[1] for line in status.splitlines() if line.startswith("/proc/self"))
    pid1 = sorted(line.split(":", 1)[1] for line in status.splitlines() if line.startswith("/proc/1"))
    assert mine == pid1, status
    assert k("exec", "box", "nosuch").returncode == 127
    assert k("exec", "box", "/etc/passwd").returncode == 126
    assert k("exec", "-i", "box", "cat", input=b"piped\n").stdout == b"piped\n"
    assert k("exec", "-d", "box", "sh", "-c", "sleep 0.3; touch /tmp/done").returncode == 0
    wait_for(lambda: k("exec", "box", "test", "-e", "/tmp/done").returncode == 0, what="exec -d")
    titles = k.out("top", "box").splitlines()
    assert titles[0].split()[:3] == ["UID", "PID", "PPID"] and any("sleep 60" in r for r in titles[1:])
    k.out("stop", "-t", "0", "box")
    p = k("exec", "box", "true")
    assert p.returncode == 1 and b"is not running" in p.stderr


def test_init_reaps_zombies(k):
    # The subshell's background sleep is orphaned: reparented to PID 1, which must reap it.
    # Without --init PID 1 is `sleep`, which never does; with it, tini does.
    script = "(sleep 0.1 &); exec sleep 60"
    plain = k.out("run", "-d", IMG, "sh", "-c", script).strip()
    init = k.out("run", "-d", "--init", IMG, "sh", "-c", script).strip()
    time.sleep(0.6)

    def zombies(cid):
        return sum(1 for line in k.out("exec", cid, "ps", "-o", "stat,comm").splitlines() if line.startswith("Z"))
    assert (zombies(plain), zombies(init)) == (1, 0)
    assert k.out("exec", init, "cat", "/proc/1/cmdline").split("\0")[0] == "/sbin/docker-init"
    assert inspect(k, init)["HostConfig"]["Init"] is True
    t = time.monotonic()
    k.out("stop", init)  # tini forwards SIGTERM to sleep, which dies of it
    assert time.monotonic() - t < 3 and inspect(k, init)["State"]["ExitCode"] == 143


def test_names_unique_under_a_race(k):
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda _: k("run", "-d", "--name", "same", IMG, "sleep", "60"), range(8)))
    ok = [r for r in results if r.returncode == 0]
    assert len(ok) == 1, [r.stderr for r in results]
    assert all(r.returncode == 125 and b"Conflict" in r.stderr for r in results if r.returncode)
    assert k.out("ps", "-q", "--no-trunc").split() == [ok[0].stdout.decode().strip()]


def test_rm_auto_and_prune(k):
    cid = k.out("run", "-d", "--rm", IMG, "sh", "-c", "exit 0").strip()
    wait_for(lambda: k("inspect", "--type", "container", cid).returncode == 1, what="--rm removal")
    a = k.out("run", "-d", IMG, "true").strip()
    b = k.out("run", "-d", IMG, "sleep", "60").strip()
    k.out("wait", a)
    out = k.out("container", "prune", "-f")
    assert a in out and b not in out
    assert k.out("ps", "-aq", "--no-trunc").split() == [b]
    assert k.out("container", "ls", "-q").split() == [b[:12]]
