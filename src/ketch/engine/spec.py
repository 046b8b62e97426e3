"""The spec builder: image config + ``docker run`` options → OCI ``config.json``.

:func:`build_spec` is the single entry point; the helpers it uses are public
so each Docker rule can be tested alone.  What Docker does, and where:

- command: moby ``daemon/commit.go merge`` + ``daemon/container.go``
  (:func:`process_args`);
- environment: docker/cli ``ReadKVEnvStrings``, moby ``merge`` and
  ``container.CreateDaemonEnvironment`` / ``ReplaceOrAppendEnvValues``
  (:func:`process_env`);
- user: runc ``GetExecUser`` via :mod:`ketch.engine.users`;
- mounts: moby ``daemon/oci_linux.go WithMounts``, ``setupMounts`` and
  ``container.NetworkMounts`` (:func:`build_mounts`);
- ``/etc/hosts``, ``/etc/hostname``, ``/etc/resolv.conf`` files: libnetwork
  ``etchosts`` and ``resolvconf`` (:func:`make_hosts_files`).

The builder reads the rootfs (passwd/group) and the ``--env-file`` files but
writes nothing; :func:`make_hosts_files`, :func:`create_bind_sources` and
:func:`make_workdir` are the side-effecting steps the engine runs around it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ketch.errors import SpecError, UsageError
from ketch.fs import secure_join
from ketch.oci import runtime as oci
from ketch.oci.image import ExecConfig, ImageConfig

from .options import (
    DEFAULT_PROPAGATION, TMPFS_DEFAULT_OPTIONS, Mount, RunOptions, clean_path,
    merge_tmpfs_options, parse_env, parse_env_file,
)
from .users import ExecUser, resolve_user_in_rootfs

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's order of the network files (container.NetworkMounts).
NETWORK_FILES = ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts")

# Default mounts --read-only leaves writable (WithMounts).
READONLY_EXEMPT = frozenset({"/proc", "/dev/pts", "/dev/shm", "/dev/mqueue", "/dev"})

# libnetwork etchosts defaultContent.
HOSTS_DEFAULTS = (
    ("127.0.0.1", "localhost"),
    ("::1", "localhost ip6-localhost ip6-loopback"),
    ("fe00::0", "ip6-localnet"),
    ("ff00::0", "ip6-mcastprefix"),
    ("ff02::1", "ip6-allnodes"),
    ("ff02::2", "ip6-allrouters"),
)
# Without a network address of its own (--network none|host), the hostname resolves
# to a loopback address (Debian's convention for the machine's own name).
CONTAINER_HOSTS_IP = "127.0.1.1"

# Docker's default capability set (moby oci/caps/defaults.go): what a container
# process may keep.  CAP_SYS_ADMIN is not in it, so a process cannot remount
# what --read-only, :ro and the read-only /proc paths protect.
DOCKER_DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)


def default_capabilities(uid: int) -> oci.Capabilities:
    """Docker's capabilities for a process running as ``uid``: the default set
    as bounding set, and as effective and permitted sets for root only (moby
    clears them for other users, who gain capabilities only through file
    capabilities or setuid binaries)."""
    caps = DOCKER_DEFAULT_CAPABILITIES
    own = caps if uid == 0 else ()
    return oci.Capabilities(bounding=caps, effective=own, permitted=own)


DEFAULT_DNS_V4 = ("8.8.8.8", "8.8.4.4")
DEFAULT_DNS_V6 = ("2001:4860:4860::8888", "2001:4860:4860::8844")
SYSTEMD_RESOLV = Path("/run/systemd/resolve/resolv.conf")


# ---------------------------------------------------------------- command

def process_args(image: ExecConfig, entrypoint: str | None, command: Sequence[str]) -> tuple[str, ...]:
    """``process.args`` from the image's Entrypoint/Cmd and the user's
    ``--entrypoint`` and command, as Docker merges them:

    ============================  ==================  ==========================
    --entrypoint                  user command        result
    ============================  ==================  ==========================
    not given                     none                image Entrypoint + image Cmd
    not given                     ``c...``            image Entrypoint + ``c...``
    ``e``                         none                ``e`` (image Cmd dropped)
    ``e``                         ``c...``            ``e`` + ``c...``
    ``""``                        none                nothing → error
    ``""``                        ``c...``            ``c...``
    ============================  ==================  ==========================

    An image Entrypoint of exactly ``[""]`` counts as none.  Raises
    :class:`SpecError` ``no command specified`` when nothing is left.
    """
    user_ep: list[str] | None = None if entrypoint is None else [entrypoint]
    cmd = list(command)
    if not user_ep:
        if not cmd:
            cmd = list(image.Cmd or ())
        ep = list(image.Entrypoint or ())
    else:
        ep = user_ep
    if ep == [""]:
        ep = []
    if not ep and not cmd:
        raise SpecError("no command specified")
    return (*ep, *cmd)


# ---------------------------------------------------------------- environment

def _key(entry: str) -> str:
    return entry.partition("=")[0]


def replace_or_append_env(defaults: Sequence[str], overrides: Iterable[str]) -> list[str]:
    """moby ``ReplaceOrAppendEnvValues``: each ``K=V`` of ``overrides`` replaces
    ``K`` in place or is appended; a bare ``K`` removes ``K``.  Unlike Docker
    (which can emit a key twice), a later ``K=V`` also replaces an earlier
    appended one: one entry per key, later wins."""
    out: list[str | None] = list(defaults)
    index = {_key(e): i for i, e in enumerate(out)}
    for v in overrides:
        k = _key(v)
        if "=" not in v:
            if k in index:
                out[index.pop(k)] = None
            continue
        if k in index:
            out[index[k]] = v
        else:
            index[k] = len(out)
            out.append(v)
    return [e for e in out if e is not None]


def user_env(opts: RunOptions, host_env: Mapping[str, str]) -> list[str]:
    """The user's environment as the Docker CLI sends it: every ``--env-file``
    in order, then every ``-e``; bare keys resolved against ``host_env``
    (still bare when unset there).  Raises :class:`UsageError`."""
    out: list[str] = []
    for path in opts.env_files:
        out += parse_env_file(path, host_env)
    out += parse_env(opts.env, host_env)
    return out


def process_env(image_env: Sequence[str], opts: RunOptions, host_env: Mapping[str, str], *,
                hostname: str, home: str | None = None) -> tuple[str, ...]:
    """``process.env``, in Docker's order and precedence.

    Start from ``PATH=<default>``, ``HOSTNAME=<hostname>`` and, with ``-t``,
    ``TERM=xterm``; then apply the user's entries (env files, then ``-e``;
    later wins) followed by the image's entries whose key the user did not
    name.  A bare ``K`` from the user (unset in the caller's environment)
    removes ``K``, the image's value included.  Finally ``HOME=<home>`` is
    appended when no ``HOME`` is set (runc does this at exec; we write it).
    Raises :class:`UsageError` for malformed env values or unreadable env files.
    """
    user = user_env(opts, host_env)
    user_keys = {_key(e) for e in user}
    merged = user + [e for e in image_env if _key(e) not in user_keys]
    defaults = [DEFAULT_PATH_ENV, f"HOSTNAME={hostname}"]
    if opts.tty:
        defaults.append("TERM=xterm")
    env = replace_or_append_env(defaults, merged)
    if home is not None and not any(_key(e) == "HOME" for e in env):
        env.append(f"HOME={home}")
    return tuple(env)


# ---------------------------------------------------------------- mounts

def mount_depth(destination: str) -> int:
    """Number of separators in the cleaned path: Docker's mount sort key."""
    return clean_path(destination).count("/")


def docker_default_mounts() -> tuple[oci.Mount, ...]:
    """runc's default mounts (:func:`ketch.oci.runtime.default_mounts`) with
    Docker's ``/proc`` options (``nosuid,noexec,nodev``)."""
    out = []
    for m in oci.default_mounts():
        if m.destination == "/proc":
            m = oci.Mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev"))
        out.append(m)
    return tuple(out)


def _bind_options(read_only: bool, propagation: str, recursive: bool = True) -> tuple[str, ...]:
    opts = ["rbind" if recursive else "bind"]
    if read_only:
        opts.append("ro")
    opts.append(propagation or DEFAULT_PROPAGATION)
    return tuple(opts)


def _to_oci(m: Mount) -> oci.Mount:
    if m.type == "tmpfs":
        return oci.Mount(m.target, "tmpfs", "tmpfs",
                         merge_tmpfs_options((*TMPFS_DEFAULT_OPTIONS, *m.tmpfs_options)))
    return oci.Mount(m.target, "bind", m.source, _bind_options(m.read_only, m.propagation, m.recursive))


def build_mounts(opts: RunOptions, hosts_files: Mapping[str, str] | None
                 ) -> tuple[tuple[oci.Mount, ...], str | None]:
    """``mounts`` and ``linux.rootfsPropagation`` as Docker's ``WithMounts``.

    - Default mounts first (:func:`docker_default_mounts`), minus any a user
      mount replaces, and minus everything under ``/dev/`` when the user
      mounts ``/dev`` itself.
    - Then the user's mounts, stably sorted by destination depth so parents
      mount before children: binds (``-v``, then ``--mount``; options
      ``rbind`` (``bind`` when non-recursive), ``ro`` if read-only, the
      propagation, default ``rprivate``), the network files from
      ``hosts_files`` in Docker's order (``rbind``, ``rprivate``, ``ro``
      with ``--read-only``; a user mount at the same path wins), then tmpfs
      (``noexec,nosuid,nodev,rprivate`` then the user's options, merged).
    - ``--read-only``: every remaining default mount except ``/proc``,
      ``/dev``, ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue`` gets ``ro``.
    - A ``shared``/``rshared`` bind makes the rootfs propagation ``shared``;
      a ``slave``/``rslave`` one ``rslave`` unless already shared.

    Raises :class:`UsageError` for duplicate mount points.
    """
    user = opts.user_mounts()
    binds = [_to_oci(m) for m in user if m.type == "bind"]
    tmpfs = [_to_oci(m) for m in user if m.type == "tmpfs"]
    taken = {m.target for m in user}
    net: list[oci.Mount] = []
    files = dict(hosts_files or {})
    for dest in [*(d for d in NETWORK_FILES if d in files), *(d for d in files if d not in NETWORK_FILES)]:
        if dest not in taken:
            net.append(oci.Mount(dest, "bind", files[dest], _bind_options(opts.read_only, DEFAULT_PROPAGATION)))
    ours = sorted([*binds, *net, *tmpfs], key=lambda m: mount_depth(m.destination))
    dests = {m.destination for m in ours}

    defaults = []
    for m in docker_default_mounts():
        if m.destination in dests or ("/dev" in dests and m.destination.startswith("/dev/")):
            continue
        if opts.read_only and m.destination not in READONLY_EXEMPT and "ro" not in m.options:
            m = oci.Mount(m.destination, m.type, m.source, (*m.options, "ro"))
        defaults.append(m)

    propagation: str | None = None
    for m in user:
        if m.type != "bind":
            continue
        if m.propagation in ("shared", "rshared"):
            propagation = "shared" if propagation not in ("shared", "rshared") else propagation
        elif m.propagation in ("slave", "rslave") and propagation not in ("shared", "rshared", "slave", "rslave"):
            propagation = "rslave"
    return (*defaults, *ours), propagation


# ---------------------------------------------------------------- the spec

def default_hostname(container_id: str) -> str:
    """Docker's default hostname: the first 12 characters of the container ID."""
    return container_id[:12]


def build_spec(image_config: ImageConfig, opts: RunOptions, *, container_id: str, rootfs: str,
               hosts_files: Mapping[str, str] | None, host_env: Mapping[str, str]) -> oci.Spec:
    """The OCI runtime spec for running ``image_config`` with ``opts``.

    Starts from :func:`ketch.oci.runtime.default_spec` (namespaces pid,
    network, ipc, uts, mount, cgroup; runc's masked and read-only paths;
    rlimits and noNewPrivileges left as that spec has them) and sets:

    - ``process.capabilities`` — :func:`default_capabilities` (Docker's set);

    - ``process.args`` — :func:`process_args`;
    - ``process.user`` — ``-u`` or the image's ``User`` resolved in
      ``rootfs``'s ``/etc/passwd`` and ``/etc/group`` (the engine has mounted
      the rootfs; see :mod:`ketch.engine.users`); ``additionalGids`` as Docker;
    - ``process.env`` — :func:`process_env`, with ``HOME`` from passwd;
    - ``process.cwd`` — ``-w``, else the image's WorkingDir, else ``/``;
    - ``process.terminal`` — ``-t``;
    - ``hostname`` — ``-h``, else :func:`default_hostname`;
    - ``root`` — ``rootfs``, read-only with ``--read-only``;
    - ``mounts`` and ``linux.rootfsPropagation`` — :func:`build_mounts`
      (``hosts_files``: container destination → host file, e.g. from
      :func:`make_hosts_files`; None for none).

    ``host_env`` is the caller's environment for bare ``-e K`` and
    ``--env-file`` keys.  The image's ``Volumes`` are not mounted yet
    (anonymous volumes are a later issue): their paths stay in the rootfs.

    Raises :class:`SpecError` (no command, unknown user or group) and
    :class:`UsageError` (bad env values, unreadable env files, duplicate
    mount points).
    """
    cfg = image_config.config
    args = process_args(cfg, opts.entrypoint, opts.command)
    hostname = opts.hostname or default_hostname(container_id)
    user_spec = opts.user if opts.user else cfg.User  # Docker: -u "" is the same as no -u
    who: ExecUser = resolve_user_in_rootfs(rootfs, user_spec)
    env = process_env(cfg.Env, opts, host_env, hostname=hostname, home=who.home)
    if opts.workdir:
        cwd = opts.workdir
    elif cfg.WorkingDir:
        cwd = clean_path("/" + cfg.WorkingDir)
    else:
        cwd = "/"
    mounts, propagation = build_mounts(opts, hosts_files)

    base = oci.default_spec()
    process = oci.Process(
        args=args, cwd=cwd, env=env,
        user=oci.User(uid=who.uid, gid=who.gid, additionalGids=who.additional_gids),
        terminal=opts.tty,
        rlimits=base.process.rlimits, noNewPrivileges=base.process.noNewPrivileges,
        oomScoreAdj=base.process.oomScoreAdj, extra=dict(base.process.extra),
        capabilities=default_capabilities(who.uid),
    )
    linux = oci.Linux(
        namespaces=base.linux.namespaces, maskedPaths=base.linux.maskedPaths,
        readonlyPaths=base.linux.readonlyPaths, rootfsPropagation=propagation,
        sysctl=dict(base.linux.sysctl), cgroupsPath=base.linux.cgroupsPath, extra=dict(base.linux.extra),
    )
    return base.with_(process=process, root=oci.Root(rootfs, readonly=opts.read_only),
                      hostname=hostname, mounts=mounts, linux=linux)


# ---------------------------------------------------------------- host-side files

def _parse_extra_host(h: str | tuple[str, str]) -> tuple[str, str]:
    if isinstance(h, tuple):
        name, ip = h
    else:
        name, sep, ip = h.partition("=")
        if not sep:
            name, sep, ip = h.partition(":")
        if not sep:
            raise UsageError(f"bad format for add-host: {h!r}")
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip == "host-gateway":
        raise UsageError(f"add-host {h!r}: host-gateway is not supported yet")
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"invalid IP address in add-host: {ip!r}") from None
    if not name:
        raise UsageError(f"bad format for add-host: {h!r}")
    return name, ip


