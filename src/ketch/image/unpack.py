"""Apply one OCI image layer (a tar changeset) to a directory, safely and fast.

The layer format is the OCI image-spec ``layer.md`` ("Image Layer Filesystem
Changeset"): a tar archive, optionally gzip/zstd (and, for old Docker images,
xz/bzip2) compressed, whose entries add or replace files and whose *whiteouts*
delete files of the layers below.  The result is written the way an overlayfs
*lower directory* expects it (containerd's "convert whiteout" approach,
``Documentation/filesystems/overlayfs.rst`` "whiteouts and opaque
directories"):

* ``DIR/.wh.NAME`` becomes a character device 0/0 named ``DIR/NAME``;
* ``DIR/.wh..wh..opq`` becomes the xattr ``trusted.overlay.opaque="y"`` on ``DIR``;
* other ``.wh..wh.*`` names (AUFS metadata) are skipped.

Rules kept from layer.md: whiteouts apply only to the layers below (a name
present in this layer stays; a directory that also carries a whiteout of its
own name is made opaque); a later entry replaces an earlier one of the same
name (file⇄directory included; two directories merge); a hard link whose
target lives in a lower layer is resolved by copying the target up from the
parent snapshots first (containerd's ``WithParents``).

Kept from the tar: regular files, directories, hard links, symlinks, char and
block devices, FIFOs, numeric owners (uid/gid; names are ignored), permission
bits including setuid/setgid/sticky (applied *after* chown, which clears
them), xattrs from PAX ``SCHILY.xattr.*`` / ``LIBARCHIVE.xattr.*`` records
(``security.capability`` included, set after chown, which drops it), and
mtimes (directories at the end, once their contents are written; symlinks
with ``utimensat(AT_SYMLINK_NOFOLLOW)``).

Safety: every path is resolved one component at a time with
``openat(O_NOFOLLOW|O_DIRECTORY)`` from a descriptor of the destination root,
so nothing is ever written through a symlink, whether it came from the layer
itself or not.  An entry with an absolute name, a ``..`` component, a parent
that is a symlink or not a directory, or a hard link that escapes makes the
whole layer fail with :class:`~ketch.errors.LayerError` naming the entry, and
the partial directory is removed.

Speed: decompression (``zlib``/``zstandard``/``lzma``/``bz2``, all of which
release the GIL) and the sha256 of the uncompressed stream run in one worker
thread; the calling thread parses 512-byte tar headers itself (ustar, PAX,
GNU long names, base-256 numbers) and writes data with ``os.write`` straight
from the decompressed buffers, caching directory descriptors so most entries
cost ``open``/``write``/``close`` plus only the metadata calls that change
something.
"""

from __future__ import annotations

import base64
import bz2
import errno
import hashlib
import lzma
import os
import queue
import shutil
import stat
import struct
import threading
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator
from urllib.parse import unquote_to_bytes

from ketch.errors import DigestMismatch, LayerError

__all__ = ["apply_layer", "detect_compression", "WHITEOUT_PREFIX", "OPAQUE_WHITEOUT",
           "OPAQUE_XATTR"]

WHITEOUT_PREFIX = b".wh."
OPAQUE_WHITEOUT = b".wh..wh..opq"
WHITEOUT_META_PREFIX = b".wh..wh."
OPAQUE_XATTR = b"trusted.overlay.opaque"
_OVERLAY_XATTR_PREFIX = b"trusted.overlay."

BLOCK = 512
_IN_CHUNK = 256 * 1024          # compressed bytes read per call
_OUT_MAX = 2 * 1024 * 1024      # upper bound of one decompressed chunk
_QUEUE_DEPTH = 16               # chunks buffered between the threads (≤ 32 MiB)

_ZERO_BLOCK = bytes(BLOCK)
_MAGIC_MAX = 10                 # bytes detect_compression() looks at (bzip2's)
# ustar header (POSIX pax "ustar Interchange Format"); GNU uses the same offsets.
_HDR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")
_USTAR_MAGIC = b"ustar\x00"

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

# Typeflags (POSIX ustar, GNU extensions).
_REG = frozenset({b"0", b"\x00", b"7"})
_HEADER_ONLY = frozenset({b"1", b"2", b"3", b"4", b"5", b"6"})  # never followed by data


# ---------------------------------------------------------------------------------
# Decompression + digest, in a worker thread
# ---------------------------------------------------------------------------------

def detect_compression(head: bytes) -> str:
    """Name the compression of a layer from its first bytes (magic numbers).

    Returns ``"gzip"`` (1f 8b), ``"zstd"`` (28 b5 2f fd), ``"xz"``
    (fd 37 7a 58 5a 00), ``"bzip2"`` ("BZh" + level + block magic) or ``"tar"``
    for anything else (an uncompressed tar).  The media type is not trusted:
    registries and tools mislabel layers.
    """
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return "bzip2"
    return "tar"


