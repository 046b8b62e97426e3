"""What this runtime supports, as runtime-spec ``features.md`` JSON.

Derived from the tables the code acts on, so it cannot claim more than the
runtime does: mount options from :mod:`ketch.runtime.mountopts`, namespaces
from :data:`ketch.runtime.container.NAMESPACE_FLAGS` (in the order of
:data:`ketch.oci.runtime.NAMESPACE_TYPES`), capabilities from
:data:`ketch.runtime.capabilities.CAPABILITIES`.  A part of the spec that is
parsed but not yet applied is reported as absent or disabled; extend this
module together with the code that implements it.
"""

from __future__ import annotations

from typing import Any

import ketch
from ketch.oci.runtime import HOOK_NAMES, NAMESPACE_TYPES, OCI_VERSION, Linux
from ketch.runtime.capabilities import CAPABILITIES
from ketch.runtime.container import NAMESPACE_FLAGS
from ketch.runtime.mountopts import MOUNT_FLAGS, PROPAGATION_FLAGS

# Hook names the runtime runs (config.md "POSIX-platform Hooks"): all of them.
HOOKS: tuple[str, ...] = HOOK_NAMES


def namespaces() -> list[str]:
    """Namespace types ``create`` can make or join.  A user namespace needs
    ``uidMappings``/``gidMappings``, which only count once the spec parser
    knows them."""
    return [t for t in NAMESPACE_TYPES if t in NAMESPACE_FLAGS
            and (t != "user" or "uidMappings" in Linux.__dataclass_fields__)]


def mount_options() -> list[str]:
    """Every option name of a spec mount the runtime maps to mount(2) flags or propagation."""
    return list(MOUNT_FLAGS) + list(PROPAGATION_FLAGS)


def seccomp() -> dict[str, Any]:
    """The seccomp part, from :mod:`ketch.runtime.seccomp`'s tables; disabled without libseccomp."""
    try:
        from ketch.runtime import seccomp as sec
    except Exception:  # noqa: BLE001 - libseccomp.so.2 missing
        return {"enabled": False}
    return {"enabled": True, "actions": list(sec.ACTIONS), "operators": list(sec.OPERATORS),
            "archs": list(sec.ARCHITECTURES), "knownFlags": list(sec.FLAGS), "supportedFlags": list(sec.FLAGS)}


def features() -> dict[str, Any]:
    """The runtime-spec features document (features.md)."""
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOKS),
        "mountOptions": mount_options(),
        "linux": {
            "namespaces": namespaces(),
            "capabilities": list(CAPABILITIES),
            # v2: every limit but device rules (eBPF not loaded, see ketch.runtime.cgroups).
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False, "rdma": False},
            "seccomp": seccomp(),
            # applied where the host has them enabled, a clear error where not
            "apparmor": {"enabled": True},
            "selinux": {"enabled": True},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"org.ketch.runtime.version": ketch.__version__},
    }
