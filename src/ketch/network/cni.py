"""A CNI runtime: run the plugins of a network configuration list (``.conflist``)
the way libcni does (CNI spec 1.0, "Network configuration lists").

ADD runs the plugins in order, each given the previous one's result as
``prevResult``; DEL runs them in reverse, each given the cached result of the
whole ADD.  A plugin is an executable found on the plugin path, given the
command in environment variables (``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_PATH``) and its configuration on stdin;
it answers with a JSON result, or a JSON error and a non-zero exit.

Only the plugins of Debian's ``containernetworking-plugins`` are used by
ketch's own configs (bridge with host-local IPAM, portmap, firewall), but any
plugin a user adds to a ``.conflist`` runs the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from ketch.errors import KetchError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

CNI_VERSION = "1.0.0"
# Debian/Ubuntu, the upstream tarball's default, Fedora/RHEL.
DEFAULT_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin", "/usr/libexec/cni")


class NetworkError(KetchError):
    """A network could not be set up, torn down or changed."""


def plugin_dirs() -> list[str]:
    """``$KETCH_CNI_PATH`` (colon-separated) or the usual plugin directories."""
    env = os.environ.get("KETCH_CNI_PATH")
    return env.split(":") if env else list(DEFAULT_PLUGIN_DIRS)


def find_plugin(kind: str) -> str:
    """The executable of plugin ``kind``.  Raises NetworkError naming the package."""
    for d in plugin_dirs():
        p = os.path.join(d, kind)
        if os.access(p, os.X_OK):
            return p
    raise NetworkError(
        f"CNI plugin {kind!r} not found in {':'.join(plugin_dirs())} "
        "(install Debian's containernetworking-plugins, or set KETCH_CNI_PATH)")


@dataclass(frozen=True)
class Invocation:
    """Who a plugin is run for: ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``."""

    container_id: str
    netns: str
    ifname: str = "eth0"


def exec_plugin(command: str, conf: dict[str, Any], inv: Invocation) -> dict[str, Any]:
    """Run one plugin with ``command`` (ADD, DEL, CHECK) and its full config
    ``conf``; returns its parsed result (``{}`` for an empty answer).
    Raises NetworkError with the plugin's message."""
    kind = conf.get("type", "")
    exe = find_plugin(kind)
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": inv.container_id,
        "CNI_NETNS": inv.netns,
        "CNI_IFNAME": inv.ifname,
        "CNI_PATH": ":".join(plugin_dirs()),
    }
    p = subprocess.run([exe], input=json.dumps(conf).encode(), env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.decode(errors="replace").strip()
    if p.returncode != 0:
        msg = ""
        try:
            err = json.loads(out)
            msg = err.get("msg", "") + (f": {err['details']}" if err.get("details") else "")
        except ValueError:
            msg = out or p.stderr.decode(errors="replace").strip()
        raise NetworkError(f"CNI {kind} {command} ({conf.get('name')}): {msg or f'exit {p.returncode}'}")
    if not out:
        return {}
    try:
        return json.loads(out)
    except ValueError:
        raise NetworkError(f"CNI {kind} {command}: not JSON: {out[:200]!r}") from None


def _plugin_conf(conflist: dict[str, Any], plugin: dict[str, Any], runtime_config: dict[str, Any],
                 prev: dict[str, Any] | None) -> dict[str, Any]:
    """A plugin's stdin: its own keys plus ``name``/``cniVersion`` of the list,
    ``prevResult`` and the ``runtimeConfig`` entries it declared in
    ``capabilities`` (libcni ``buildOneConfig`` / ``injectRuntimeConfig``)."""
    conf = dict(plugin)
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist.get("cniVersion", CNI_VERSION)
    caps = plugin.get("capabilities") or {}
    rc = {k: v for k, v in runtime_config.items() if caps.get(k)}
    if rc:
        conf["runtimeConfig"] = rc
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def _plugins(conflist: dict[str, Any], runtime_config: dict[str, Any]) -> list[dict[str, Any]]:
    """The plugins to run: all, except ``portmap`` when there is no port to
    map (it would do nothing but spend a process and iptables calls)."""
    return [p for p in conflist.get("plugins", ())
            if not (p.get("type") == "portmap" and not runtime_config.get("portMappings"))]


def add(conflist: dict[str, Any], inv: Invocation, runtime_config: dict[str, Any],
        progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """CNI ADD of every plugin in order; returns the final result.
    ``progress(result)`` is called after each plugin (so a caller can record
    what exists before the next step).  Raises NetworkError; the caller runs
    :func:`delete` to undo a partial ADD."""
    prev: dict[str, Any] | None = None
    for plugin in _plugins(conflist, runtime_config):
        result = exec_plugin("ADD", _plugin_conf(conflist, plugin, runtime_config, prev), inv)
        prev = result or prev
        if progress is not None and prev is not None:
            progress(prev)
    return prev or {}


def delete(conflist: dict[str, Any], inv: Invocation, runtime_config: dict[str, Any],
           cached: dict[str, Any] | None) -> list[str]:
    """CNI DEL of every plugin in reverse order, each given the cached ADD
    result.  Plugins tolerate what is already gone, so this is idempotent.
    Every plugin is tried; returns the error messages of those that failed."""
    errors = []
    for plugin in reversed(_plugins(conflist, runtime_config)):
        try:
            exec_plugin("DEL", _plugin_conf(conflist, plugin, runtime_config, cached), inv)
        except NetworkError as e:
            errors.append(str(e))
    return errors
