"""Writing images out as archives (``docker save``): docker-archive and oci-archive.

* ``docker-archive`` (the default, as ``docker save``): the format of Docker
  before 25 and of skopeo's ``docker-archive:`` transport, which ``docker
  load``, ``podman load``, ``skopeo`` and ``ketch load`` all read::

      manifest.json        [{"Config": "<config hex>.json",
                             "RepoTags": ["docker.io/library/alpine:3.20.3"],
                             "Layers": ["<diff ID hex>.tar", …]}, …]
      <config hex>.json    the config blob, byte for byte (so the image ID is kept)
      <diff ID hex>.tar    each layer *uncompressed* (its sha256 is its diff ID,
                           checked while writing); a layer shared by several
                           images is written once

  ``RepoTags`` are canonical names, as ``podman save`` writes them: ``docker
  load`` normalizes them the same, while ``podman load`` would name a
  familiar ``alpine:3.20.3`` ``localhost/alpine:3.20.3``.

* ``oci-archive``: a tar of an OCI image layout (image-layout.md) —
  ``oci-layout``, ``index.json`` with one entry per name (annotations
  ``org.opencontainers.image.ref.name`` and ``io.containerd.image.name`` set
  to the canonical name, as containerd and ``podman save`` write them) and
  ``blobs/sha256/…`` holding the stored manifest, config and layers unchanged
  (compressed as stored).  (podman 4.3 loads only single-entry OCI
  archives: save one name per file for it.)

Arguments name images as ``docker save`` takes them: ``NAME:TAG``, an ID,
``NAME@DIGEST``, or a bare repository, which means every tag of it.  Members
are written with mtime 0, owner root and mode 0644, so saving the same images
twice gives the same bytes.

The archive is built in a temp file next to the destination and renamed into
place only when complete (a failed save leaves nothing); for standard output
it is built in a temp file and then copied, since tar headers need each
layer's uncompressed size before its bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ketch.errors import DigestMismatch, ImageError, InvalidReference, UsageError
from ketch.image.layers import CHUNK, detect_compression
from ketch.image.store import Image, ImageStore
from ketch.oci import image as oci

FORMATS = ("docker-archive", "oci-archive")
CONTAINERD_NAME = "io.containerd.image.name"
_BLOCK = 512
_RECORD = 20 * _BLOCK


def select_images(store: ImageStore, refs: list[str]) -> list[tuple[Image, list[str]]]:
    """``[(image, canonical names to record)]`` for ``docker save`` arguments, in order, each image once.

    A bare repository (no tag, no digest) that names stored images means all
    of its tags; an ID or digest reference records no name (as Docker's
    ``RepoTags: null``).  Raises :class:`ImageNotFound` for an unknown one.
    """
    from ketch.image.reference import parse
    out: dict[str, tuple[Image, list[str]]] = {}

    def add(img: Image, name: str | None) -> None:
        _, names = out.setdefault(img.manifest_digest, (img, []))
        if name and name not in names:
            names.append(name)

    for ref in refs:
        parsed = None
        with contextlib.suppress(InvalidReference):
            parsed = parse(ref, default_tag=False)
        if parsed is not None and parsed.tag is None and parsed.digest is None:
            repo = parsed.name
            tagged = [(img, n) for img in store.list() for n in img.names if n.rsplit(":", 1)[0] == repo]
            if tagged:
                for img, n in sorted(tagged, key=lambda x: x[1]):
                    add(img, n)
                continue
        img = store.resolve(ref)
        name = None
        with contextlib.suppress(InvalidReference):
            canon = str(parse(ref))
            if canon in img.names:
                name = canon
        add(img, name)
    return list(out.values())


class _TarWriter:
    """A tar stream on a seekable file: members from bytes, or from a stream of
    unknown length (the header is rewritten once the size is known)."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.names: set[str] = set()

    @staticmethod
    def _header(name: str, size: int, type_=tarfile.REGTYPE, mode: int = 0o644) -> bytes:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime, ti.type = size, mode, 0, type_
        ti.uname = ti.gname = ""
        return ti.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")

    def _pad(self, n: int) -> None:
        if n % _BLOCK:
            self.f.write(b"\0" * (_BLOCK - n % _BLOCK))

    def add_dir(self, name: str) -> None:
        if name not in self.names:
            self.names.add(name)
            self.f.write(self._header(name.rstrip("/") + "/", 0, tarfile.DIRTYPE, 0o755))

    def add_bytes(self, name: str, data: bytes) -> None:
        self.names.add(name)
        self.f.write(self._header(name, len(data)))
        self.f.write(data)
        self._pad(len(data))

    def add_stream(self, name: str, chunks: Iterator[bytes]) -> int:
        """Write member ``name`` from ``chunks``; returns its size."""
        self.names.add(name)
        start = self.f.tell()
        head = self._header(name, 0)
        self.f.write(head)
        n = 0
        for b in chunks:
            self.f.write(b)
            n += len(b)
        end = self.f.tell()
        real = self._header(name, n)
        if len(real) != len(head):  # pragma: no cover - GNU headers of a short name are one block
            raise ImageError(f"tar header of {name} changed length")
        self.f.seek(start)
        self.f.write(real)
        self.f.seek(end)
        self._pad(n)
        return n

    def close(self) -> None:
        self.f.write(b"\0" * (2 * _BLOCK))
        pos = self.f.tell()
        if pos % _RECORD:
            self.f.write(b"\0" * (_RECORD - pos % _RECORD))


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                return
            yield b