def hosts_content(hostname: str, extra_hosts: Iterable[str | tuple[str, str]] = (),
                  ip: str | None = None) -> str:
    """The container's ``/etc/hosts``: libnetwork's default records, then
    ``--add-host`` records (``name:ip``, ``name=ip`` or ``(name, ip)``; an
    IPv6 address may be bracketed), then ``<ip> <hostname>`` (plus the
    short name when it is a FQDN): the container's own address, as Docker,
    or ``127.0.1.1`` when it has none (``--network none|host``).
    Raises :class:`UsageError` for a malformed extra host."""
    lines = [f"{addr}\t{names}" for addr, names in HOSTS_DEFAULTS]
    for h in extra_hosts:
        name, addr = _parse_extra_host(h)
        lines.append(f"{addr}\t{name}")
    names = hostname
    short = hostname.partition(".")[0]
    if short != hostname:
        names += f" {short}"
    lines.append(f"{ip or CONTAINER_HOSTS_IP}\t{names}")
    return "\n".join(lines) + "\n"


_NS_RE = re.compile(r"^\s*nameserver\s+(\S+)\s*$")


def _nameservers(text: str) -> list[str]:
    return [m.group(1) for line in text.splitlines() if (m := _NS_RE.match(line))]


def _is_loopback_ns(addr: str) -> bool:
    return re.fullmatch(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}", addr) is not None or addr == "::1"


