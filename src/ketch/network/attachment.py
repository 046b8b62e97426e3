"""What the engine gets back from attaching a container to its network.

Kept apart from :mod:`.manager` (CNI, IPAM, iptables, subprocesses) so that a
container with ``--network none`` or ``host`` imports none of that: start-up
is most of a short container's life.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from ketch.paths import Paths

    from .ports import PortMapping

DEFAULT_NETWORK = "bridge"


@dataclass
class Attachment:
    """What :func:`attach` set up: the mode, and for a bridge network the
    namespace path, the address and the published ports."""

    mode: str                       # none | host | bridge (any bridge network)
    network: str = ""
    netns: str = ""
    ip: str = ""
    ports: list["PortMapping"] = field(default_factory=list)

    def joined(self, paths: Paths, cdir: Path) -> None:
        """The container's ``hosts`` file exists: list it among its network's
        members (:func:`join_hosts`)."""
        if self.mode == "bridge":
            from .manager import join_hosts
            join_hosts(paths, cdir)

    def apply(self, spec: Any) -> Any:
        """``spec`` with its network namespace entry set: joined by path for a
        bridge network, removed for ``host``, left new (loopback only) for ``none``."""
        if self.mode == "none":
            return spec
        from ketch.oci.runtime import Namespace
        nss = [ns for ns in spec.linux.namespaces if ns.type != "network"]
        if self.mode == "bridge":
            nss.append(Namespace("network", self.netns))
        return spec.with_(linux=replace(spec.linux, namespaces=tuple(nss)))