def _gunzip(read: Callable[[int], bytes], buf: bytes) -> Iterator[bytes]:
    """Inflate a gzip stream of one or more members (RFC 1952); trailing zeros are ignored.

    ``read`` may return fewer bytes than asked (a pipe, a socket): only ``b""``
    ends the input, and where a read splits the stream changes nothing.  Zeros
    where a member would start are padding: only zeros may follow them.
    """
    d = zlib.decompressobj(31)
    fed = False         # the current member has been given input
    padding = False     # zeros seen after the last member
    while True:
        if not buf:
            buf = read(_IN_CHUNK)
            if not buf:
                break
        if not fed and (padding or not buf[0]):
            if buf.strip(b"\x00"):
                raise LayerError("corrupt gzip stream: data after the trailing zeros")
            padding, buf = True, b""
            continue
        fed = True
        try:
            out = d.decompress(buf, _OUT_MAX)
        except zlib.error as e:
            raise LayerError(f"corrupt gzip stream: {e}") from None
        if out:
            yield out
        if d.eof:
            buf = d.unused_data
            d = zlib.decompressobj(31)
            fed = False
        else:
            buf = d.unconsumed_tail
    if fed:
        try:
            tail = d.flush()
        except zlib.error as e:
            raise LayerError(f"corrupt gzip stream: {e}") from None
        if tail:
            yield tail
        if not d.eof:
            raise LayerError("truncated gzip stream")


def _unzstd(read: Callable[[int], bytes], buf: bytes) -> Iterator[bytes]:
    """Decompress a zstd stream (RFC 8878) of one or more frames.

    Input goes in 8 KiB slices, which bounds one call's output (a zstd block
    expands at most 32768×, so ≤ 256 MiB even for a hostile stream); outputs
    are gathered into ~1 MiB chunks.  A stream that ends inside a frame is
    reported as truncated.
    """
    import zstandard  # a declared dependency; imported only when a zstd layer shows up

    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    fed = False
    pending: list[bytes] = []
    have = 0
    try:
        while True:
            if not buf:
                buf = read(_IN_CHUNK)
                if not buf:
                    break
            mv = memoryview(buf)
            buf = b""
            for i in range(0, len(mv), 8192):
                piece = mv[i:i + 8192]
                while piece:
                    out = d.decompress(piece)
                    fed = True
                    if out:
                        pending.append(out)
                        have += len(out)
                    if d.eof:  # next frame (or trailing bytes) follows
                        piece = d.unused_data
                        d = dctx.decompressobj()
                        fed = False
                    else:
                        piece = b""
                if have >= (1 << 20):
                    yield b"".join(pending)
                    pending, have = [], 0
    except zstandard.ZstdError as e:
        raise LayerError(f"corrupt zstd stream: {e}") from None
    if pending:
        yield b"".join(pending)
    if fed:
        raise LayerError("truncated zstd stream")


def _unlzma(read: Callable[[int], bytes], buf: bytes, make) -> Iterator[bytes]:
    """Decompress xz or bzip2 (objects with ``decompress(data, max_length)``/``needs_input``).

    Concatenated streams are decompressed one after the other; zeros where a
    stream would start are trailing padding (only zeros may follow), however
    the reads split them.
    """
    d = make()
    started = False     # the current stream has been given input
    padding = False     # zeros seen after the last stream
    while True:
        if not buf and (not started or d.needs_input):
            buf = read(_IN_CHUNK)
            if not buf:
                if started:
                    raise LayerError("truncated compressed stream")
                return
        if not started and (padding or not buf[0]):
            if buf.strip(b"\x00"):
                raise LayerError("corrupt compressed stream: data after the trailing zeros")
            padding, buf = True, b""
            continue
        started = True
        try:
            out = d.decompress(buf, _OUT_MAX)
        except (lzma.LZMAError, OSError, EOFError) as e:
            raise LayerError(f"corrupt compressed stream: {e}") from None
        buf = b""
        if out:
            yield out
        if d.eof:
            buf = d.unused_data
            d = make()
            started = False


class _Stream:
    """Uncompressed bytes of a layer, produced by a worker thread.

    The worker reads the (possibly compressed) input, decompresses it,
    feeds every uncompressed byte to sha256 and hands chunks to the caller
    through a bounded queue.  Every C call on the worker's path releases the
    GIL, so it overlaps with header parsing and file writing in the caller.
    """

    def __init__(self, f: BinaryIO):
        self._f = f
        # A pipe or socket may return fewer bytes than asked: read until the
        # longest magic number is in hand (or the stream ends) before detecting.
        first = f.read(_IN_CHUNK)
        while first and len(first) < _MAGIC_MAX:
            more = f.read(_IN_CHUNK)
            if not more:
                break
            first += more
        self.compression = detect_compression(first)
        self._first = first
        self.sha256 = hashlib.sha256()
        self.size = 0                       # uncompressed bytes produced so far
        self._q: queue.Queue = queue.Queue(_QUEUE_DEPTH)
        self._stop = False
        self._done = False
        self._thread = threading.Thread(target=self._run, name="ketch-unpack", daemon=True)
        self._thread.start()

    def _chunks(self) -> Iterator[bytes]:
        read, first, kind = self._f.read, self._first, self.compression
        self._first = b""
        if kind == "gzip":
            yield from _gunzip(read, first)
        elif kind == "zstd":
            yield from _unzstd(read, first)
        elif kind == "xz":
            yield from _unlzma(read, first, lzma.LZMADecompressor)
        elif kind == "bzip2":
            yield from _unlzma(read, first, bz2.BZ2Decompressor)
        else:
            chunk = first
            while chunk:
                yield chunk
                chunk = read(1 << 20)

    def _run(self) -> None:
        h, q = self.sha256, self._q
        try:
            for chunk in self._chunks():
                if self._stop:
                    return
                h.update(chunk)
                self.size += len(chunk)
                q.put(chunk)
            q.put(None)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    def get(self) -> bytes:
        """Next uncompressed chunk; ``b""`` at the end.  Re-raises the worker's error."""
        if self._done:
            return b""
        item = self._q.get()
        if item is None:
            self._done = True
            return b""
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item

    def drain(self) -> None:
        """Consume (and so digest) the rest of the stream: trailing blocks count in the diff ID.
        Returns once the worker thread has ended."""
        while self.get():
            pass
        self._thread.join()

    def close(self) -> None:
        """Stop the worker, unblocking it if it waits on a full queue."""
        self._stop = True
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass


