"""The overlayfs snapshotter: unpacked layers shared by every container of an image.

On-disk layout under the snapshotter's root (``Paths.snapshots``)::

    layers/<chain-id hex>/fs          the unpacked layer (an overlayfs lower dir)
    layers/<chain-id hex>/link        its short id (10 characters)
    layers/<chain-id hex>/meta.json   {"chain_id", "diff_id", "parent", "size"}
    l/<short id> -> ../layers/<chain-id hex>/fs
    rw/<key>/upper, rw/<key>/work     one container's writable layer
    empty/                            the lower dir of an image without layers

Each layer is unpacked once, keyed by its *chain ID* (image-spec config.md
"Layer ChainID"), so images sharing a base share its directories.  A layer is
unpacked into ``layers/.tmp-*`` and renamed into place: a directory under
``layers/`` named by a chain ID is always complete, and when two processes
race, the second rename fails and its copy is discarded.

A container's root is ``mount -t overlay -o lowerdir=TOP:…:BOTTOM,upperdir=…,
workdir=…`` (``Documentation/filesystems/overlayfs.rst``; lowerdir lists the
top-most layer first).  The option string of mount(2) is limited to one page
(4096 bytes); when the absolute paths do not fit, lower dirs are named by
their short links relative to the root (Docker overlay2's ``l/`` trick) and
the mount is issued from a thread that did ``unshare(CLONE_FS)`` and
``chdir(root)`` — the process's own working directory never changes.  That
allows roughly 300 layers; overlayfs itself stops at 500.

Callers serialize :meth:`Snapshotter.ensure_image` and
:meth:`Snapshotter.remove_unused` (the engine's ``Paths.lock``); everything
else is safe to call concurrently.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from ketch.errors import DigestMismatch, ImageError, LayerError, SyscallError
from ketch.linux import syscalls
from ketch.oci.image import chain_ids, check_digest

__all__ = ["Snapshotter", "PAGE_LIMIT"]

_CLONE_FS = 0x00000200          # <sched.h>: unshare the cwd/root/umask of this thread only
PAGE_LIMIT = 4096               # mount(2) copies at most one page of option data
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_STALE_TMP_SECONDS = 3600       # a .tmp-* dir older than this belongs to a dead process


TYPE_CHECKING = False  # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    from typing import Any, Iterable, Protocol, Sequence

    class _Content(Protocol):
        def path(self, digest: str) -> Path: ...


def _esc(path: str) -> str:
    """Escape the separators of overlayfs' option parser (``\\``, ``,``, ``:``)."""
    return path.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


