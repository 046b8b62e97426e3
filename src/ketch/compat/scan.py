"""Scan an image's merged filesystem for ELF files, with a per-layer cache.

The image is not mounted: its unpacked layer directories (from the
snapshotter, top-most first) are read with overlayfs' rules applied by hand
(``Documentation/filesystems/overlayfs.rst``): a name in an upper layer hides
the same name below; a whiteout (character device 0/0) hides it without
replacing it; an opaque directory (xattr ``trusted.overlay.opaque=y``) hides
everything below it in lower layers; a non-directory hides a lower
directory's whole subtree.

Each layer is scanned once: its entries (files, symlinks, whiteouts, opaque
dirs) and the :class:`~ketch.compat.elf.ElfInfo` of each ELF file are kept
in ``ROOT/compat/<chain-id hex>.json``.  A layer's content never changes
under its chain ID, so the cache is valid until the scanner's version
changes.  Files are recognised by their first four bytes; hard links inside
a layer are scanned once.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from ketch.compat.elf import ELF_MAGIC, MIN_SIZE, SCANNER_VERSION, ElfInfo, scan_file

OPAQUE_XATTR = "trusted.overlay.opaque"


@dataclass
class LayerScan:
    """One layer: ``entries`` relpath → ``f`` (file), ``l:<target>`` (symlink), ``w``
    (whiteout), ``o`` (opaque dir); ``elf`` relpath → facts."""

    entries: dict[str, str]
    elf: dict[str, ElfInfo]
    cached: bool = False


def walk_layer(fs: Path) -> LayerScan:
    """Read one unpacked layer directory (no cache)."""
    entries: dict[str, str] = {}
    elf: dict[str, ElfInfo] = {}
    by_inode: dict[tuple[int, int], ElfInfo | None] = {}
    root = str(fs)
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else root
        try:
            it = os.scandir(path)
        except OSError:
            continue
        with it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                try:
                    if e.is_symlink():
                        entries[r] = "l:" + os.readlink(e.path)
                    elif e.is_dir(follow_symlinks=False):
                        try:
                            if os.getxattr(e.path, OPAQUE_XATTR, follow_symlinks=False) == b"y":
                                entries[r] = "o"
                        except OSError:
                            pass
                        stack.append(r)
                    elif e.is_file(follow_symlinks=False):
                        entries[r] = "f"
                        st = e.stat(follow_symlinks=False)
                        if st.st_size < MIN_SIZE:
                            continue
                        key = (st.st_dev, st.st_ino)
                        if key in by_inode:
                            info = by_inode[key]
                        else:
                            info = _scan_if_elf(e.path)
                            by_inode[key] = info
                        if info is not None:
                            elf[r] = info
                    else:
                        st = e.stat(follow_symlinks=False)
                        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                            entries[r] = "w"
                        else:
                            entries[r] = "f"   # a device, fifo or socket: hides lower names like a file
                except OSError:
                    continue
    return LayerScan(entries, elf)


def _scan_if_elf(path: str) -> ElfInfo | None:
    try:
        with open(path, "rb") as f:
            if f.read(4) != ELF_MAGIC:
                return None
    except OSError:
        return None
    return scan_file(path)


def load_layer(fs: Path, cache: Path | None) -> LayerScan:
    """The layer's scan from ``cache`` (a JSON file) if valid, else walk it and write the cache."""
    if cache is not None:
        try:
            doc = json.loads(cache.read_bytes())
            if doc.get("version") == SCANNER_VERSION:
                infos = [ElfInfo.from_json(v) for v in doc["infos"]]
                return LayerScan(doc["entries"], {k: infos[i] for k, i in doc["elf"].items()}, cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    scan = walk_layer(fs)
    if cache is not None:
        from ketch.image.store import atomic_write
        # Hard links share one ElfInfo object; keep them shared in the file.
        index: dict[int, int] = {}
        infos = []
        for v in scan.elf.values():
            if id(v) not in index:
                index[id(v)] = len(infos)
                infos.append(v.to_json())
        doc = {"version": SCANNER_VERSION, "entries": scan.entries, "infos": infos,
               "elf": {k: index[id(v)] for k, v in scan.elf.items()}}
        try:
            atomic_write(cache, json.dumps(doc, separators=(",", ":")).encode(), 0o600)
        except OSError:
            pass
    return scan


@dataclass
class MergedView:
    """The union of layers as a container would see it (no directories listed)."""

    files: dict[str, int] = field(default_factory=dict)        # relpath -> layer index (0 = top)
    symlinks: dict[str, str] = field(default_factory=dict)     # relpath -> target
    elf: dict[str, ElfInfo] = field(default_factory=dict)

    @classmethod
    def merge(cls, layers: list[LayerScan]) -> "MergedView":
        """``layers`` top-most first."""
        view = cls()
        blocked: set[str] = set()

        def hidden(rel: str) -> bool:
            if rel in blocked:
                return True
            i = rel.rfind("/")
            while i > 0:
                if rel[:i] in blocked:
                    return True
                i = rel.rfind("/", 0, i)
            return False

        for idx, layer in enumerate(layers):
            new: list[str] = []
            for rel, kind in layer.entries.items():
                if hidden(rel):
                    continue
                new.append(rel)
                if kind == "f":
                    view.files[rel] = idx
                    info = layer.elf.get(rel)
                    if info is not None:
                        view.elf[rel] = info
                elif kind.startswith("l:"):
                    view.symlinks[rel] = kind[2:]
            blocked.update(new)
        return view

    def resolve(self, path: str) -> str | None:
        """Follow symlinks (of any component, within the image root) to a regular file;
        its relpath, or None when missing or looping."""
        todo = [c for c in path.split("/") if c and c != "."]
        cur: list[str] = []
        hops = 0
        while todo:
            c = todo.pop(0)
            if c == "..":
                if cur:
                    cur.pop()
                continue
            cand = "/".join(cur + [c])
            target = self.symlinks.get(cand)
            if target is not None:
                hops += 1
                if hops > 40:
                    return None
                parts = [x for x in target.split("/") if x and x != "."]
                if target.startswith("/"):
                    cur = []
                todo = parts + todo
                continue
            cur.append(c)
        rel = "/".join(cur)
        return rel if rel in self.files else None

    def which(self, name: str, env: tuple[str, ...] | list[str] = ()) -> str | None:
        """``name`` looked up as execvp would, with the image's PATH (or the default)."""
        if "/" in name:
            return self.resolve(name)
        path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        for kv in env:
            if kv.startswith("PATH="):
                path = kv[5:]
        for d in path.split(":"):
            rel = self.resolve(posixpath.join(d or ".", name))
            if rel is not None:
                return rel
        return None


@dataclass
class ImageScan:
    view: MergedView
    layers: int
    cached_layers: int
    seconds: float
    files: int
    bytes: int


def scan_layers(layer_dirs: list[Path], chain_ids: list[str] | None = None,
                cache_dir: Path | None = None) -> ImageScan:
    """Scan unpacked layers (top-most first; ``chain_ids`` in the same order name their caches).
    ``files``/``bytes`` count distinct files (hard links once)."""
    t0 = time.monotonic()
    scans = []
    for i, fs in enumerate(layer_dirs):
        cache = None
        if cache_dir is not None and chain_ids:
            cache = cache_dir / (chain_ids[i].split(":", 1)[-1] + ".json")
        scans.append(load_layer(Path(fs), cache))
    view = MergedView.merge(scans)
    unique = {id(i): i for i in view.elf.values()}.values()
    return ImageScan(view=view, layers=len(scans), cached_layers=sum(s.cached for s in scans),
                     seconds=time.monotonic() - t0, files=len(unique),
                     bytes=sum(i.size for i in unique))


def scan_image(paths, ref: str) -> tuple[object, ImageScan]:
    """Resolve ``ref`` in the store, make sure its layers are unpacked, scan them.
    Returns (Image, ImageScan).  Raises ImageNotFound/InvalidReference for bad input."""
    import fcntl

    from ketch.image.store import ImageStore
    from ketch.snapshot.overlay import Snapshotter

    store = ImageStore(paths)
    image = store.resolve(ref)
    snaps = Snapshotter(paths.snapshots)
    chains = list(reversed(image.chain_ids))
    if all(snaps.has_layer(c) for c in chains):
        dirs = [snaps.layer_path(c) for c in chains]
    else:
        paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)     # the snapshotter's callers serialize ensure_image
            dirs = snaps.ensure_image(store.content, image)
        finally:
            os.close(fd)
    cache_dir = paths.root / "compat"
    cache_dir.mkdir(mode=0o700, exist_ok=True)
    return image, scan_layers(dirs, chains, cache_dir)