def _uncompressed_chunks(path: Path, diff_id: str, label: str) -> Iterator[bytes]:
    """The layer blob at ``path`` decompressed (gzip, zstd or none), checked against ``diff_id``.

    Corrupt or truncated compressed data is an :class:`ImageError` naming the layer."""
    try:
        yield from _decompress(path, diff_id, label)
    except (OSError, EOFError, ValueError) as e:  # zlib.error and zstd.ZstdError are among these
        raise ImageError(f"layer {label}: cannot decompress: {e}") from None
    except Exception as e:
        if type(e).__name__ in ("error", "ZstdError"):
            raise ImageError(f"layer {label}: cannot decompress: {e}") from None
        raise


def _decompress(path: Path, diff_id: str, label: str) -> Iterator[bytes]:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        kind = detect_compression(f.read(4))
        f.seek(0)
        if kind == "gzip":
            import zlib
            d = zlib.decompressobj(31)
            while True:
                b = f.read(CHUNK)
                if not b:
                    break
                while b:
                    if d.eof:  # another gzip member follows (zero padding ends the stream)
                        if not b.strip(b"\0"):
                            break
                        d = zlib.decompressobj(31)
                    out = d.decompress(b)
                    if out:
                        h.update(out)
                        yield out
                    b = d.unused_data if d.eof else b""
            if not d.eof:
                raise ImageError(f"layer {label}: truncated gzip data")
        elif kind == "zstd":
            import zstandard
            r = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            while True:
                out = r.read(CHUNK)
                if not out:
                    break
                h.update(out)
                yield out
        else:
            while True:
                out = f.read(CHUNK)
                if not out:
                    break
                h.update(out)
                yield out
    got = "sha256:" + h.hexdigest()
    if got != diff_id:
        raise DigestMismatch(f"layer {label}: uncompressed content has digest {got}, the config says {diff_id}")


