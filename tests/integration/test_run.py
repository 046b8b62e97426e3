"""`ketch run` end to end: real images, real namespaces, real overlayfs (root only)."""

from __future__ import annotations

import json
import os
import platform
import pty
import select
import signal
import struct
import subprocess
import termios
import fcntl
import time

import pytest

from tests.conftest import ALPINE_TAGS, BUSYBOX_TAGS, require_root

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _root():
    require_root()


@pytest.mark.parametrize("tag", ALPINE_TAGS)
def test_alpine_userland_on_host_kernel(images, tag):
    out = images.out("run", "--rm", f"alpine:{tag}", "sh", "-c",
                     "cat /etc/os-release; echo uname=$(uname -r); echo pid=$$")
    want = tag.split("-")[0] if not tag.startswith("edge") else None
    assert "ID=alpine" in out
    if want:
        assert f"VERSION_ID={want}" in out
    assert f"uname={platform.release()}" in out
    assert "pid=1" in out


@pytest.mark.parametrize("tag", BUSYBOX_TAGS)
def test_busybox_variants_run(images, tag):
    # The glibc variants need GLIBC_2.38, absent on a Debian 12 host: they only
    # run if the root really changed to the image's.
    out = images.out("run", "--rm", f"busybox:{tag}", "busybox")
    assert out.startswith(f"BusyBox v{tag.split('-')[0]}")


def test_only_own_processes_visible(images):
    out = images.out("run", "--rm", "alpine:3.20.3", "ps", "-o", "pid,comm")
    rows = [line.split() for line in out.strip().splitlines()[1:]]
    assert rows == [["1", "ps"]], out


def test_hostname_defaults_to_short_id_and_flag_sets_it(images):
    out = images.out("run", "--rm", "alpine:3.20.3", "cat", "/etc/hostname", "/proc/sys/kernel/hostname")
    first, second = out.split()
    assert first == second and len(first) == 12 and all(c in "0123456789abcdef" for c in first)
    assert images.out("run", "--rm", "--hostname", "box1", "alpine:3.20.3", "hostname").strip() == "box1"


def test_etc_files_are_per_container(images):
    out = images.out("run", "--rm", "-h", "web", "alpine:3.20.3", "cat", "/etc/hosts")
    assert "localhost" in out and "web" in out


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_passes_through(images, code):
    assert images("run", "--rm", "alpine:3.20.3", "sh", "-c", f"exit {code}").returncode == code


def test_not_found_is_127_and_not_executable_is_126(images):
    p = images("run", "--rm", "alpine:3.20.3", "no-such-program")
    assert p.returncode == 127, p.stderr
    assert b"no-such-program" in p.stderr
    p = images("run", "--rm", "alpine:3.20.3", "/etc/passwd")
    assert p.returncode == 126, p.stderr
    p = images("run", "--rm", "alpine:3.20.3", "/etc")
    assert p.returncode == 126, p.stderr