# ---------------------------------------------------------------------------------
# Tar headers
# ---------------------------------------------------------------------------------

class _Entry:
    """One tar member after PAX/GNU extensions are folded in.  Names are raw bytes."""

    __slots__ = ("name", "type", "size", "mode", "uid", "gid", "mtime_ns", "atime_ns",
                 "linkname", "devmajor", "devminor", "xattrs")

    def __repr__(self) -> str:  # for debugging and test failures
        return f"_Entry({self.name!r}, type={self.type!r}, size={self.size})"


def _nts(b: bytes) -> bytes:
    """A NUL-terminated string field."""
    i = b.find(b"\x00")
    return b if i < 0 else b[:i]


def _num(b: bytes) -> int:
    """A numeric header field: octal text (NUL/space padded) or GNU base-256."""
    if b and b[0] & 0x80:
        if b[0] == 0xFF:  # negative base-256: only mtimes before 1970 can be negative
            return int.from_bytes(b, "big", signed=True)
        return int.from_bytes(bytes([b[0] & 0x7F]) + b[1:], "big")
    s = _nts(b).strip()
    return int(s, 8) if s else 0


def _pax_time_ns(v: bytes) -> int:
    """A PAX time (``[-]seconds[.fraction]``) as integer nanoseconds, exactly."""
    s = v.decode("ascii")
    neg = s.startswith("-")
    if neg:
        s = s[1:]
    sec, _, frac = s.partition(".")
    ns = int(sec or "0") * 1_000_000_000 + int((frac + "000000000")[:9] or "0")
    return -ns if neg else ns


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX extended header records ``"<len> <key>=<value>\\n"`` (values are raw bytes)."""
    out: dict[bytes, bytes] = {}
    pos, n = 0, len(data)
    while pos < n:
        if data[pos] == 0:  # NUL padding after the last record
            break
        sp = data.find(b" ", pos)
        if sp < 0:
            raise LayerError("corrupt PAX header: record without length")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise LayerError("corrupt PAX header: bad record length") from None
        end = pos + length
        if length <= 0 or end > n or data[end - 1:end] != b"\n":
            raise LayerError("corrupt PAX header: bad record length")
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if not eq:
            raise LayerError("corrupt PAX header: record without '='")
        out[key] = value
        pos = end
    return out


class _TarReader:
    """Pulls tar members out of a :class:`_Stream` without copying file data twice.

    ``next()`` returns the next member (skipping what the caller left of the
    previous one) or ``None`` at the end-of-archive marker or at a clean end of
    the stream; ``copy_to(fd, n)`` writes the current member's data.
    """

    def __init__(self, stream: _Stream):
        self._stream = stream
        self._buf = b""
        self._mv = memoryview(self._buf)
        self._pos = 0
        self._left = 0      # data bytes of the current member not consumed yet
        self._pad = 0       # padding after them

    # -- buffer ---------------------------------------------------------------------
    def _fill(self) -> bool:
        """Replace an exhausted buffer with the next chunk; False at end of stream."""
        chunk = self._stream.get()
        if not chunk:
            return False
        self._buf = chunk
        self._mv = memoryview(chunk)
        self._pos = 0
        return True

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (``b""`` if the stream ends before the first one)."""
        pos = self._pos
        end = pos + n
        if end <= len(self._buf):
            self._pos = end
            return self._buf[pos:end]
        parts = [self._buf[pos:]]
        have = len(parts[0])
        self._pos = len(self._buf)
        while have < n:
            if not self._fill():
                if have == 0:
                    return b""
                raise LayerError("truncated tar stream")
            take = min(n - have, len(self._buf))
            parts.append(self._buf[:take])
            self._pos = take
            have += take
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    raise LayerError("truncated tar stream")
                continue
            k = n if n < avail else avail
            self._pos += k
            n -= k

    def copy_to(self, fd: int, n: int) -> None:
        """Write the next ``n`` data bytes of the current member to ``fd``."""
        self._left -= n
        write = os.write
        while n:
            pos = self._pos
            avail = len(self._buf) - pos
            if not avail:
                if not self._fill():
                    raise LayerError("truncated tar stream")
                continue
            k = n if n < avail else avail
            w = write(fd, self._mv[pos:pos + k])
            self._pos = pos + w
            n -= w

    def read_data(self, n: int) -> bytes:
        """The next ``n`` data bytes of the current member (for small payloads)."""
        self._left -= n
        data = self._read(n)
        if len(data) != n:
            raise LayerError("truncated tar stream")
        return data

    # -- headers --------------------------------------------------------------------
    def _member_data(self, size: int) -> bytes:
        data = self._read(size)
        if len(data) != size:
            raise LayerError("truncated tar stream")
        self._skip(-size % BLOCK)
        return data

    def next(self) -> _Entry | None:
        if self._left or self._pad:
            self._skip(self._left + self._pad)
            self._left = self._pad = 0
        pax: dict[bytes, bytes] | None = None
        longname = longlink = None
        while True:
            hdr = self._read(BLOCK)
            if not hdr or hdr == _ZERO_BLOCK:
                return None
            if len(hdr) != BLOCK:
                raise LayerError("truncated tar stream")
            (name, mode, uid, gid, size, mtime, chksum, typ, linkname, magic, _version,
             _uname, _gname, devmajor, devminor, prefix) = _HDR.unpack(hdr)
            try:
                want = _num(chksum)
                size_n = _num(size)
            except ValueError:
                raise LayerError("corrupt tar header (not a tar archive?)") from None
            got = sum(hdr) - sum(hdr[148:156]) + 8 * 32
            if got != want:
                signed = sum(struct.unpack("148b8x356b", hdr)) + 8 * 32
                if signed != want:
                    raise LayerError("corrupt tar header: checksum mismatch (not a tar archive?)")
            if typ == b"x":
                recs = _parse_pax(self._member_data(size_n))
                pax = recs if pax is None else {**pax, **recs}
                continue
            if typ == b"g":
                # Global PAX records (git archive's commit id …) are ignored, as
                # containerd and Docker do: none of them may rename or resize members.
                _parse_pax(self._member_data(size_n))
                continue
            if typ == b"L":
                longname = _nts(self._member_data(size_n))
                continue
            if typ == b"K":
                longlink = _nts(self._member_data(size_n))
                continue
            break

        e = _Entry()
        if longname is not None:
            e.name = longname
        else:
            e.name = _nts(name)
            if magic == _USTAR_MAGIC and prefix[0]:
                e.name = _nts(prefix) + b"/" + e.name
        e.type = typ
        e.linkname = longlink if longlink is not None else _nts(linkname)
        try:
            e.mode = _num(mode) & 0o7777
            e.uid = _num(uid)
            e.gid = _num(gid)
            e.mtime_ns = _num(mtime) * 1_000_000_000
            if typ == b"3" or typ == b"4":
                e.devmajor = _num(devmajor)
                e.devminor = _num(devminor)
            else:
                e.devmajor = e.devminor = 0
        except ValueError:
            raise LayerError(f"corrupt tar header for {e.name!r}") from None
        e.size = size_n
        e.atime_ns = None
        e.xattrs = None
        if pax:
            self._apply_pax(e, pax)
        if typ in _HEADER_ONLY:
            datasize = 0
        else:
            datasize = e.size
        self._left = datasize
        self._pad = -datasize % BLOCK
        return e

    @staticmethod
    def _apply_pax(e: _Entry, pax: dict[bytes, bytes]) -> None:
        try:
            for k, v in pax.items():
                if k == b"path":
                    e.name = v
                elif k == b"linkpath":
                    e.linkname = v
                elif k == b"size":
                    e.size = int(v)
                elif k == b"uid":
                    e.uid = int(v)
                elif k == b"gid":
                    e.gid = int(v)
                elif k == b"mtime":
                    e.mtime_ns = _pax_time_ns(v)
                elif k == b"atime":
                    e.atime_ns = _pax_time_ns(v)
                elif k.startswith(b"SCHILY.xattr."):
                    if e.xattrs is None:
                        e.xattrs = {}
                    e.xattrs[k[13:]] = v
                elif k.startswith(b"LIBARCHIVE.xattr."):
                    if e.xattrs is None:
                        e.xattrs = {}
                    e.xattrs[unquote_to_bytes(k[17:])] = base64.b64decode(v + b"==")
                elif k == b"SCHILY.devmajor":
                    e.devmajor = int(v)
                elif k == b"SCHILY.devminor":
                    e.devminor = int(v)
                elif k.startswith(b"GNU.sparse."):
                    raise LayerError(f"{_show(e.name)}: sparse files are not supported")
        except ValueError:
            raise LayerError(f"corrupt PAX header for {_show(e.name)}") from None
        if e.size < 0:
            raise LayerError(f"corrupt PAX header for {_show(e.name)}: negative size")