def _write_docker(tw: _TarWriter, store: ImageStore, images: list[tuple[Image, list[str]]]) -> None:
    entries = []
    for img, names in images:
        cfg_name = img.id[7:] + ".json"
        if cfg_name not in tw.names:
            tw.add_bytes(cfg_name, store.content.read_bytes(img.id))
        diff_ids = list(img.config.diff_ids)
        if len(diff_ids) != len(img.manifest.layers):
            raise ImageError(f"image {img.short_id}: {len(img.manifest.layers)} layers but "
                             f"{len(diff_ids)} diff IDs")
        layers = []
        for desc, diff_id in zip(img.manifest.layers, diff_ids):
            member = oci.check_digest(diff_id)[7:] + ".tar"
            if member not in tw.names:
                tw.add_stream(member, _uncompressed_chunks(store.content.path(desc.digest), diff_id, desc.digest))
            layers.append(member)
        entries.append({"Config": cfg_name, "RepoTags": list(names) or None, "Layers": layers})
    tw.add_bytes("manifest.json", json.dumps(entries, separators=(",", ":")).encode())


def _write_oci(tw: _TarWriter, store: ImageStore, images: list[tuple[Image, list[str]]]) -> None:
    tw.add_bytes("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
    tw.add_dir("blobs")
    tw.add_dir("blobs/sha256")
    index = []
    for img, names in images:
        msize = store.content.size(img.manifest_digest)
        for desc in (*img.manifest.layers, img.manifest.config):
            member = "blobs/sha256/" + desc.digest[7:]
            if member not in tw.names:
                if not store.content.has(desc.digest, desc.size):
                    raise ImageError(f"image {img.short_id} is incomplete: blob {desc.digest} missing")
                tw.add_stream(member, _file_chunks(store.content.path(desc.digest)))
        member = "blobs/sha256/" + img.manifest_digest[7:]
        if member not in tw.names:
            tw.add_bytes(member, store.content.read_bytes(img.manifest_digest))
        for name in names or [None]:
            entry = {"mediaType": img.manifest.mediaType or oci.OCI_MANIFEST, "digest": img.manifest_digest,
                     "size": msize}
            if name:
                entry["annotations"] = {oci.ANNOTATION_REF_NAME: name, CONTAINERD_NAME: name}
            index.append(entry)
    tw.add_bytes("index.json", json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                                           "manifests": index}, separators=(",", ":")).encode())


def save(store: ImageStore, refs: list[str], output: str | Path | BinaryIO, fmt: str = "docker-archive",
         *, tmpdir: str | Path | None = None) -> list[tuple[Image, list[str]]]:
    """``docker save``: write the images ``refs`` to ``output`` (a path, or a binary stream such as stdout).

    ``fmt`` is ``docker-archive`` or ``oci-archive``.  A path is replaced
    atomically (temp file in its directory, fsync, rename); a stream gets the
    archive once it is complete (built in ``tmpdir``, default ``$TMPDIR`` or
    /var/tmp).  Returns what was saved.  Raises :class:`UsageError` for an
    unknown format, :class:`ImageNotFound` for an unknown image,
    :class:`DigestMismatch` if a stored layer does not match its diff ID.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not refs:
        raise UsageError("save needs at least one image")
    images = select_images(store, refs)
    to_path = isinstance(output, (str, Path))
    if to_path:
        dest = Path(os.path.abspath(output))
        if dest.is_dir():
            raise ImageError(f"{output}: is a directory")
        where = dest.parent
        if not where.is_dir():
            raise ImageError(f"{output}: no such directory {where}")
    else:
        where = Path(tmpdir or os.environ.get("TMPDIR") or "/var/tmp")
    fd, tmp = tempfile.mkstemp(dir=where, prefix=".ketch-save-")
    try:
        with os.fdopen(fd, "w+b") as f:
            tw = _TarWriter(f)
            (_write_docker if fmt == "docker-archive" else _write_oci)(tw, store, images)
            tw.close()
            f.flush()
            if to_path:
                os.fsync(f.fileno())
                os.chmod(tmp, 0o644 & ~_umask())
                os.replace(tmp, dest)
            else:
                f.seek(0)
                import shutil
                shutil.copyfileobj(f, output, CHUNK)  # type: ignore[arg-type]
                output.flush()  # type: ignore[union-attr]
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return images


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


__all__ = ["FORMATS", "save", "select_images"]
