"""Container networks end to end (root, real kernel, CNI plugins).

Traffic goes only to 127.0.0.1 and to addresses of the bridges and network
namespaces these tests create (subnets of 10.77.0.0/16 that ketch allocates
after checking no interface or route of the machine uses them).  Names are
resolved from ``/etc/hosts`` (musl reads it before any DNS server).

After every test, the counts of what networking leaves on the host — veths
on this root's bridges, pinned network namespaces, iptables rules naming
this root's addresses, IPAM leases — are back to where they were.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import SHARED_IMAGES, Ketch, _cleanup, _new_base, require_root

pytestmark = pytest.mark.integration

BUSYBOX = "busybox:1.37.0-musl"
CNI_DIRS = ("/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni")
# sh as PID 1 with a TERM trap: PID 1 ignores signals it has no handler for.
HTTPD = ["sh", "-c", "mkdir -p /www && echo hello-$HOSTNAME > /www/index.html && "
         "trap 'kill $!; exit 0' TERM; httpd -f -p 80 -h /www & wait"]


@pytest.fixture(scope="module")
def k():
    require_root()
    if not any(os.access(f"{d}/bridge", os.X_OK) for d in CNI_DIRS):
        pytest.skip("CNI plugins not installed (Debian: containernetworking-plugins)")
    if subprocess.run(["iptables-save", "-t", "nat"], capture_output=True).returncode != 0:
        pytest.skip("iptables-save does not work here")
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"test images not found at {SHARED_IMAGES}")
    k = Ketch(_new_base("ketch-net-"))
    k.out("pull", "-q", f"oci:{SHARED_IMAGES / 'busybox'}:1.37.0-musl")
    k.out("network", "ls")  # the default network (and its bridge) exist from here on
    start = counts(k)
    yield k
    made = bridges(k)
    try:
        assert counts(k) == start
    finally:
        _cleanup(k)
    left = [b for b in made if os.path.exists(f"/sys/class/net/{b}")]
    assert not left, f"bridges left: {left}"


# ---------------------------------------------------------------- what networking leaves behind

def networks(k: Ketch) -> list[dict]:
    return [json.loads(p.read_text()) for p in (k.root / "networks").glob("*.conflist")]


def bridges(k: Ketch) -> list[str]:
    return [p["bridge"] for n in networks(k) for p in n["plugins"] if p["type"] == "bridge"]


def subnets(k: Ketch) -> list[ipaddress.IPv4Network]:
    return [ipaddress.ip_network(r["subnet"]) for n in networks(k) for p in n["plugins"]
            if p["type"] == "bridge" for rs in p["ipam"]["ranges"] for r in rs]


def counts(k: Ketch) -> dict:
    nets = subnets(k)

    def ours(line: str) -> bool:
        return any(ipaddress.ip_address(a) in n for a in re.findall(r"\b(\d+\.\d+\.\d+\.\d+)\b", line)
                   for n in nets)

    rules = 0
    chains = set()
    for table in ("nat", "filter"):
        text = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True).stdout
        for line in text.splitlines():
            if line.startswith("-A ") and ours(line):
                rules += 1
                chains.add(line.split()[1])
    veths = sum(len(os.listdir(f"/sys/class/net/{b}/brif")) for b in bridges(k)
                if os.path.exists(f"/sys/class/net/{b}/brif"))
    nsdir = k.runroot / "netns"
    leases = [p for p in (k.root / "networks" / "ipam").glob("*/*") if re.fullmatch(r"[\d.]+", p.name)]
    with open("/proc/self/mountinfo") as f:
        pins = sum(1 for line in f if str(nsdir) in line.split()[4])
    return {"veths": veths, "netns files": len(list(nsdir.glob("*"))) if nsdir.is_dir() else 0,
            "netns mounts": pins, "rules": rules, "per-container chains": len(chains - {"POSTROUTING", "CNI-FORWARD"}),
            "leases": len(leases)}


@pytest.fixture(autouse=True)
def _nothing_left(request):
    if "k" not in request.fixturenames:
        yield
        return
    k = request.getfixturevalue("k")
    before = counts(k)
    yield
    deadline = time.monotonic() + 5
    while counts(k) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counts(k) == before


# ---------------------------------------------------------------- helpers

def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, timeout: float = 10) -> str:
    """GET ``url`` (always 127.0.0.1 here), retrying while the server starts."""
    assert url.startswith("http://127.0.0.1:")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Server:
    """A foreground ``ketch run --rm`` (``run -d`` is another issue) stopped at the end."""

    def __init__(self, k: Ketch, *args: str):
        self.k = k
        # Output to a file, not a pipe: the container inherits it and outlives a killed ketch.
        self.log = open(k.base / f"server-{time.monotonic_ns()}.log", "w+b")
        self.p = subprocess.Popen(k.argv("run", "--rm", *args), stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait_attached(self, name: str, timeout: float = 10) -> dict:
        """The container's network record once its address is known."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for d in (self.k.root / "containers").glob("*"):
                try:
                    st = json.loads((d / "network.json").read_text())
                except (OSError, ValueError):
                    continue
                if st.get("name") == name and st.get("ip"):
                    return st
            assert self.p.poll() is None, self.output()
            time.sleep(0.05)
        raise AssertionError(f"{name} never got an address")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise
        finally:
            self.log.close()


