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


class StreamScanner:
    """:func:`scan_layer` computed incrementally from the blob's bytes as they arrive.

    ``feed(chunk)`` the compressed blob in order, then ``result()`` gives the
    :class:`LayerInfo` — the same diff ID and unpacked size as
    :func:`scan_layer`, without a second pass over the file.  The tar is
    walked by its 512-byte headers only (file data is skipped, not parsed);
    PAX ``size``/``linkpath`` records and GNU long link names are honoured.
    Anything it cannot follow (a corrupt stream, an odd header) makes
    ``result()`` return None, and the caller falls back to :func:`scan_layer`,
    which reports the error properly.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._kind: str | None = None
        self._head = b""
        self._dec = None
        self.tar_size = 0
        self.size = 0
        self.failed = False
        self._done = False          # end-of-archive seen: only hash from here on
        self._buf = b""             # bytes of an incomplete header or special entry
        self._skip = 0              # data + padding bytes of the current entry still to pass
        self._collect = 0           # size of a PAX/GNU entry body to gather into _buf
        self._collect_type = b""
        self._pax: dict[bytes, bytes] = {}
        self._longlink: bytes | None = None

    # -- decompression -------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        if self.failed or not chunk:
            return
        try:
            if self._kind is None:
                self._head += chunk
                if len(self._head) < 4:
                    return
                self._kind = detect_compression(self._head)
                chunk, self._head = self._head, b""
                self._new_decoder()
            if self._kind == "none":
                self._tar(chunk)
                return
            while chunk:
                if self._dec.eof:  # a further gzip member / zstd frame follows
                    self._new_decoder()
                out = self._dec.decompress(chunk)
                self._tar(out)
                chunk = self._dec.unused_data if self._dec.eof else b""
        except Exception:  # zlib.error, zstandard.ZstdError, malformed numbers
            self.failed = True

    def _new_decoder(self) -> None:
        if self._kind == "gzip":
            import zlib
            self._dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self._kind == "zstd":
            import zstandard
            self._dec = zstandard.ZstdDecompressor().decompressobj()

    def result(self) -> LayerInfo | None:
        """The layer's :class:`LayerInfo`, or None if it could not be followed."""
        if self._kind is None and self._head:  # fewer than 4 bytes in all
            self._kind = "none"
            self._tar(self._head)
        if self.failed or self._kind is None or (self._dec is not None and not self._dec.eof):
            return None
        if not self._done:
            return None
        return LayerInfo("sha256:" + self._hash.hexdigest(), self.size, self.tar_size, self._kind)

    # -- tar headers ---------------------------------------------------------
    def _tar(self, data: bytes) -> None:
        if not data:
            return
        self._hash.update(data)
        self.tar_size += len(data)
        if self._done:
            return
        mv = memoryview(data)
        i, n = 0, len(data)
        while i < n and not self._done:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            if self._collect:
                step = min(self._collect - len(self._buf), n - i)
                self._buf += bytes(mv[i:i + step])
                i += step
                if len(self._buf) == self._collect:
                    self._special(self._collect_type, self._buf)
                    pad = -self._collect % 512
                    self._buf, self._collect = b"", 0
                    self._skip = pad
                continue
            step = min(512 - len(self._buf), n - i)
            self._buf += bytes(mv[i:i + step])
            i += step
            if len(self._buf) == 512:
                block, self._buf = self._buf, b""
                self._header(block)

    def _header(self, block: bytes) -> None:
        if block == bytes(512):
            self._done = True  # end of archive (the rest is hashed, not parsed)
            return
        size = _tar_number(block[124:136])
        typ = block[156:157]
        pax, self._pax = self._pax, {}
        longlink, self._longlink = self._longlink, None
        if typ in (b"x", b"L", b"K"):
            self._pax = pax  # a PAX record or long name applies to the entry after it
            self._longlink = longlink
            if size > (16 << 20):
                raise ValueError("oversized extended header")
            self._collect_type = typ
            self._collect = size
            if size == 0:
                self._special(typ, b"")
                self._collect = 0
            return
        if b"size" in pax:
            size = int(pax[b"size"])
        if typ in (b"0", b"\0", b"7"):
            self.size += size
        elif typ == b"2":
            link = pax.get(b"linkpath") or longlink or block[157:257].split(b"\0", 1)[0]
            self.size += len(link)
        if typ in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0  # links, devices, dirs and fifos carry no data (tarfile's rule)
        if typ == b"g":
            pass  # global PAX header: its data is skipped
        self._skip = size + (-size % 512)

    def _special(self, typ: bytes, body: bytes) -> None:
        if typ == b"x":
            self._pax = _pax_records(body)
        elif typ == b"K":
            self._longlink = body.split(b"\0", 1)[0]
        # b"L" (long name) does not change any size


def _tar_number(field: bytes) -> int:
    """A tar header number: octal ASCII (NUL/space padded) or GNU base-256."""
    if field[:1] and field[0] & 0x80:
        v = int.from_bytes(field[1:], "big")
        return v - (1 << (8 * (len(field) - 1))) if field[0] & 0x40 else v
    s = field.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def _pax_records(body: bytes) -> dict[bytes, bytes]:
    """``"%d %s=%s\\n"`` records of a PAX extended header."""
    out: dict[bytes, bytes] = {}
    i = 0
    while i < len(body):
        sp = body.index(b" ", i)
        length = int(body[i:sp])
        if length <= 0:
            raise ValueError("bad PAX record length")
        rec = body[sp + 1:i + length - 1]
        k, _, v = rec.partition(b"=")
        out[k] = v
        i += length
    return out