def test_sigkill_of_pid1_from_host_gives_137(images):
    p = subprocess.Popen(images.argv("run", "--name", "victim", "alpine:3.20.3", "sh", "-c", "echo up; sleep 60"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"up\n"
        # The record gets its Pid once `start` has returned, which may be after the
        # program's first output; kill(0) would signal our own process group.
        for _ in range(500):
            pid = json.loads(images.out("inspect", "--type", "container", "victim"))[0]["State"]["Pid"]
            if pid:
                break
            time.sleep(0.01)
        assert pid > 0
        os.kill(pid, signal.SIGKILL)
        assert p.wait(timeout=30) == 137
    finally:
        p.kill()
        p.wait()
        images("rm", "-f", "victim")


def test_stdio_is_byte_exact(images):
    blob = bytes(range(256)) * 4096 + b"\x00no newline"
    p = images("run", "--rm", "-i", "alpine:3.20.3", "cat", input=blob)
    assert p.returncode == 0 and p.stdout == blob
    p = images("run", "--rm", "alpine:3.20.3", "sh", "-c", "printf out; printf err >&2")
    assert (p.stdout, p.stderr) == (b"out", b"err")


def test_stdin_is_empty_without_i(images):
    p = images("run", "--rm", "alpine:3.20.3", "cat", input=b"should not arrive")
    assert p.returncode == 0 and p.stdout == b""


def test_volume_rw_and_ro(images, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    images.out("run", "--rm", "-v", f"{vol}:/data", "alpine:3.20.3", "sh", "-c", "echo hello > /data/f")
    assert (vol / "f").read_text() == "hello\n"
    p = images("run", "--rm", "-v", f"{vol}:/data:ro", "alpine:3.20.3", "sh", "-c", "echo x > /data/g")
    assert p.returncode != 0 and b"Read-only file system" in p.stderr
    assert not (vol / "g").exists()


def test_read_only_root(images):
    p = images("run", "--rm", "--read-only", "alpine:3.20.3", "touch", "/x")
    assert p.returncode != 0 and b"Read-only file system" in p.stderr
    # /dev/shm and /tmp-like mounts given by the user stay writable
    images.out("run", "--rm", "--read-only", "--tmpfs", "/tmp", "alpine:3.20.3", "touch", "/tmp/x", "/dev/shm/y")


def test_changes_stay_in_the_container(images):
    images.out("run", "--rm", "alpine:3.20.3", "sh", "-c",
               "echo ketch-marker > /etc/motd; rm -rf /lib/apk; test ! -e /lib/apk")
    out = images.out("run", "--rm", "alpine:3.20.3", "sh", "-c", "test -d /lib/apk && echo apk-present; cat /etc/motd")
    assert "apk-present" in out and "ketch-marker" not in out


def test_env_workdir_user_entrypoint(images):
    out = images.out("run", "--rm", "-e", "FOO=bar", "-w", "/tmp", "-u", "nobody", "alpine:3.20.3",
                     "sh", "-c", 'echo "$FOO $(pwd) $(id -un) $HOME"')
    assert out.strip() == "bar /tmp nobody /"
    out = images.out("run", "--rm", "--entrypoint", "echo", "alpine:3.20.3", "a", "b")
    assert out == "a b\n"


def test_masked_and_readonly_proc_paths(images):
    masked = [p for p in ("/proc/kcore", "/proc/timer_list", "/proc/keys", "/proc/sched_debug")
              if os.path.exists(p) and open(p, "rb").read(1)]
    if not masked:
        pytest.skip("no masked /proc file with content on this host to compare against")
    out = images.out("run", "--rm", "alpine:3.20.3", "sh", "-c",
                     f"wc -c < {masked[0]}; echo 1 > /proc/sys/kernel/domainname 2>/dev/null || echo ro;"
                     "ls /sys/firmware | wc -l")
    assert out.split() == ["0", "ro", "0"], (masked[0], out)


def run_on_pty(argv: list[str], after_output: tuple[bytes, bytes] | None = None,
               timeout: float = 60) -> tuple[int, bytes]:
    """Run ``argv`` on a new pty of 33x77 as a terminal user would; when the
    output contains ``after_output[0]``, type ``after_output[1]``.
    Returns (exit code, everything the terminal showed)."""
    pid, master = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
        os.execv(argv[0], argv)
    out = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 1)
        if r:
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
            if after_output and after_output[0] in out:
                os.write(master, after_output[1])
                after_output = None
    else:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(master)
    return os.waitstatus_to_exitcode(status), out


def test_tty_sees_window_size(images):
    code, out = run_on_pty(images.argv("run", "--rm", "-t", "alpine:3.20.3", "sh", "-c", "stty size; tty"))
    assert code == 0, out
    assert b"33 77" in out and b"/dev/pts/0" in out, out


def test_tty_ctrl_c_reaches_the_container(images):
    # ^C typed on ketch's (raw) terminal goes through the container's pty, whose
    # line discipline sends SIGINT to the container's foreground group: the
    # sleep dies and the shell's trap runs (ketch itself must not be interrupted).
    start = time.time()
    code, out = run_on_pty(images.argv("run", "--rm", "-it", "alpine:3.20.3", "sh", "-c",
                                       # "ready" comes from the foreground child itself, so the ^C
                                       # cannot land between the shell's fork and the child's exec
                                       "trap 'echo got-int; exit 42' INT; sh -c 'echo ready; exec sleep 30'; echo after"),
                           after_output=(b"ready", b"\x03"))
    assert code == 42 and b"got-int" in out and b"after" not in out, out
    assert time.time() - start < 20


def test_tty_input_is_raw_and_interactive(images):
    code, out = run_on_pty(images.argv("run", "--rm", "-it", "alpine:3.20.3", "sh", "-c",
                                       "echo ready; read line; echo \"got [$line]\""),
                           after_output=(b"ready", b"hello\r"))
    assert code == 0 and b"got [hello]" in out, out


def test_bad_input_errors(images, tmp_path):
    p = images("run", "--rm", "nosuchimage:1")
    assert p.returncode == 125 and b"nosuchimage" in p.stderr
    p = images("run", "--rm", "Bad//Ref", "true")
    assert p.returncode == 125
    p = images("run", "--rm", "--mount", f"type=bind,source={tmp_path}/missing,target=/x", "alpine:3.20.3", "true")
    assert p.returncode == 125 and b"missing" in p.stderr
    p = images("run", "--no-such-flag", "alpine:3.20.3")
    assert p.returncode == 125 and b"no-such-flag" in p.stderr
    # nothing half-created: no container records (every other test uses --rm or rm -f)
    assert images.out("ps", "-aq") == ""


def test_only_loopback_network(images):
    out = images.out("run", "--rm", "--network", "none", "alpine:3.20.3", "sh", "-c",
                     "ip -o link | cut -d: -f2; ip -o addr show lo")
    lines = out.splitlines()
    assert lines[0].strip() == "lo" and "127.0.0.1/8" in out, out
    assert len([x for x in lines if "link" not in x and x.strip() and ":" not in x]) == 1, out


def test_env_file_tmpfs_mount_and_interactive(images, tmp_path):
    envf = tmp_path / "env"
    envf.write_text("# comment\nA=from-file\nB=also\n")
    out = images.out("run", "--rm", "--env-file", str(envf), "-e", "B=flag",
                     "--mount", "type=tmpfs,target=/scratch,tmpfs-size=1m",
                     "alpine:3.20.3", "sh", "-c", 'echo "$A $B"; df -k /scratch | tail -1; touch /scratch/ok')
    first, df = out.splitlines()
    assert first == "from-file flag"
    assert df.split()[1] == "1024", df
    p = images("run", "--rm", "-i", "alpine:3.20.3", "sh", "-c", "read x; echo got:$x", input=b"hi\n")
    assert p.stdout == b"got:hi\n"


def test_corrupt_layer_blob_is_refused_and_leaves_nothing(ketch_cli):
    from tests.conftest import SHARED_IMAGES
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"test images not found at {SHARED_IMAGES}")
    ketch_cli.out("pull", "-q", f"oci:{SHARED_IMAGES / 'alpine'}:3.20.3")
    inspect = json.loads(ketch_cli.out("image", "inspect", "alpine:3.20.3"))[0]
    manifest_layers = [p for p in (ketch_cli.root / "content" / "blobs" / "sha256").iterdir()
                       if p.stat().st_size > 1_000_000]
    assert len(manifest_layers) == 1 and inspect["RootFS"]["Layers"]
    blob = manifest_layers[0]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    p = ketch_cli("run", "--rm", "alpine:3.20.3", "true")
    assert p.returncode == 125, p.stderr
    err = p.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "sha256:" in err, err
    assert blob.name[:12] in err, f"the error should name the layer {blob.name}: {err}"
    snaps = ketch_cli.root / "snapshots"
    assert not list(snaps.glob("layers/*")) and not list(snaps.glob("rw/*"))
    assert not list(ketch_cli.root.glob("containers/*"))


def test_signals_are_proxied_to_the_container(images):
    p = subprocess.Popen(images.argv("run", "--rm", "alpine:3.20.3", "sh", "-c",
                                     "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"ready\n"
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 7
        assert p.stdout.read() == b"got-term\n"
    finally:
        p.kill()
        p.wait()


def test_container_without_rm_is_kept_until_rm(images):
    assert images("run", "--name", "kept", "alpine:3.20.3", "sh", "-c", "echo data > /kept-file; exit 4").returncode == 4
    ps = images.out("ps", "-a")
    assert "kept" in ps and "Exited (4)" in ps
    assert "kept" not in images.out("ps")
    p = images("run", "--name", "kept", "alpine:3.20.3", "true")
    assert p.returncode == 125 and b"already in use" in p.stderr
    assert images.out("rm", "kept").strip() == "kept"
    assert "kept" not in images.out("ps", "-a")
    assert not list(images.root.glob("snapshots/rw/*"))
    p = images("rm", "kept")
    assert p.returncode != 0 and b"No such container" in p.stderr


def test_kill_9_of_ketch_and_container_leaves_no_mount(images):
    """The rootfs overlay lives in ketch's private mount namespace: nothing on
    the host to leak, whatever is killed; rm -f then removes the record."""
    p = subprocess.Popen(images.argv("run", "--name", "killed", "alpine:3.20.3", "sh", "-c", "echo up; sleep 60"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"up\n"
        from tests.conftest import mounts_under
        assert not mounts_under(str(images.root)), "the overlay must not be visible on the host"
        # The record gets its Pid once `start` has returned, which may be after the
        # program's first output; kill(0) would signal our own process group.
        for _ in range(500):
            rec = {"Pid": json.loads(images.out("inspect", "--type", "container", "killed"))[0]["State"]["Pid"]}
            if rec["Pid"]:
                break
            time.sleep(0.01)
        assert rec["Pid"] > 0
        p.kill()
        p.wait()
        os.kill(rec["Pid"], signal.SIGKILL)
        for _ in range(100):
            if not os.path.exists(f"/proc/{rec['Pid']}"):
                break
            time.sleep(0.05)
        assert not mounts_under(str(images.root))
    finally:
        p.kill()
        p.wait()
        images("rm", "-f", "killed")
    assert "killed" not in images.out("ps", "-a")


def test_callers_open_fds_do_not_reach_the_container(images, tmp_path):
    """A descriptor ketch inherits (a host file, a host directory) must not be
    usable inside: only stdio reaches the program."""
    target = tmp_path / "host-file"
    target.write_text("")
    f = os.open(target, os.O_WRONLY | os.O_APPEND)
    d = os.open("/etc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        p = images("run", "--rm", "alpine:3.20.3", "sh", "-c",
                   f"echo leaked >&{f}; ls /proc/self/fd/{d}/ 2>/dev/null | head -1; ls /proc/self/fd",
                   pass_fds=(f, d))
    finally:
        os.close(f)
        os.close(d)
    assert target.read_text() == ""
    fds = p.stdout.decode().split()
    assert fds == ["0", "1", "2", "3"], p.stdout  # 3: ls's own directory listing


def test_docker_default_capabilities_protect_read_only_mounts(images, tmp_path):
    out = images.out("run", "--rm", "alpine:3.20.3", "grep", "CapBnd", "/proc/self/status")
    assert out.split() == ["CapBnd:", "00000000a80425fb"]  # what `docker run` shows
    p = images("run", "--rm", "--read-only", "-v", f"{tmp_path}:/data:ro", "alpine:3.20.3", "sh", "-c",
               "mount -o remount,rw / && touch /x; mount -o remount,rw /data && touch /data/x;"
               "mount -o remount,rw /proc/sys && echo escaped")
    assert b"escaped" not in p.stdout and not (tmp_path / "x").exists(), p.stderr


def test_reader_going_away_ends_quietly(images):
    import shlex
    cmd = " ".join(shlex.quote(a) for a in images.argv("run", "--rm", "-t", "alpine:3.20.3", "yes"))
    p = subprocess.run(f"{cmd} | head -2", shell=True, capture_output=True, timeout=60)
    assert p.stdout.replace(b"\r", b"") == b"y\ny\n" and b"Traceback" not in p.stderr, p.stderr
    cmd = " ".join(shlex.quote(a) for a in images.argv("image", "inspect", "alpine:3.20.3"))
    p = subprocess.run(f"{cmd} | head -c 10", shell=True, capture_output=True, timeout=60)
    assert b"Traceback" not in p.stderr, p.stderr


def test_sigterm_to_ketch_reaches_a_tty_container(images):
    pid, master = pty.fork()
    if pid == 0:
        argv = images.argv("run", "--rm", "-t", "alpine:3.20.3", "sh", "-c",
                           "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.1; done")
        os.execv(argv[0], argv)
    out = b""
    deadline = time.time() + 60
    while b"ready" not in out and time.time() < deadline:
        if select.select([master], [], [], 1)[0]:
            out += os.read(master, 4096)
    os.kill(pid, signal.SIGTERM)
    try:
        while time.time() < deadline:
            if select.select([master], [], [], 1)[0]:
                data = os.read(master, 4096)
                if not data:
                    break
                out += data
    except OSError:
        pass
    _, status = os.waitpid(pid, 0)
    os.close(master)
    assert os.waitstatus_to_exitcode(status) == 9 and b"got-term" in out, out


def test_rm_containers_use_a_volatile_writable_layer(images):
    # --rm: the layer is thrown away, so overlayfs need not sync it (nor the whole
    # upper filesystem at unmount), as podman does; a kept container's is durable.
    opts = images.out("run", "--rm", "alpine:3.20.3", "grep", " / ", "/proc/self/mountinfo")
    assert "volatile" in opts, opts
    opts = images.out("run", "--name", "durable", "alpine:3.20.3", "grep", " / ", "/proc/self/mountinfo")
    images("rm", "durable")
    assert "volatile" not in opts, opts