def resolv_conf_content(host_text: str, *, ipv6: bool = False) -> str:
    """The container's ``resolv.conf`` from the host's (libnetwork
    ``FilterResolvDNS``): loopback nameservers (``127.x.x.x``, ``::1``) are
    removed, IPv6 ones too unless ``ipv6``; ``search``/``options`` lines are
    kept; when no nameserver is left, Google's public servers are added
    (``8.8.8.8``, ``8.8.4.4``, and the IPv6 pair with ``ipv6``)."""
    kept = []
    for line in host_text.splitlines():
        m = _NS_RE.match(line)
        if m:
            addr = m.group(1)
            if _is_loopback_ns(addr) or (not ipv6 and ":" in addr):
                continue
        kept.append(line)
    out = "\n".join(kept)
    if not _nameservers(out):
        dns = [*DEFAULT_DNS_V4, *(DEFAULT_DNS_V6 if ipv6 else ())]
        out = (out + "\n" if out.strip() else "") + "\n".join(f"nameserver {d}" for d in dns)
    return out.rstrip("\n") + "\n"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def make_hosts_files(dir: Path, hostname: str, host_resolv: Path = Path("/etc/resolv.conf"),
                     extra_hosts: Iterable[str | tuple[str, str]] = (), *, ipv6: bool = False,
                     systemd_resolv: Path | None = SYSTEMD_RESOLV, ip: str | None = None) -> dict[str, str]:
    """Write ``hosts``, ``hostname`` and ``resolv.conf`` into ``dir`` (created
    if missing; files 0644, replaced atomically) and return
    ``{"/etc/resolv.conf": path, "/etc/hostname": path, "/etc/hosts": path}``
    for :func:`build_spec`'s ``hosts_files``.

    ``hosts``: :func:`hosts_content`.  ``hostname``: the hostname and a
    newline.  ``resolv.conf``: :func:`resolv_conf_content` of
    ``host_resolv`` (a missing file counts as empty); as Docker, when that
    file's only nameserver is systemd-resolved's stub ``127.0.0.53`` and
    ``systemd_resolv`` exists, that file (the real upstream servers) is used
    instead.  Nothing is sent over the network.  Raises :class:`UsageError`
    for a malformed extra host, OSError when ``dir`` cannot be written.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    try:
        resolv = host_resolv.read_text(errors="replace")
    except FileNotFoundError:
        resolv = ""
    if systemd_resolv is not None and _nameservers(resolv) == ["127.0.0.53"]:
        try:
            resolv = systemd_resolv.read_text(errors="replace")
        except FileNotFoundError:
            pass
    hosts = hosts_content(hostname, extra_hosts, ip=ip)
    _write(dir / "resolv.conf", resolv_conf_content(resolv, ipv6=ipv6))
    _write(dir / "hostname", hostname + "\n")
    _write(dir / "hosts", hosts)
    return {"/etc/resolv.conf": str(dir / "resolv.conf"), "/etc/hostname": str(dir / "hostname"),
            "/etc/hosts": str(dir / "hosts")}


def create_bind_sources(opts: RunOptions) -> list[str]:
    """Create (mode 0755) the missing host directories of ``-v`` binds, as Docker
    does when the container starts; ``--mount`` binds are never created.
    Returns the paths created.  Raises OSError."""
    made = []
    for m in opts.volumes:
        if m.type == "bind" and m.create_source and not os.path.lexists(m.source):
            os.makedirs(m.source, 0o755, exist_ok=True)
            made.append(m.source)
    return made


def make_workdir(rootfs: str, cwd: str) -> None:
    """Create the working directory ``cwd`` inside ``rootfs`` when missing (mode
    0755, owned by the engine's user, i.e. root), as Docker's
    ``SetupWorkingDirectory`` does; symlinks resolve inside ``rootfs``.
    Raises :class:`SpecError` ``Cannot mkdir: /x is not a directory``."""
    host = secure_join(rootfs, cwd)
    if os.path.isdir(host):
        return
    try:
        os.makedirs(host, 0o755, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise SpecError(f"Cannot mkdir: {cwd} is not a directory") from None