# ---------------------------------------------------------------------------------
# Writing the entries
# ---------------------------------------------------------------------------------

def _show(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))


def _clean(name: bytes, what: str = "entry") -> bytes:
    """Normalize a member name to ``a/b/c`` (``b""`` = the root), refusing escapes."""
    if name.startswith(b"/"):
        raise LayerError(f"layer {what} {_show(name)}: absolute path")
    if b"\x00" in name:
        raise LayerError(f"layer {what} {_show(name)}: NUL byte in name")
    parts = [p for p in name.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise LayerError(f"layer {what} {_show(name)}: '..' component would escape the layer")
    return b"/".join(parts)


def _read_umask() -> int:
    """The process umask without changing it (``Umask:`` in /proc/self/status, Linux ≥ 4.7)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


class _Meta:
    """Deferred metadata of a directory: applied after everything below it is written."""

    __slots__ = ("mode", "uid", "gid", "atime_ns", "mtime_ns", "xattrs")

    def __init__(self, mode: int, uid: int, gid: int, atime_ns: int | None,
                 mtime_ns: int | None, xattrs: dict[bytes, bytes] | None):
        self.mode, self.uid, self.gid = mode, uid, gid
        self.atime_ns, self.mtime_ns, self.xattrs = atime_ns, mtime_ns, xattrs


class _Writer:
    """Applies entries under an open root directory descriptor; see the module docstring."""

    def __init__(self, root_fd: int, parents: list[Path]):
        self._root_fd = root_fd
        self._fds: dict[bytes, int] = {b"": root_fd}
        soft = 1024
        try:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            pass
        self._max_fds = max(16, min(4096, (soft if soft > 0 else 1024) // 4))
        self._dirs: dict[bytes, _Meta] = {}
        self._parents = [os.fsencode(p) for p in parents]
        self._root = os.geteuid() == 0
        self._uid, self._gid = os.geteuid(), os.getegid()
        self._umask = _read_umask()
        self.entries = 0

    # -- directory descriptors -----------------------------------------------------
    def _dir(self, rel: bytes, create: bool = True) -> int | None:
        """A descriptor of directory ``rel`` resolved without following symlinks.

        Missing directories are created (metadata copied from the parent
        snapshots when they hold the same directory, as overlayfs copy-up
        does) unless ``create`` is false, in which case ``None`` is returned.
        """
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        parent, _, base = rel.rpartition(b"/")
        pfd = self._dir(parent, create)
        if pfd is None:
            return None
        try:
            fd = os.open(base, _O_DIR, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                return None
            self._mkdir_implicit(pfd, rel, base)
            fd = os.open(base, _O_DIR, dir_fd=pfd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            st = os.lstat(base, dir_fd=pfd)
            if stat.S_ISLNK(st.st_mode):
                raise LayerError(f"{_show(rel)} is a symlink: refusing to write through it") from None
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                if not create:
                    return None  # whited out in this layer
                # Deleted (lower) and recreated here without its own entry: an opaque dir.
                os.unlink(base, dir_fd=pfd)
                os.mkdir(base, 0o700, dir_fd=pfd)
                self._dirs[rel] = _Meta(0o755, 0, 0, None, None, None)
                fd = os.open(base, _O_DIR, dir_fd=pfd)
                self._fds[rel] = fd
                os.setxattr(fd, OPAQUE_XATTR, b"y")
                return fd
            raise LayerError(f"{_show(rel)} is not a directory") from None
        self._fds[rel] = fd
        return fd

    def _mkdir_implicit(self, pfd: int, rel: bytes, base: bytes) -> None:
        os.mkdir(base, 0o700, dir_fd=pfd)
        found = self._lower_lookup(rel)
        if found is not None and stat.S_ISDIR(found[1].st_mode):
            st = found[1]
            self._dirs[rel] = _Meta(st.st_mode & 0o7777, st.st_uid, st.st_gid,
                                    st.st_atime_ns, st.st_mtime_ns, None)
        else:
            self._dirs[rel] = _Meta(0o755, 0, 0, None, None, None)

    def _forget(self, rel: bytes) -> None:
        """Drop cached descriptors and deferred metadata of ``rel`` and everything below it."""
        prefix = rel + b"/"
        for k in [k for k in self._fds if k == rel or k.startswith(prefix)]:
            os.close(self._fds.pop(k))
        for k in [k for k in self._dirs if k == rel or k.startswith(prefix)]:
            del self._dirs[k]

    def trim_cache(self) -> None:
        if len(self._fds) > self._max_fds:
            self.close_fds()

    def close_fds(self) -> None:
        for k, fd in self._fds.items():
            if k:
                os.close(fd)
        self._fds = {b"": self._root_fd}

    # -- replacing -----------------------------------------------------------------
    def _remove(self, pfd: int, rel: bytes, base: bytes) -> os.stat_result:
        """Remove whatever is at ``rel`` (a later entry replaces an earlier one)."""
        st = os.lstat(base, dir_fd=pfd)
        if stat.S_ISDIR(st.st_mode):
            self._forget(rel)
            shutil.rmtree(base, dir_fd=pfd)
        else:
            os.unlink(base, dir_fd=pfd)
        return st

    # -- lower layers --------------------------------------------------------------
    def _lower_lookup(self, rel: bytes) -> tuple[bytes, os.stat_result] | None:
        """Find ``rel`` in the merged view of the parent snapshots (top-most first).

        Honours whiteout devices and opaque directories; never follows a
        symlink in the path (lower snapshots are immutable, so lstat of each
        prefix is race-free).  Returns ``(path, lstat)`` or ``None``.
        """
        if not rel:
            for p in self._parents:
                return p, os.lstat(p)
            return None
        comps = rel.split(b"/")
        last = len(comps) - 1
        for root in self._parents:
            path = root
            for i, c in enumerate(comps):
                path = path + b"/" + c
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    break  # not in this layer: look further down
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    return None  # whited out
                if i == last:
                    return path, st
                if not stat.S_ISDIR(st.st_mode):
                    return None  # through a symlink or a file: not resolvable
                try:
                    if os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y":
                        # Layers further down are hidden below this directory.
                        return self._lookup_in(path, comps[i + 1:])
                except OSError:
                    pass
        return None

    @staticmethod
    def _lookup_in(path: bytes, comps: list[bytes]) -> tuple[bytes, os.stat_result] | None:
        for j, c in enumerate(comps):
            path = path + b"/" + c
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return None
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None
            if j == len(comps) - 1:
                return path, st
            if not stat.S_ISDIR(st.st_mode):
                return None
        return None

    def _copy_up(self, rel: bytes, shown: str) -> None:
        """Copy ``rel`` from the parent snapshots into this layer (hard-link target)."""
        found = self._lower_lookup(rel)
        if found is None:
            raise LayerError(f"hard link {shown}: target {_show(rel)} is in neither this "
                             "layer nor its parents")
        src, st = found
        parent, _, base = rel.rpartition(b"/")
        pfd = self._dir(parent)
        mode = st.st_mode
        if stat.S_ISREG(mode):
            sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                dfd = os.open(base, _O_NEWFILE, 0o600, dir_fd=pfd)
                try:
                    left = st.st_size
                    while left > 0:
                        n = os.copy_file_range(sfd, dfd, left)
                        if n == 0:
                            break
                        left -= n
                    xattrs = {}
                    for k in os.listxattr(sfd):
                        kb = os.fsencode(k)
                        if not kb.startswith(_OVERLAY_XATTR_PREFIX):
                            xattrs[kb] = os.getxattr(sfd, k)
                    self._meta_fd(dfd, mode & 0o7777, st.st_uid, st.st_gid, xattrs,
                                  st.st_atime_ns, st.st_mtime_ns, fresh=False)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), base, dir_fd=pfd)
            self._meta_path(pfd, base, None, st.st_uid, st.st_gid, None,
                            st.st_atime_ns, st.st_mtime_ns)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            os.mknod(base, stat.S_IFMT(mode) | 0o600, st.st_rdev, dir_fd=pfd)
            self._meta_path(pfd, base, mode & 0o7777, st.st_uid, st.st_gid, None,
                            st.st_atime_ns, st.st_mtime_ns)
        else:
            raise LayerError(f"hard link {shown}: target {_show(rel)} is a directory")

    # -- metadata ------------------------------------------------------------------
    def _set_xattrs(self, target, xattrs: dict[bytes, bytes], follow: bool = True) -> None:
        for k, v in xattrs.items():
            if k.startswith(_OVERLAY_XATTR_PREFIX):
                continue  # overlayfs' own namespace: a layer must not forge opaque/redirects
            try:
                os.setxattr(target, k, v, follow_symlinks=follow)
            except OSError as e:
                if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    continue
                if e.errno == errno.EPERM and not self._root:
                    continue
                raise

    def _meta_fd(self, fd: int, mode: int, uid: int, gid: int,
                 xattrs: dict[bytes, bytes] | None, atime_ns: int | None, mtime_ns: int,
                 fresh: bool = True) -> None:
        """Owner, mode, xattrs, times of an open file; chown first (it clears setuid and caps)."""
        chowned = False
        if self._root and (uid != self._uid or gid != self._gid):
            os.fchown(fd, uid, gid)
            chowned = True
        # A fresh file was created with ``mode & 0o777 & ~umask``.
        if not fresh or chowned or mode & 0o7000 or mode & self._umask:
            os.fchmod(fd, mode)
        if xattrs:
            self._set_xattrs(fd, xattrs)
        os.utime(fd, ns=(mtime_ns if atime_ns is None else atime_ns, mtime_ns))

    def _meta_path(self, pfd: int, base: bytes, mode: int | None, uid: int, gid: int,
                   xattrs: dict[bytes, bytes] | None, atime_ns: int | None,
                   mtime_ns: int) -> None:
        """Same for a symlink or device node we just made (never opened: no device I/O)."""
        if self._root and (uid != self._uid or gid != self._gid):
            os.chown(base, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if mode is not None:
            # ``base`` was created by us a moment ago and is not a symlink.
            os.chmod(base, mode, dir_fd=pfd)
        if xattrs:
            self._set_xattrs(f"/proc/self/fd/{pfd}/".encode() + base, xattrs, follow=False)
        os.utime(base, ns=(mtime_ns if atime_ns is None else atime_ns, mtime_ns),
                 dir_fd=pfd, follow_symlinks=False)

    # -- entries -------------------------------------------------------------------
    def apply(self, e: _Entry, reader: _TarReader) -> None:
        typ = e.type
        if typ in _REG and e.name.endswith(b"/"):
            typ = b"5"  # pre-POSIX tar: a directory is a "file" whose name ends in '/'
        rel = _clean(e.name)
        self.entries += 1
        parent, _, base = rel.rpartition(b"/")

        if rel.startswith(WHITEOUT_META_PREFIX) and rel != OPAQUE_WHITEOUT:
            return  # AUFS metadata at the root (.wh..wh.plnk/…, .wh..wh.aufs): not content
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(rel, parent, base)
            return
        if not rel:
            if typ != b"5" and typ != b"D":
                raise LayerError(f"layer entry {_show(e.name)}: the root must be a directory")
            self._dirs[b""] = _Meta(e.mode, e.uid, e.gid, e.atime_ns, e.mtime_ns, e.xattrs)
            return
        pfd = self._dir(parent)

        if typ in _REG:
            try:
                fd = os.open(base, _O_NEWFILE, e.mode & 0o777, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, rel, base)
                fd = os.open(base, _O_NEWFILE, e.mode & 0o777, dir_fd=pfd)
            try:
                if e.size:
                    reader.copy_to(fd, e.size)
                self._meta_fd(fd, e.mode, e.uid, e.gid, e.xattrs, e.atime_ns, e.mtime_ns)
            finally:
                os.close(fd)
        elif typ == b"5" or typ == b"D":
            opaque = False
            try:
                os.mkdir(base, 0o700, dir_fd=pfd)
            except FileExistsError:
                st = os.lstat(base, dir_fd=pfd)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(base, dir_fd=pfd)
                    os.mkdir(base, 0o700, dir_fd=pfd)
                    # This layer whited out the lower NAME, then recreated it:
                    # the lower directory's contents must stay hidden.
                    opaque = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            self._dirs[rel] = _Meta(e.mode, e.uid, e.gid, e.atime_ns, e.mtime_ns, e.xattrs)
            if opaque:
                os.setxattr(self._dir(rel), OPAQUE_XATTR, b"y")
        elif typ == b"2":
            try:
                os.symlink(e.linkname, base, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, rel, base)
                os.symlink(e.linkname, base, dir_fd=pfd)
            self._meta_path(pfd, base, None, e.uid, e.gid, e.xattrs, e.atime_ns, e.mtime_ns)
        elif typ == b"1":
            self._hardlink(e, rel, pfd, base)
        elif typ == b"3" or typ == b"4" or typ == b"6":
            kind = {b"3": stat.S_IFCHR, b"4": stat.S_IFBLK, b"6": stat.S_IFIFO}[typ]
            dev = os.makedev(e.devmajor, e.devminor) if typ != b"6" else 0
            try:
                os.mknod(base, kind | 0o600, dev, dir_fd=pfd)
            except FileExistsError:
                self._remove(pfd, rel, base)
                os.mknod(base, kind | 0o600, dev, dir_fd=pfd)
            self._meta_path(pfd, base, e.mode, e.uid, e.gid, e.xattrs, e.atime_ns, e.mtime_ns)
        elif typ == b"V":
            return  # GNU volume label: no file
        elif typ == b"S":
            raise LayerError(f"layer entry {_show(e.name)}: GNU sparse files are not supported")
        else:
            raise LayerError(f"layer entry {_show(e.name)}: unsupported tar type {typ!r}")

    def _hardlink(self, e: _Entry, rel: bytes, pfd: int, base: bytes) -> None:
        shown = _show(e.name)
        target = _clean(e.linkname, f"hard link {shown} target")
        if not target:
            raise LayerError(f"hard link {shown}: target is the layer root")
        if target == rel:
            return  # a link to itself: nothing to do
        tparent, _, tbase = target.rpartition(b"/")
        tpfd = self._dir(tparent, create=False)
        st = None
        if tpfd is not None:
            try:
                st = os.lstat(tbase, dir_fd=tpfd)
            except FileNotFoundError:
                pass
        if st is None:
            self._copy_up(target, shown)
            tpfd = self._dir(tparent)
        elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            raise LayerError(f"hard link {shown}: target {_show(target)} was deleted in this layer")
        elif stat.S_ISDIR(st.st_mode):
            raise LayerError(f"hard link {shown}: target {_show(target)} is a directory")
        # The entry's own parent may have been evicted from the cache meanwhile.
        pfd = self._dir(rel.rpartition(b"/")[0])
        try:
            os.link(tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
        except FileExistsError:
            self._remove(pfd, rel, base)
            os.link(tbase, base, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)

    def _whiteout(self, rel: bytes, parent: bytes, base: bytes) -> None:
        pfd = self._dir(parent)
        if base == OPAQUE_WHITEOUT:
            os.setxattr(pfd, OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            return  # AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not part of the tree
        name = base[len(WHITEOUT_PREFIX):]
        if not name or name in (b".", b".."):
            raise LayerError(f"layer entry {_show(rel)}: invalid whiteout name")
        try:
            st = os.lstat(name, dir_fd=pfd)
        except FileNotFoundError:
            os.mknod(name, stat.S_IFCHR | 0o600, 0, dir_fd=pfd)
            return
        # Present in this layer: whiteouts only delete lower content (layer.md).
        if stat.S_ISDIR(st.st_mode):
            os.setxattr(self._dir(parent + b"/" + name if parent else name), OPAQUE_XATTR, b"y")

    def finish(self) -> None:
        """Apply deferred directory metadata (children first is not needed: utime of a
        child does not touch its parent's mtime), then close descriptors."""
        if b"" not in self._dirs:
            found = self._lower_lookup(b"")
            if found is not None:
                st = found[1]
                self._dirs[b""] = _Meta(st.st_mode & 0o7777, st.st_uid, st.st_gid,
                                        st.st_atime_ns, st.st_mtime_ns, None)
            else:
                self._dirs[b""] = _Meta(0o755, 0, 0, None, None, None)
        for rel, m in self._dirs.items():
            fd = self._dir(rel, create=False)
            if fd is None:
                continue
            if self._root and (m.uid != self._uid or m.gid != self._gid):
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode)
            if m.xattrs:
                self._set_xattrs(fd, m.xattrs)
            if m.mtime_ns is not None:
                os.utime(fd, ns=(m.mtime_ns if m.atime_ns is None else m.atime_ns, m.mtime_ns))
            if len(self._fds) > self._max_fds:
                self.close_fds()
        self.close_fds()


# ---------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------

def apply_layer(src: str | os.PathLike | BinaryIO, dest: Path | str,
                parents: list[Path] | None = None, diff_id: str | None = None) -> int:
    """Unpack one layer into ``dest`` in the overlayfs lower-directory format.

    ``src`` is a path or a binary stream (``.read(n)``) of the layer blob:
    tar, gzip, zstd, xz or bzip2, told apart by magic bytes.  ``dest`` must
    not exist or be an empty directory; it is created (mode 0700 until the
    layer's root entry or the parent's root mode is applied at the end).
    ``parents`` are the unpacked snapshot directories of the layers below,
    **top-most first**; they are only read (hard-link targets are copied up
    from them, implicitly created directories take their metadata).
    ``diff_id`` (``sha256:<hex>``), when given, must equal the sha256 of the
    uncompressed stream, checked in the same pass.

    Returns the size in bytes of the uncompressed tar stream.

    Raises :class:`~ketch.errors.LayerError` for an unsafe or malformed
    layer (the message names the entry) and
    :class:`~ketch.errors.DigestMismatch` when the digest differs; in either
    case, and for any other error, ``dest`` is removed.  Writing as root keeps
    owners, device nodes and ``trusted.*``/``security.*`` xattrs; as another
    user those are skipped or fail.  Spec: image-spec ``layer.md``; kernel:
    ``Documentation/filesystems/overlayfs.rst``.
    """
    dest_b = os.fsencode(dest)
    if isinstance(src, (str, bytes, os.PathLike)):
        f: BinaryIO = open(src, "rb", buffering=0)
        own = True
    else:
        f, own = src, False
    try:
        try:
            os.mkdir(dest_b, 0o700)
        except FileExistsError:
            if os.listdir(dest_b):
                raise LayerError(f"cannot unpack into {os.fsdecode(dest_b)}: not empty") from None
        try:
            return _apply(f, dest_b, list(parents or ()), diff_id)
        except BaseException:
            shutil.rmtree(dest_b, ignore_errors=True)
            raise
    finally:
        if own:
            f.close()


def _apply(f: BinaryIO, dest: bytes, parents: list[Path], diff_id: str | None) -> int:
    root_fd = os.open(dest, _O_DIR)
    stream = _Stream(f)
    w = _Writer(root_fd, parents)
    name = b""
    try:
        reader = _TarReader(stream)
        apply = w.apply
        nxt = reader.next
        while True:
            e = nxt()
            if e is None:
                break
            name = e.name
            try:
                apply(e, reader)
            except LayerError as err:
                shown = _show(name)
                if shown in str(err):
                    raise
                # the culprit may be a parent component: name the entry too
                raise LayerError(f"layer entry {shown}: {err}") from err
            except OSError as err:
                raise LayerError(f"layer entry {_show(name)}: {err.strerror or err}") from err
            except (ValueError, OverflowError) as err:  # NUL in a link name, uid beyond 2³²…
                raise LayerError(f"layer entry {_show(name)}: {err}") from err
            if len(w._fds) > w._max_fds:
                w.trim_cache()
        name = b""
        stream.drain()
        try:
            w.finish()
        except OSError as err:
            raise LayerError(f"layer directories: {err.strerror or err}") from err
    except BaseException:
        stream.close()
        w.close_fds()
        raise
    finally:
        os.close(root_fd)
    if diff_id is not None:
        got = "sha256:" + stream.sha256.hexdigest()
        if got != diff_id:
            raise DigestMismatch(f"layer {diff_id}: uncompressed content has digest {got}")
    return stream.size