class Snapshotter:
    """Layer snapshots and per-container writable layers over overlayfs.

    ``root`` is created (mode 0700) on first use.  Every path returned is
    absolute.  Errors: :class:`~ketch.errors.ImageError` (and its
    ``LayerError``/``DigestMismatch``) for image problems,
    :class:`~ketch.errors.SyscallError` for mount/umount failures.
    """

    def __init__(self, root: Path | str):
        self.root = Path(os.path.abspath(root))
        self._layers = self.root / "layers"
        self._links = self.root / "l"
        self._rw = self.root / "rw"

    # -- paths -------------------------------------------------------------------
    def _init(self) -> None:
        os.makedirs(self.root.parent, exist_ok=True)
        for d in (self.root, self._layers, self._links, self._rw):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass

    def layer_path(self, chain_id: str) -> Path:
        """The unpacked directory (overlayfs lower dir) of the layer with ``chain_id``
        (``sha256:<hex>``); it exists iff the layer is unpacked.  Raises ImageError for
        a malformed digest."""
        return self._layers / check_digest(chain_id)[7:] / "fs"

    def has_layer(self, chain_id: str) -> bool:
        """True if the layer with ``chain_id`` is unpacked (complete)."""
        return self.layer_path(chain_id).is_dir()

    def layers(self) -> list[str]:
        """Chain IDs of every unpacked layer, sorted."""
        try:
            names = os.listdir(self._layers)
        except FileNotFoundError:
            return []
        return sorted("sha256:" + n for n in names if len(n) == 64 and not n.startswith("."))

    def layer_info(self, chain_id: str) -> dict[str, Any]:
        """``meta.json`` of a layer: ``chain_id``, ``diff_id``, ``parent`` (chain ID or None),
        ``size`` (bytes of uncompressed tar), ``link`` (short id)."""
        d = self._layers / check_digest(chain_id)[7:]
        try:
            return json.loads((d / "meta.json").read_text())
        except FileNotFoundError:
            raise ImageError(f"layer {chain_id} is not unpacked") from None

    # -- layers ------------------------------------------------------------------
    def ensure_image(self, content: _Content, image: Any) -> list[Path]:
        """Unpack every missing layer of ``image``; return its layer dirs, **top-most first**.

        ``content`` has ``.path(digest) -> Path`` of a stored blob (the
        ContentStore); ``image`` has ``.manifest.layers`` (Descriptors, base
        first) and ``.config.diff_ids`` (same order).  Layers already unpacked
        (same chain ID, from any image) are reused.  Each new layer is checked
        against its diff ID while it is unpacked.  Raises ImageError when the
        counts differ or a blob is missing, LayerError/DigestMismatch from
        :func:`ketch.image.unpack.apply_layer` with the layer's digest prefixed.
        """
        descs = list(image.manifest.layers)
        diff_ids = list(image.config.diff_ids)
        if len(descs) != len(diff_ids):
            raise ImageError(f"image has {len(descs)} layers but {len(diff_ids)} diff_ids")
        self._init()
        chains = chain_ids(diff_ids)
        for i, (desc, diff_id, chain) in enumerate(zip(descs, diff_ids, chains)):
            if self.has_layer(chain):
                continue
            parents = [self.layer_path(c) for c in reversed(chains[:i])]
            try:
                self._unpack(content.path(desc.digest), chain, diff_id,
                             chains[i - 1] if i else None, parents)
            except (LayerError, DigestMismatch) as e:
                # The unpacker knows the bytes, not which blob they came from.
                raise type(e)(f"layer {desc.digest}: {e}") from e
        return [self.layer_path(c) for c in reversed(chains)]

    def add_layer(self, blob: Path | str, diff_id: str, parent: str | None = None) -> str:
        """Unpack one layer blob on top of the unpacked layer ``parent`` (a chain ID, or None
        for a base layer) unless already there; return its chain ID."""
        self._init()
        check_digest(diff_id)
        chain = chain_ids([parent, diff_id])[1] if parent else diff_id
        if not self.has_layer(chain):
            parents: list[Path] = []
            c = parent
            while c:
                parents.append(self.layer_path(c))
                c = self.layer_info(c).get("parent")
            self._unpack(Path(blob), chain, diff_id, parent, parents)
        return chain

    def _unpack(self, blob: Path, chain: str, diff_id: str, parent: str | None,
                parents: list[Path]) -> None:
        hexid = chain[7:]
        final = self._layers / hexid
        self._remove_dead_tmps()
        # The PID in the name lets a later unpack remove this dir if we are killed.
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{hexid[:12]}-{os.getpid()}-", dir=self._layers))
        link: str | None = None
        try:
            from ketch.image.unpack import apply_layer  # only when a layer is missing (start-up)
            size = apply_layer(blob, tmp / "fs", parents, diff_id)
            link = self._new_link(hexid)
            (tmp / "link").write_text(link)
            meta = {"chain_id": chain, "diff_id": diff_id, "parent": parent, "size": size,
                    "link": link}
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Another process unpacked the same layer first: keep theirs.
                self._drop_link(link)
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            if link:
                self._drop_link(link)
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _remove_dead_tmps(self) -> None:
        """Delete ``.tmp-<id>-<pid>-*`` unpack dirs whose process no longer
        exists (a ketch killed mid-unpack), so a half layer never stays."""
        for name in os.listdir(self._layers):
            parts = name.split("-")
            if not name.startswith(".tmp-") or len(parts) < 4 or not parts[2].isdigit():
                continue
            try:
                os.kill(int(parts[2]), 0)
            except ProcessLookupError:
                shutil.rmtree(self._layers / name, ignore_errors=True)
            except PermissionError:  # alive, someone else's
                pass

    def _new_link(self, hexid: str) -> str:
        """Create ``l/<short id> -> ../layers/<hexid>/fs`` with a fresh random id."""
        while True:
            link = base64.b32encode(os.urandom(10)).decode().lower()[:10]
            try:
                os.symlink(f"../layers/{hexid}/fs", self._links / link)
                return link
            except FileExistsError:
                continue

    def _drop_link(self, link: str) -> None:
        try:
            os.unlink(self._links / link)
        except FileNotFoundError:
            pass

    def _short(self, lower: Path) -> str | None:
        """``l/<id>`` for a lower dir of ours (recreating a lost link), else None."""
        lower = Path(os.path.abspath(lower))
        if lower.name != "fs" or lower.parent.parent != self._layers:
            return None
        try:
            link = (lower.parent / "link").read_text().strip()
        except FileNotFoundError:
            return None
        p = self._links / link
        if not os.path.lexists(p):
            try:
                os.symlink(f"../layers/{lower.parent.name}/fs", p)
            except FileExistsError:
                pass
        return f"l/{link}"

    def remove_unused(self, keep: Iterable[str]) -> list[str]:
        """Delete the layers whose chain ID is neither in ``keep`` nor below a kept one.

        ``keep`` holds chain IDs (typically the top chain ID of every image
        still stored).  Also removes leftovers of interrupted unpacks (older
        than an hour) and removals.  Returns the chain IDs removed.  The
        caller must make sure no container still mounts a removed layer.
        """
        keep_all: set[str] = set()
        for c in keep:
            while c and c not in keep_all:
                keep_all.add(c)
                try:
                    c = self.layer_info(c).get("parent")
                except ImageError:
                    break
        removed = []
        try:
            names = os.listdir(self._layers)
        except FileNotFoundError:
            return []
        now = time.time()
        for name in names:
            path = self._layers / name
            if name.startswith(".del-"):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if name.startswith(".tmp-"):
                try:
                    if now - os.lstat(path).st_mtime > _STALE_TMP_SECONDS:
                        shutil.rmtree(path, ignore_errors=True)
                except FileNotFoundError:
                    pass
                continue
            chain = "sha256:" + name
            if chain in keep_all:
                continue
            try:
                link = (path / "link").read_text().strip()
            except FileNotFoundError:
                link = None
            # Rename first: the layer disappears atomically, the slow delete follows.
            trash = self._layers / f".del-{name[:12]}-{os.getpid()}-{os.urandom(4).hex()}"
            try:
                os.rename(path, trash)
            except FileNotFoundError:
                continue
            if link:
                self._drop_link(link)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(chain)
        return sorted(removed)

    # -- writable layers ---------------------------------------------------------------
    def _rw_dir(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise ValueError(f"invalid snapshot key {key!r}")
        return self._rw / key

    def prepare_rw(self, key: str) -> tuple[Path, Path]:
        """Create (or reuse) the writable layer of container ``key``; return ``(upper, work)``.

        ``upper`` (mode 0755, root of the container's view) receives every
        change; ``work`` is overlayfs' scratch dir on the same filesystem.
        ``key`` is one path component (``[A-Za-z0-9][A-Za-z0-9_.-]*``, ≤ 128),
        else ValueError.
        """
        d = self._rw_dir(key)
        self._init()
        d.mkdir(mode=0o700, exist_ok=True)
        upper, work = d / "upper", d / "work"
        upper.mkdir(mode=0o755, exist_ok=True)
        work.mkdir(mode=0o700, exist_ok=True)
        return upper, work

    def remove_rw(self, key: str) -> None:
        """Delete the writable layer of ``key`` (must be unmounted); no error if absent."""
        shutil.rmtree(self._rw_dir(key), ignore_errors=True)

    # -- mounting ----------------------------------------------------------------------
    def _empty(self) -> Path:
        self._init()
        p = self.root / "empty"
        p.mkdir(mode=0o755, exist_ok=True)
        return p

    @staticmethod
    def _extra_options() -> list[str]:
        # Without index=off, a kernel built with CONFIG_OVERLAY_FS_INDEX=y refuses to
        # share one lower dir between mounts with different upper dirs (Docker does this too).
        if os.path.exists("/sys/module/overlay/parameters/index"):
            return ["index=off"]
        return []

    def mount_options(self, lowers: Sequence[Path], upper: Path, work: Path,
                      relative: bool = False, volatile: bool = False) -> str:
        """The overlayfs option string for these dirs.

        With ``relative`` every lower of ours is named ``l/<id>`` and
        ``upper``/``work`` relative to the root (valid only from a working
        directory of ``self.root``).  Lower dirs are top-most first.
        ``volatile`` adds overlayfs' ``volatile`` option (no sync of the upper
        filesystem, at unmount either: overlayfs.rst "Volatile mount").
        """
        if not lowers:
            lowers = [self._empty()]
        names: list[str] = []
        for lower in lowers:
            short = self._short(lower) if relative else None
            names.append(short or _esc(os.path.abspath(lower)))

        def rel(p: Path) -> str:
            p = Path(os.path.abspath(p))
            if relative and p.is_relative_to(self.root):
                return _esc(str(p.relative_to(self.root)))
            return _esc(str(p))

        opts = [f"lowerdir={':'.join(names)}", f"upperdir={rel(upper)}", f"workdir={rel(work)}"]
        return ",".join(opts + self._extra_options() + (["volatile"] if volatile else []))

    def mount(self, lowers: Sequence[Path], upper: Path, work: Path, target: Path,
              volatile: bool = False) -> None:
        """Mount overlayfs at ``target`` (created if missing): ``lowers`` top-most first.

        The mount is read-write; a runtime wanting a read-only root remounts
        it.  ``volatile``: for a writable layer that is thrown away with the
        container (``run --rm``, as podman does): its writes are never synced,
        which spares the sync of the whole upper filesystem at unmount; a
        kernel without the option (< 5.10) mounts without it.  Falls back to
        short relative lower names when the absolute option string exceeds
        one page (see the module docstring).  Raises SyscallError(errno,
        "mount", target), or ImageError when even the short form does not fit.
        """
        target_s = os.path.abspath(target)
        os.makedirs(target_s, exist_ok=True)
        data = self.mount_options(lowers, upper, work, volatile=volatile)
        if len(data) < PAGE_LIMIT:
            try:
                syscalls.mount("overlay", target_s, "overlay", 0, data)
            except SyscallError as e:
                if not volatile or e.errno != errno.EINVAL:
                    raise
                syscalls.mount("overlay", target_s, "overlay", 0, self.mount_options(lowers, upper, work))
            return
        data = self.mount_options(lowers, upper, work, relative=True)
        if len(data) >= PAGE_LIMIT:
            raise ImageError(f"too many layers to mount ({len(lowers)}): the overlay "
                             f"options take {len(data)} bytes, the kernel accepts {PAGE_LIMIT - 1}")
        self._mount_from(str(self.root), data, target_s)

    @staticmethod
    def _mount_from(cwd: str, data: str, target: str) -> None:
        """mount(2) with relative option paths resolved from ``cwd``, in a thread with its own
        fs context (``unshare(CLONE_FS)``) so the process's working directory is untouched."""
        import threading

        errors: list[BaseException] = []

        def run() -> None:
            try:
                syscalls.unshare(_CLONE_FS)
                os.chdir(cwd)
                syscalls.mount("overlay", target, "overlay", 0, data)
            except BaseException as e:  # re-raised in the caller
                errors.append(e)

        t = threading.Thread(target=run, name="ketch-overlay-mount")
        t.start()
        t.join()
        if errors:
            raise errors[0]

    def unmount(self, target: Path) -> None:
        """Detach the mount at ``target`` (lazy, ``MNT_DETACH``); nothing if not mounted."""
        try:
            syscalls.umount(os.path.abspath(target), syscalls.MNT_DETACH)
        except SyscallError as e:
            if e.errno not in (errno.EINVAL, errno.ENOENT):
                raise