def wait_http(url: str, server: Server) -> str:
    try:
        return fetch(url)
    except OSError:
        server.stop(signal.SIGKILL)
        raise AssertionError(f"{url}: no answer; ketch said {server.output()}")


# ---------------------------------------------------------------- tests

def test_default_bridge_address_route_hosts_resolv(k):
    out = k.out("run", "--rm", "-h", "box", BUSYBOX, "sh", "-c",
                "ip -4 -o addr show eth0; ip route; echo ---; cat /etc/hosts; echo ---; cat /etc/resolv.conf")
    m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", out)
    assert m, out
    ip = ipaddress.ip_address(m.group(1))
    bridge_net = next(n for n in networks(k) if n["name"] == "bridge")
    subnet = ipaddress.ip_network(bridge_net["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])
    gw = bridge_net["plugins"][0]["ipam"]["ranges"][0][0]["gateway"]
    assert ip in subnet
    assert f"default via {gw} dev eth0" in out
    hosts, resolv = out.split("---\n")[1:]
    assert f"{ip}\tbox" in hosts
    assert not re.search(r"nameserver\s+127\.", resolv)


def test_network_none_and_host(k):
    out = k.out("run", "--rm", "--network", "none", BUSYBOX, "ls", "/sys/class/net")
    assert out.split() == ["lo"]
    out = k.out("run", "--rm", "--network", "host", BUSYBOX, "ls", "/sys/class/net")
    assert set(bridges(k)) & set(out.split())  # the host's interfaces, the bridges among them


def test_publish_tcp_reachable_on_loopback_and_cleaned_on_sigterm(k):
    port = free_port()
    web = Server(k, "--name", "web1", "-p", f"127.0.0.1:{port}:80", BUSYBOX, *HTTPD)
    try:
        web.wait_attached("web1")
        assert wait_http(f"http://127.0.0.1:{port}/", web).startswith("hello-")
        assert k.out("port", "web1").strip() == f"80/tcp -> 127.0.0.1:{port}"
    finally:
        web.stop(signal.SIGTERM)  # forwarded to httpd; ketch tears the network down
    assert web.p.returncode is not None


def test_publish_free_port_and_rm_after_kill9(k):
    web = Server(k, "--name", "web2", "-p", "80", BUSYBOX, *HTTPD)
    try:
        st = web.wait_attached("web2")
        port = st["portMappings"][0]["hostPort"]
        assert port > 0
        assert k.out("port", "web2", "80").strip() == f"0.0.0.0:{port}"
        assert wait_http(f"http://127.0.0.1:{port}/", web).startswith("hello-")
        web.p.kill()  # SIGKILL ketch: the container and its network stay …
        web.p.wait()
        assert fetch(f"http://127.0.0.1:{port}/").startswith("hello-")
    finally:
        if web.p.poll() is None:
            web.p.kill()
            web.p.wait()
        k("rm", "-f", "web2", check=True)  # … until rm -f undoes them
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)


def test_publish_udp_echo(k):
    port = free_port(socket.SOCK_DGRAM)
    echo = Server(k, "--name", "echo", "-p", f"{port}:9999/udp", BUSYBOX, "nc", "-lu", "-p", "9999", "-e", "cat")
    try:
        echo.wait_attached("echo")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.5)
            got = None
            for _ in range(40):  # until nc listens
                s.sendto(b"ping\n", ("127.0.0.1", port))
                try:
                    got = s.recvfrom(100)[0]
                    break
                except socket.timeout:
                    continue
        assert got == b"ping\n"
    finally:
        echo.stop(signal.SIGKILL)  # nc ignores SIGTERM as PID 1: kill ketch, then rm -f the container
        k("rm", "-f", "echo", check=True)


