"""Layer blobs as streams: compression detection, diff IDs and unpacked sizes.

A layer blob is a tar, possibly gzip- or zstd-compressed (image-spec
layer.md, media-types.md).  Compression is recognised by magic bytes, not
trusted from the media type, because ``docker save`` and ``docker import``
inputs carry none.  The *diff ID* (config.md ``rootfs.diff_ids``) is the
sha256 of the uncompressed tar; the *unpacked size* is what ``docker images``
reports as SIZE for the classic overlay2 store: the sum of regular-file sizes
(each hard-linked inode once — a tar stores later links as size-0 entries)
plus the length of every symlink's target, directories not counted.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ketch.errors import LayerError

CHUNK = 1 << 20  # 1 MiB reads everywhere

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def detect_compression(head: bytes) -> str:
    """Return ``"gzip"``, ``"zstd"`` or ``"none"`` from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def layer_media_type(compression: str) -> str:
    """OCI layer media type for a compression name from :func:`detect_compression`."""
    from ketch.oci import image as oci
    return {"gzip": oci.OCI_LAYER_GZIP, "zstd": oci.OCI_LAYER_ZSTD}.get(compression, oci.OCI_LAYER)


def open_uncompressed(f: BinaryIO) -> BinaryIO:
    """Wrap a seekable or peekable binary file so that reads return the uncompressed tar.

    ``f`` must support ``peek`` (a ``BufferedReader``) or ``seek``.  Raises
    :class:`~ketch.errors.LayerError` if zstandard is needed but missing.
    """
    if hasattr(f, "peek"):
        head = f.peek(4)[:4]
    else:
        pos = f.tell()
        head = f.read(4)
        f.seek(pos)
    kind = detect_compression(head)
    if kind == "gzip":
        import gzip
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:  # pragma: no cover - it is a declared dependency
            raise LayerError("zstd-compressed layer but the zstandard module is not installed") from None
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)  # type: ignore[return-value]
    return f


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        self.hash.update(b)
        self.count += len(b)
        return b

    def readinto(self, buf) -> int:  # pragma: no cover - tarfile uses read()
        b = self.read(len(buf))
        buf[: len(b)] = b
        return len(b)


@dataclass(frozen=True)
class LayerInfo:
    """What scanning a layer yields: ``diff_id`` (``sha256:…`` of the uncompressed
    tar), ``unpacked_size`` (bytes, Docker's SIZE rule above), ``tar_size``
    (bytes of uncompressed tar) and ``compression`` (``gzip``/``zstd``/``none``)."""

    diff_id: str
    unpacked_size: int
    tar_size: int
    compression: str


def scan_layer(path: Path | str) -> LayerInfo:
    """Decompress and read the layer tar at ``path`` once; return its :class:`LayerInfo`.

    Raises :class:`~ketch.errors.LayerError` naming the file when the blob is
    not a readable (possibly compressed) tar.  Costs one decompression
    (about 50 ms for the 3.5 MB alpine layer).
    """
    with open(path, "rb", buffering=CHUNK) as raw:
        kind = detect_compression(raw.peek(4)[:4])
        try:
            return _scan(open_uncompressed(raw), kind)
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            if isinstance(e, LayerError):
                raise
            raise LayerError(f"{path}: not a valid {'' if kind == 'none' else kind + '-compressed '}tar layer: {e}") from None
        except Exception as e:  # zstandard.ZstdError and the like
            raise LayerError(f"{path}: not a valid {kind}-compressed tar layer: {e}") from None


def _scan(stream: BinaryIO, kind: str) -> LayerInfo:
    reader = _HashingReader(stream)
    size = 0
    with tarfile.open(fileobj=reader, mode="r|") as tf:  # type: ignore[arg-type]
        for m in tf:
            if m.isreg():
                size += m.size
            elif m.issym():
                size += len(m.linkname.encode("utf-8", "surrogateescape"))
    while reader.read(CHUNK):  # the end-of-archive blocks are part of the diff ID
        pass
    return LayerInfo("sha256:" + reader.hash.hexdigest(), size, reader.count, kind)
