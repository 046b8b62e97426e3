"""Published ports: ``-p``/``-P`` values, free host ports, and conflicts.

The forwarding itself is CNI's ``portmap`` plugin (DNAT in PREROUTING and
OUTPUT, with ``snat`` so the host reaches a container through 127.0.0.1);
this module only decides *which* mappings to ask for, and refuses, before the
container starts, a host port that a process of the host has bound or that
another container (of any ketch root, or podman's CNI) already publishes.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import subprocess
from dataclasses import dataclass

from ketch.errors import UsageError

from .cni import NetworkError

PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class PortMapping:
    """One published port, named as CNI's ``portMappings`` capability wants it.
    ``host_port`` 0 = pick a free port when the container starts."""

    container_port: int
    host_port: int = 0
    protocol: str = "tcp"
    host_ip: str = ""

    def to_cni(self) -> dict:
        d = {"hostPort": self.host_port, "containerPort": self.container_port, "protocol": self.protocol}
        if self.host_ip:
            d["hostIP"] = self.host_ip
        return d

    @classmethod
    def from_cni(cls, d: dict) -> "PortMapping":
        return cls(d["containerPort"], d["hostPort"], d.get("protocol", "tcp"), d.get("hostIP", ""))

    def __str__(self) -> str:
        """``ketch port``'s line: ``80/tcp -> 0.0.0.0:8080``."""
        return f"{self.container_port}/{self.protocol} -> {self.host_ip or '0.0.0.0'}:{self.host_port}"


def _port_range(text: str, what: str, value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not m:
        raise UsageError(f"invalid {what} port {text!r} in {value!r}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not (1 <= lo <= hi <= 65535):
        raise UsageError(f"invalid {what} port range {text!r} in {value!r}")
    return lo, hi


def parse_publish(value: str) -> list[PortMapping]:
    """One ``-p`` value: ``[HOSTIP:][HOSTPORT:]CTRPORT[/PROTO]`` where ports may be
    ranges ``A-B`` (equal lengths, or a host range for one container port is
    refused); ``HOSTIP::CTRPORT`` and a bare ``CTRPORT`` take a free host
    port.  An IPv6 host address is bracketed.  Raises UsageError."""
    spec, _, proto = value.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise UsageError(f"invalid proto {proto!r} in {value!r} (tcp or udp)")
    host_ip = ""
    if spec.startswith("["):
        ip, sep, rest = spec[1:].partition("]:")
        if not sep:
            raise UsageError(f"invalid publish value {value!r}")
        host_ip, spec = ip, rest
        parts = spec.split(":")
        if len(parts) == 1:
            parts = ["", parts[0]]
    else:
        parts = spec.split(":")
        if len(parts) == 3:
            host_ip, parts = parts[0], parts[1:]
        elif len(parts) > 3:
            raise UsageError(f"invalid publish value {value!r}")
    if host_ip:
        try:
            addr = ipaddress.ip_address(host_ip)
        except ValueError:
            raise UsageError(f"invalid IP address {host_ip!r} in {value!r}") from None
        if addr.version == 6:
            raise UsageError(f"{value!r}: IPv6 host addresses are not supported yet")
        host_ip = str(addr)
    ctr = parts[-1]
    host = parts[0] if len(parts) == 2 else ""
    clo, chi = _port_range(ctr, "container", value)
    if host:
        hlo, hhi = _port_range(host, "host", value)
        if hhi - hlo != chi - clo:
            raise UsageError(f"{value!r}: host and container port ranges differ in length")
        return [PortMapping(c, hlo + i, proto, host_ip) for i, c in enumerate(range(clo, chi + 1))]
    return [PortMapping(c, 0, proto, host_ip) for c in range(clo, chi + 1)]


def parse_exposed(exposed: tuple[str, ...] | list[str]) -> list[PortMapping]:
    """``-P``: every image ``ExposedPorts`` entry (``80/tcp``, ``53/udp``) on a free host port."""
    out = []
    for e in exposed:
        port, _, proto = e.partition("/")
        out += parse_publish(f"{port}/{proto or 'tcp'}")
    return out


def published_on_host() -> set[tuple[str, int]]:
    """``(protocol, port)`` pairs that some container already publishes on this
    machine: CNI portmap's DNAT jumps (``CNI-HOSTPORT-DNAT``, any runtime)."""
    try:
        p = subprocess.run(["iptables-save", "-t", "nat"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        return set()
    out = set()
    for line in p.stdout.decode(errors="replace").splitlines():
        if not line.startswith("-A CNI-HOSTPORT-DNAT "):
            continue
        proto = re.search(r" -p (\w+)", line)
        ports = re.search(r" --dports ([\d,:]+)", line)
        if proto and ports:
            for part in ports.group(1).split(","):
                lo, _, hi = part.partition(":")
                for port in range(int(lo), int(hi or lo) + 1):
                    out.add((proto.group(1), port))
    return out


def _bind_test(m: PortMapping) -> None:
    kind = socket.SOCK_STREAM if m.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            s.bind((m.host_ip or "0.0.0.0", m.host_port))
        except OSError as e:
            raise NetworkError(
                f"cannot publish {m.host_ip or '0.0.0.0'}:{m.host_port}/{m.protocol}: "
                f"port is already allocated ({e.strerror})") from None


def _free_port(host_ip: str, protocol: str, taken: set[tuple[str, int]]) -> int:
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host_ip or "0.0.0.0", 0))
            port = s.getsockname()[1]
        if (protocol, port) not in taken:
            return port
    raise NetworkError(f"no free host port for {protocol}")


def allocate(mappings: list[PortMapping]) -> list[PortMapping]:
    """Check and complete ``mappings`` for a container about to start: a
    fixed host port must be free (not bound on the host, not published by
    another container, not twice here); port 0 becomes a free port.
    Raises NetworkError ``... port is already allocated``."""
    if not mappings:
        return []
    taken = published_on_host()
    out: list[PortMapping] = []
    for m in mappings:
        if m.host_port:
            if (m.protocol, m.host_port) in taken:
                raise NetworkError(f"cannot publish {m.host_ip or '0.0.0.0'}:{m.host_port}/{m.protocol}: "
                                   "port is already allocated (published by another container)")
            _bind_test(m)
        else:
            m = PortMapping(m.container_port, _free_port(m.host_ip, m.protocol, taken), m.protocol, m.host_ip)
        taken.add((m.protocol, m.host_port))
        out.append(m)
    return out