def test_port_conflict_refused_before_start(k):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        p = k("run", "--rm", "-p", f"{port}:80", BUSYBOX, "echo", "started")
    assert p.returncode == 125
    assert b"already allocated" in p.stderr and b"started" not in p.stdout
    port = free_port()
    web = Server(k, "--name", "web3", "-p", f"{port}:80", BUSYBOX, *HTTPD)
    try:
        web.wait_attached("web3")
        p = k("run", "--rm", "-p", f"{port}:80", BUSYBOX, "echo", "started")
        assert p.returncode == 125 and b"already allocated" in p.stderr, p.stderr
    finally:
        web.stop()


def test_user_network_resolves_names_as_containers_come_and_go(k):
    k.out("network", "create", "appnet")
    try:
        web = Server(k, "--name", "web", "--network", "appnet", BUSYBOX, *HTTPD)
        try:
            st = web.wait_attached("web")
            out = k.out("run", "--rm", "--name", "client", "--network", "appnet", BUSYBOX, "sh", "-c",
                        "for i in $(seq 50); do wget -q -T 2 -O - http://web/ && break; sleep 0.1; done; cat /etc/hosts")
            assert "hello-" in out
            assert f"{st['ip']}\tweb" in out and "\tclient" in out
            info = json.loads(k.out("network", "inspect", "appnet"))[0]
            assert [c["Name"] for c in info["Containers"].values()] == ["web"]
            p = k("network", "rm", "appnet")
            assert p.returncode != 0 and b"active endpoints" in p.stderr
        finally:
            web.stop()
        out = k.out("run", "--rm", "--network", "appnet", BUSYBOX, "cat", "/etc/hosts")
        assert "\tweb" not in out  # gone with its container
    finally:
        k("network", "rm", "appnet", check=True)
    assert "appnet" not in k.out("network", "ls")


def test_internal_network_has_no_way_out(k):
    k.out("network", "create", "--internal", "closed")
    port = free_port()
    web = Server(k, "--name", "pub", "-p", f"{port}:80", BUSYBOX, *HTTPD)
    try:
        web.wait_attached("pub")
        wait_http(f"http://127.0.0.1:{port}/", web)
        gw = next(n for n in networks(k) if n["name"] == "bridge")["plugins"][0]["ipam"]["ranges"][0][0]["gateway"]
        probe = f"ip route; wget -q -T 2 -O - http://{gw}:{port}/ && echo REACHED"
        # A container of the default network reaches the published port through the host …
        assert "REACHED" in k.out("run", "--rm", BUSYBOX, "sh", "-c", probe)
        # … one of the internal network has no route to it (nor anywhere else).
        out = k("run", "--rm", "--network", "closed", BUSYBOX, "sh", "-c", probe).stdout.decode()
        assert "REACHED" not in out and "default" not in out
        p = k("run", "--rm", "--network", "closed", "-p", "80", BUSYBOX, "true")
        assert p.returncode == 125
    finally:
        web.stop()
        k("network", "rm", "closed", check=True)


def test_parallel_containers_get_distinct_addresses(k):
    n = 10
    procs = [subprocess.Popen(k.argv("run", "--rm", BUSYBOX, "ip", "-4", "-o", "addr", "show", "eth0"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    ips = [re.search(rb"inet (\S+)/", o[0]).group(1).decode() for o in outs]
    assert len(set(ips)) == n, ips


def test_network_create_ls_inspect_rm_prune(k):
    k.out("network", "create", "--subnet", "10.77.250.0/24", "--gateway", "10.77.250.254", "n1")
    k.out("network", "create", "n2")
    info = json.loads(k.out("network", "inspect", "n1"))[0]
    assert info["IPAM"]["Config"] == [{"Subnet": "10.77.250.0/24", "Gateway": "10.77.250.254"}]
    conf = Path(info["ConfigFile"])
    assert json.loads(conf.read_text())["plugins"][0]["type"] == "bridge"  # a CNI conflist
    br = info["Options"]["com.docker.network.bridge.name"]
    assert os.path.exists(f"/sys/class/net/{br}")
    p = k("network", "create", "--subnet", "10.77.250.0/25", "n3")
    assert p.returncode != 0 and b"overlaps" in p.stderr
    assert k("network", "create", "n1").returncode != 0
    assert k("network", "rm", "bridge").returncode != 0
    names = k.out("network", "ls").split()
    assert {"bridge", "n1", "n2"} <= set(names)
    out = k.out("network", "prune")
    assert "n1" in out and "n2" in out
    assert not os.path.exists(f"/sys/class/net/{br}") and not conf.exists()
    assert set(k.out("network", "ls", "-q").split()) == {json.loads(k.out("network", "inspect", "bridge"))[0]["Id"][:12]}
