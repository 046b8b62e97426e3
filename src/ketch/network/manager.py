"""Networks (``ketch network ...``) and containers' attachments to them.

A network is one CNI configuration list, ``<root>/networks/NAME.conflist``:
a Linux bridge with host-local IPAM (leases in ``<root>/networks/ipam/NAME/``),
outbound masquerade (``ipMasq``), then ``portmap`` (published ports) and
``firewall`` (FORWARD accept rules) — podman 4's CNI stack.  It is a plain
CNI file: users read it, and may add plugins (``tuning``, ``bandwidth``…)
or change the IPAM ranges; ketch runs whatever plugins it lists.  Extra
metadata of ketch's (ID, creation time, internal) sits under the top-level
``ketch`` key, which CNI ignores.

``bridge`` is the default network, created at first use.  An ``--internal``
network's bridge has no address on the host and its containers no default
route and no masquerade: they reach only each other.

Bridge names (``ketchN``) and subnets (``/24``s of 10.77.0.0/16 by default)
are machine-wide, whatever ketch root made them: they are chosen under a
machine-wide lock among those no interface or route uses, and every bridge
carries an alias ``ketch SUBNET CONFLIST`` so a bridge whose ketch root was
deleted is reclaimed by the next allocation.

A container's attachment is recorded in its directory (``network.json``)
*before* each step it undoes (netns pinned, each CNI plugin's ADD), so
:func:`detach` can undo a setup that ``kill -9`` interrupted; it is
idempotent.  Containers on a user network find each other by name through
``/etc/hosts``: each member's file (bind-mounted, rewritten in place) lists
every member, updated under the network's lock as containers come and go.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import UsageError

from . import cni, netns
from .attachment import DEFAULT_NETWORK, Attachment
from .cni import NetworkError
from .ports import PortMapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

    from ketch.paths import Paths

PREDEFINED = ("bridge", "host", "none")
DEFAULT_POOL = ipaddress.ip_network(os.environ.get("KETCH_SUBNET_POOL", "10.77.0.0/16"))
MACHINE_LOCK = Path("/run/lock/ketch-networks.lock")
BRIDGE_PREFIX = "ketch"
ALIAS_TAG = "ketch"
HOSTS_MARKER = "# ketch: containers of the same network\n"
STATE_FILE = "network.json"
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ip(*args: str, check: bool = True) -> str:
    p = subprocess.run(["ip", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and p.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout.decode()


# ---------------------------------------------------------------- networks

@dataclass(frozen=True)
class Network:
    """A network as its ``.conflist`` describes it."""

    name: str
    path: Path
    conflist: dict

    def _bridge_plugin(self) -> dict:
        for p in self.conflist.get("plugins", ()):
            if p.get("type") == "bridge":
                return p
        return {}

    @property
    def meta(self) -> dict:
        return self.conflist.get("ketch", {})

    @property
    def id(self) -> str:
        return self.meta.get("id", "")

    @property
    def bridge(self) -> str:
        return self._bridge_plugin().get("bridge", "")

    @property
    def internal(self) -> bool:
        return bool(self.meta.get("internal"))

    @property
    def ranges(self) -> list[dict]:
        ipam = self._bridge_plugin().get("ipam", {})
        return [r for rs in ipam.get("ranges", ()) for r in rs]

    @property
    def subnet(self) -> str:
        r = self.ranges
        return r[0]["subnet"] if r else ""

    @property
    def gateway(self) -> str:
        r = self.ranges
        if not r:
            return ""
        return r[0].get("gateway") or str(next(ipaddress.ip_network(r[0]["subnet"]).hosts()))

    @property
    def ipam_dir(self) -> str:
        return self._bridge_plugin().get("ipam", {}).get("dataDir", "")

    def has_plugin(self, kind: str) -> bool:
        return any(p.get("type") == kind for p in self.conflist.get("plugins", ()))


def make_conflist(name: str, bridge: str, subnet: str, gateway: str, internal: bool, ipam_dir: str,
                  net_id: str) -> dict:
    """The CNI configuration list of a new network (podman 4's CNI layout)."""
    ipam = {"type": "host-local", "ranges": [[{"subnet": subnet, "gateway": gateway}]], "dataDir": ipam_dir}
    br = {"type": "bridge", "bridge": bridge, "isGateway": not internal, "ipMasq": not internal,
          "hairpinMode": True, "ipam": ipam}
    plugins: list[dict] = [br]
    if not internal:
        ipam["routes"] = [{"dst": "0.0.0.0/0"}]
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
        plugins.append({"type": "firewall", "backend": "iptables"})
    return {"cniVersion": cni.CNI_VERSION, "name": name,
            "ketch": {"id": net_id, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "internal": internal},
            "plugins": plugins}


def _used_subnets() -> list[ipaddress.IPv4Network]:
    """Subnets some interface, route or ketch bridge of this machine uses."""
    used = []
    try:
        for r in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
            dst = r.get("dst", "")
            if dst and dst != "default" and r.get("type") in (None, "unicast"):
                used.append(ipaddress.ip_network(dst, strict=False))
        for link in json.loads(_ip("-j", "-4", "addr") or "[]"):
            for a in link.get("addr_info", ()):
                used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    except (ValueError, KeyError):
        pass
    for alias in _ketch_bridges().values():
        try:
            used.append(ipaddress.ip_network(alias[0]))
        except ValueError:
            pass
    return used


def _ketch_bridges() -> dict[str, list[str]]:
    """Bridges ketch made on this machine: name → [subnet, conflist path]."""
    out = {}
    for d in Path("/sys/class/net").iterdir():
        try:
            alias = (d / "ifalias").read_text().split()
        except OSError:
            continue
        if len(alias) >= 3 and alias[0] == ALIAS_TAG:
            out[d.name] = alias[1:]
    return out


def _reclaim_orphan_bridges() -> None:
    """Delete ketch bridges whose network config is gone (its root deleted)
    and that have no port left, with any CNI rule left for their subnet."""
    for br, (subnet, conf, *_) in _ketch_bridges().items():
        if not os.path.exists(conf) and not any(Path(f"/sys/class/net/{br}/brif").iterdir()):
            _ip("link", "del", br, check=False)
            purge_rules(subnet)


_CHAIN_RE = re.compile(r" -j (CNI-(?:DN-)?[0-9a-f]{20,})\b")


def purge_rules(subnet: str) -> int:
    """Delete the per-container CNI rules (bridge masquerade, firewall, portmap)
    of addresses in ``subnet``: what a container whose teardown never ran
    (its ketch root deleted after a ``kill -9``) leaves in iptables.  Shared
    chains (``CNI-FORWARD``, ``CNI-HOSTPORT-*``) stay.  Returns the number of
    rules deleted."""
    import shlex
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError:
        return 0

    def ours(line: str) -> bool:
        for m in re.finditer(r"(?:-[sd] |--to-destination )(\d+\.\d+\.\d+\.\d+)", line):
            if ipaddress.ip_address(m.group(1)) in net:
                return True
        return False

    n = 0
    for table in ("nat", "filter"):
        p = subprocess.run(["iptables-save", "-t", table], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lines = p.stdout.decode(errors="replace").splitlines()
        rules = [ln for ln in lines if ln.startswith("-A ")]
        # Per-container chains holding one of our addresses, and the jumps to them.
        chains = {ln.split()[1] for ln in rules if ours(ln) and re.match(r"-A CNI-(?:DN-)?[0-9a-f]{20,} ", ln)}
        chains |= {m.group(1) for ln in rules if ours(ln) and (m := _CHAIN_RE.search(ln))}
        doomed = [ln for ln in rules if ours(ln) or ((m := _CHAIN_RE.search(ln)) and m.group(1) in chains)]
        for ln in doomed:
            if ln.split()[1] in chains:
                continue  # flushed with its chain
            args = shlex.split(ln)
            subprocess.run(["iptables", "-w", "-t", table, "-D", *args[1:]], stderr=subprocess.DEVNULL)
            n += 1
        for c in chains:
            subprocess.run(["iptables", "-w", "-t", table, "-F", c], stderr=subprocess.DEVNULL)
            subprocess.run(["iptables", "-w", "-t", table, "-X", c], stderr=subprocess.DEVNULL)
            n += 1
    return n


def _free_bridge_name() -> str:
    n = 0
    while os.path.exists(f"/sys/class/net/{BRIDGE_PREFIX}{n}"):
        n += 1
    return f"{BRIDGE_PREFIX}{n}"


def _ensure_bridge(net: Network) -> None:
    """Create the network's bridge when missing (after a reboot, or the first
    time), with the gateway address unless internal, and bring it up."""
    br = net.bridge
    if not br or os.path.exists(f"/sys/class/net/{br}"):
        return
    p = subprocess.run(["ip", "link", "add", br, "type", "bridge"], stderr=subprocess.PIPE)
    if p.returncode != 0 and not os.path.exists(f"/sys/class/net/{br}"):
        raise NetworkError(f"creating bridge {br}: {p.stderr.decode(errors='replace').strip()}")
    _ip("link", "set", br, "alias", f"{ALIAS_TAG} {net.subnet} {net.path}")
    if not net.internal:
        prefix = ipaddress.ip_network(net.subnet).prefixlen
        _ip("addr", "replace", f"{net.gateway}/{prefix}", "dev", br)
    _ip("link", "set", br, "up")


class Networks:
    """The networks of one ketch root (``<root>/networks``)."""

    def __init__(self, paths: Paths):
        self.paths = paths
        self.dir = paths.root / "networks"

    def conf_path(self, name: str) -> Path:
        return self.dir / f"{name}.conflist"

    @contextmanager
    def lock(self) -> Iterator[None]:
        """This root's network lock: membership, hosts files, create/remove."""
        with _flock(self.dir / ".lock"):
            yield

    def _load(self, path: Path) -> Network:
        try:
            d = json.loads(path.read_text())
        except ValueError as e:
            raise NetworkError(f"{path}: not valid JSON: {e}") from None
        return Network(d.get("name", path.stem), path, d)

    def get(self, name: str) -> Network:
        """The network ``name`` (the default ``bridge`` is created at first use).
        Raises NetworkError ``network NAME not found``."""
        path = self.conf_path(name)
        if not path.exists():
            if name != DEFAULT_NETWORK:
                raise NetworkError(f"network {name} not found")
            try:
                return self.create(DEFAULT_NETWORK, _default=True)
            except NetworkError:
                if not path.exists():
                    raise
        net = self._load(path)
        _ensure_bridge(net)
        return net

    def list(self) -> list[Network]:
        self.get(DEFAULT_NETWORK)
        return sorted((self._load(p) for p in self.dir.glob("*.conflist")), key=lambda n: n.name)

    def create(self, name: str, subnet: str | None = None, gateway: str | None = None,
               internal: bool = False, *, _default: bool = False) -> Network:
        """``network create``: a new bridge network with a free (or the given)
        subnet.  Raises UsageError (bad name, subnet or gateway) and
        NetworkError (name taken, subnet in use)."""
        if not _NAME_RE.match(name):
            raise UsageError(f"invalid network name {name!r}: [a-zA-Z0-9][a-zA-Z0-9_.-]* expected")
        if name in PREDEFINED and not _default:
            raise NetworkError(f"{name} is a pre-defined network and cannot be created")
        want = None
        if subnet:
            try:
                want = ipaddress.ip_network(subnet, strict=False)
            except ValueError:
                raise UsageError(f"invalid subnet {subnet!r}") from None
            if want.version != 4 or want.prefixlen > 30:
                raise UsageError(f"subnet {subnet}: an IPv4 subnet of at most /30 is needed")
        if gateway:
            try:
                gw = ipaddress.ip_address(gateway)
            except ValueError:
                raise UsageError(f"invalid gateway {gateway!r}") from None
            if want is None:
                raise UsageError("--gateway needs --subnet")
            if gw not in want or gw in (want.network_address, want.broadcast_address):
                raise UsageError(f"gateway {gateway} is not a host address of {want}")
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.lock(), _flock(MACHINE_LOCK):
            path = self.conf_path(name)
            if path.exists():
                raise NetworkError(f"network with name {name} already exists")
            _reclaim_orphan_bridges()
            used = _used_subnets()
            if want is not None:
                if any(want.overlaps(u) for u in used):
                    raise NetworkError(f"subnet {want} overlaps with another one on this machine")
            else:
                want = next((s for s in DEFAULT_POOL.subnets(new_prefix=24)
                             if not any(s.overlaps(u) for u in used)), None)
                if want is None:
                    raise NetworkError(f"no free /24 left in {DEFAULT_POOL}")
            gw = gateway or str(next(want.hosts()))
            conf = make_conflist(name, _free_bridge_name(), str(want), gw, internal,
                                 str(self.dir / "ipam"), os.urandom(32).hex())
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(conf, indent=2) + "\n")
            os.replace(tmp, path)
            net = Network(name, path, conf)
            try:
                _ensure_bridge(net)
            except NetworkError:
                path.unlink()
                raise
            return net

    def members(self, name: str) -> list[dict]:
        """The attachments (``network.json`` records) of containers of this
        root attached to ``name``, each with its container ``id``."""
        out = []
        cdir = self.paths.containers
        if cdir.is_dir():
            for d in cdir.iterdir():
                st = read_state(d)
                if st and st.get("network") == name:
                    out.append({**st, "id": d.name})
        return out

    def remove(self, name: str, *, force_default: bool = False) -> None:
        """``network rm``: refuse while containers are attached; delete the
        bridge, the IPAM leases directory and the config file."""
        if name in PREDEFINED and not force_default:
            raise NetworkError(f"{name} is a pre-defined network and cannot be removed")
        with self.lock():
            path = self.conf_path(name)
            if not path.exists():
                raise NetworkError(f"network {name} not found")
            net = self._load(path)
            attached = self.members(name)
            if attached:
                raise NetworkError(f"error while removing network: network {name} id {net.id} has active "
                                   f"endpoints ({', '.join(m['id'][:12] for m in attached)})")
            if net.bridge and os.path.exists(f"/sys/class/net/{net.bridge}"):
                _ip("link", "del", net.bridge, check=False)
            import shutil
            if net.ipam_dir:
                shutil.rmtree(os.path.join(net.ipam_dir, name), ignore_errors=True)
            path.unlink()

    def prune(self) -> list[str]:
        """``network prune``: remove every user network no container uses."""
        out = []
        for net in self.list():
            if net.name in PREDEFINED or self.members(net.name):
                continue
            try:
                self.remove(net.name)
                out.append(net.name)
            except NetworkError:
                pass
        return out

    def inspect(self, name: str) -> dict:
        """Docker-shaped ``network inspect`` of one network."""
        net = self.get(name)
        containers = {}
        for m in self.members(name):
            if m.get("ip"):
                containers[m["id"]] = {"Name": m.get("name", ""), "IPv4Address": f"{m['ip']}/{m.get('prefix', '')}",
                                       "MacAddress": m.get("mac", "")}
        return {
            "Name": net.name, "Id": net.id, "Created": net.meta.get("created", ""), "Scope": "local",
            "Driver": "bridge", "EnableIPv6": False, "Internal": net.internal,
            "IPAM": {"Driver": "host-local", "Config": [{"Subnet": net.subnet, "Gateway": net.gateway}]},
            "Containers": containers,
            "Options": {"com.docker.network.bridge.name": net.bridge},
            "ConfigFile": str(net.path),
        }


def cleanup_root(root: Path, runroot: Path) -> None:
    """Undo every network thing of the ketch root ``root``: the attachments
    of its containers (best effort), then its bridges and any rule left for
    their subnets.  For a root about to be deleted (the tests' clean-up)."""
    from ketch.paths import Paths
    paths = Paths(Path(root), Path(runroot))
    cdir = paths.containers
    if cdir.is_dir():
        for d in cdir.iterdir():
            if (d / STATE_FILE).exists():
                try:
                    detach(paths, d)
                except Exception:  # noqa: BLE001 - best effort: the rules are purged below
                    pass
    for p in (Path(root) / "networks").glob("*.conflist"):
        try:
            net = Network(p.stem, p, json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
        if net.bridge and os.path.exists(f"/sys/class/net/{net.bridge}"):
            _ip("link", "del", net.bridge, check=False)
        if net.subnet:
            purge_rules(net.subnet)


# ---------------------------------------------------------------- containers

def read_state(cdir: Path) -> dict | None:
    try:
        return json.loads((Path(cdir) / STATE_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def _write_state(cdir: Path, st: dict) -> None:
    tmp = Path(cdir) / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(st, indent=1))
    os.replace(tmp, Path(cdir) / STATE_FILE)


def requested_ports(opts: Any, exposed: tuple[str, ...] | list[str] = ()) -> list[PortMapping]:
    """The port mappings ``-p`` and ``-P`` ask for (host port 0 = any)."""
    from .ports import parse_exposed, parse_publish
    out: list[PortMapping] = []
    for v in getattr(opts, "publish", ()):
        out += parse_publish(v)
    if getattr(opts, "publish_all", False):
        have = {(m.container_port, m.protocol) for m in out}
        out += [m for m in parse_exposed(exposed) if (m.container_port, m.protocol) not in have]
    return out


def attach(paths: Paths, cid: str, cdir: Path, name: str, opts: Any,
           exposed: tuple[str, ...] | list[str] = ()) -> Attachment:
    """Give container ``cid`` its network as ``opts.network`` says (``bridge``
    by default, ``none``, ``host`` or a network's name).  For a bridge
    network: check and pick host ports, pin a new network namespace under
    ``<runroot>/netns/`` (its loopback up), run CNI ADD of the network's
    plugins, recording each step in ``cdir/network.json``.  Call in the
    host's mount namespace (before ``private_mounts``).  On failure, what was
    done is undone and NetworkError/UsageError raised."""
    mode = getattr(opts, "network", None) or DEFAULT_NETWORK
    wanted = requested_ports(opts, exposed)
    if mode in ("none", "host"):
        if wanted and mode == "none":
            raise UsageError("published ports (-p, -P) need a bridge network, not --network none")
        return Attachment(mode)
    if mode.startswith("container:"):
        raise UsageError("--network container:NAME is not supported yet")
    nets = Networks(paths)
    net = nets.get(mode)
    if wanted and (net.internal or not net.has_plugin("portmap")):
        raise UsageError(f"network {mode} cannot publish ports (internal, or no portmap plugin)")
    mntns = netns.remember_host_mount_ns()
    from .ports import allocate
    with _flock(MACHINE_LOCK.with_name("ketch-ports.lock")) if wanted else _nolock():
        ports = allocate(wanted)
        st = {"network": mode, "name": name, "conflist": net.conflist, "ifname": "eth0",
              "netns": str(paths.runroot / "netns" / cid), "mntns": mntns, "portMappings": [p.to_cni() for p in ports],
              "result": None}
        _write_state(cdir, st)
        try:
            netns.create(st["netns"])
            inv = cni.Invocation(cid, st["netns"], "eth0")

            def progress(result: dict) -> None:
                st["result"] = result
                _write_state(cdir, st)

            result = cni.add(net.conflist, inv, {"portMappings": st["portMappings"]}, progress)
        except BaseException:
            try:
                detach(paths, cdir)
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            raise
    ip, prefix = "", ""
    for a in result.get("ips", ()):
        addr = ipaddress.ip_interface(a["address"])
        if addr.version == 4:
            ip, prefix = str(addr.ip), str(addr.network.prefixlen)
            break
    mac = next((i.get("mac", "") for i in result.get("interfaces", ()) if i.get("sandbox")), "")
    st.update(ip=ip, prefix=prefix, mac=mac)
    _write_state(cdir, st)
    return Attachment("bridge", mode, st["netns"], ip, ports)


@contextmanager
def _nolock() -> Iterator[None]:
    yield


def detach(paths: Paths, cdir: Path) -> list[str]:
    """Undo :func:`attach` for the container in ``cdir``: CNI DEL (releases
    the IPAM lease, removes the veth, masquerade, port and firewall rules),
    unpin the namespace, drop the container from its peers' ``/etc/hosts``,
    delete the record.  Idempotent, and works after ``kill -9`` at any step.
    Returns the CNI errors (the record is kept then, so it can be retried)."""
    st = read_state(cdir)
    if st is None:
        return []
    cid = Path(cdir).name
    conflist = st.get("conflist") or {}
    errors = []
    if st.get("netns"):
        inv = cni.Invocation(cid, st["netns"], st.get("ifname", "eth0"))
        nsok = os.path.exists(st["netns"])
        errors = cni.delete(conflist, inv if nsok else cni.Invocation(cid, "", inv.ifname),
                            {"portMappings": st.get("portMappings", [])}, st.get("result"))
        if errors:  # keep the namespace and the record: DEL needs both to be retried
            raise NetworkError("; ".join(errors))
        netns.in_host_mount_ns(st.get("mntns"), netns.remove, st["netns"])
    nets = Networks(paths)
    with nets.lock():
        (Path(cdir) / STATE_FILE).unlink(missing_ok=True)
        if st.get("hosts"):
            _rewrite_hosts(nets, st.get("network", ""))
    return errors


# ---------------------------------------------------------------- /etc/hosts of a network's members

def join_hosts(paths: Paths, cdir: Path) -> None:
    """Publish the container in ``cdir`` (attached, its ``hosts`` file written)
    in the ``/etc/hosts`` of every member of its user network, and theirs in
    its own.  The default ``bridge`` network has no name resolution (as Docker)."""
    st = read_state(cdir)
    if not st or not st.get("ip") or st.get("network") in PREDEFINED:
        return
    nets = Networks(paths)
    with nets.lock():
        st["hosts"] = True
        _write_state(cdir, st)
        _rewrite_hosts(nets, st["network"])


def _rewrite_hosts(nets: Networks, network: str) -> None:
    members = [m for m in nets.members(network) if m.get("hosts") and m.get("ip")]
    lines = "".join(f"{m['ip']}\t{m['name']}\n" for m in sorted(members, key=lambda m: m["name"]))
    for m in members:
        path = nets.paths.containers / m["id"] / "hosts"
        try:
            with open(path, "r+") as f:
                text = f.read()
                base = text.split(HOSTS_MARKER, 1)[0]
                new = base + HOSTS_MARKER + lines
                if new != text:
                    # In place: the file is bind-mounted into the container (a rename would not be seen).
                    f.seek(0)
                    f.write(new)
                    f.truncate()
        except FileNotFoundError:
            continue
