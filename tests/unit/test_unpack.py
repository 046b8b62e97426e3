"""ketch.image.unpack: every layer rule (image-spec layer.md) on tiny in-memory tars.

Tests that need root (mknod of devices, chown, trusted.* xattrs) skip with a
reason otherwise.  Every test works in pytest's tmp_path; escape tests also
check that a canary directory *outside* the layer stays untouched.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest
import zstandard

from ketch.errors import DigestMismatch, LayerError
from ketch.image import unpack
from ketch.image.unpack import OPAQUE_XATTR, apply_layer, detect_compression

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: mknod, chown or trusted.* xattrs")
T0 = 1_600_000_000  # a fixed mtime, seconds


class Tar:
    """Builds a layer tar in memory, entry by entry, in the order given."""

    def __init__(self, fmt: int = tarfile.PAX_FORMAT):
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=fmt)

    def _info(self, name: str, type_: bytes, mode: int, uid: int = 0, gid: int = 0,
              mtime: float = T0, **kw) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = type_, mode, uid, gid, mtime
        for k, v in kw.items():
            setattr(ti, k, v)
        return ti

    def file(self, name: str, data: bytes = b"", mode: int = 0o644, **kw) -> "Tar":
        ti = self._info(name, tarfile.REGTYPE, mode, **kw)
        ti.size = len(data)
        self.tf.addfile(ti, io.BytesIO(data))
        return self

    def dir(self, name: str, mode: int = 0o755, **kw) -> "Tar":
        self.tf.addfile(self._info(name, tarfile.DIRTYPE, mode, **kw))
        return self

    def symlink(self, name: str, target: str, **kw) -> "Tar":
        self.tf.addfile(self._info(name, tarfile.SYMTYPE, 0o777, linkname=target, **kw))
        return self

    def link(self, name: str, target: str, **kw) -> "Tar":
        self.tf.addfile(self._info(name, tarfile.LNKTYPE, 0o644, linkname=target, **kw))
        return self

    def dev(self, name: str, type_: bytes, major: int = 0, minor: int = 0, mode: int = 0o666) -> "Tar":
        self.tf.addfile(self._info(name, type_, mode, devmajor=major, devminor=minor))
        return self

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def apply(tmp_path: Path, data: bytes, parents=(), name: str = "layer", diff_id=None) -> Path:
    dest = tmp_path / name
    n = apply_layer(io.BytesIO(data), dest, list(parents), diff_id)
    assert n == len(data)
    return dest


def refused(tmp_path: Path, data: bytes, match: str, parents=()) -> None:
    dest = tmp_path / "refused"
    with pytest.raises(LayerError, match=match):
        apply_layer(io.BytesIO(data), dest, list(parents), None)
    assert not dest.exists(), "a refused layer must leave nothing behind"


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A directory outside the layer that escape attempts aim at."""
    c = tmp_path / "outside"
    c.mkdir()
    (c / "passwd").write_text("root:x:0:0\n")
    yield c
    assert sorted(os.listdir(c)) == ["passwd"]
    assert (c / "passwd").read_text() == "root:x:0:0\n"


def is_whiteout(p: Path) -> bool:
    st = os.lstat(p)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def opaque(p: Path) -> bool:
    try:
        return os.getxattr(p, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


# --- basics ---------------------------------------------------------------------------

def test_files_dirs_symlinks_modes_and_mtimes(tmp_path):
    data = (Tar().dir("./", mode=0o755).dir("./etc", mode=0o750, mtime=T0 + 5)
            .file("./etc/os-release", b"ID=test\n", mode=0o640, mtime=T0 + 1)
            .file("./etc/ro", b"x", mode=0o400)
            .symlink("./etc/link", "os-release", mtime=T0 + 2)
            .dir("./empty", mode=0o1777, mtime=T0 + 3).bytes())
    d = apply(tmp_path, data)
    assert (d / "etc/os-release").read_bytes() == b"ID=test\n"
    assert stat.S_IMODE(os.lstat(d / "etc/os-release").st_mode) == 0o640
    assert stat.S_IMODE(os.lstat(d / "etc/ro").st_mode) == 0o400
    assert stat.S_IMODE(os.lstat(d / "etc").st_mode) == 0o750
    assert stat.S_IMODE(os.lstat(d / "empty").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o755
    assert os.readlink(d / "etc/link") == "os-release"
    # Directory mtimes are set after their contents are written.
    assert os.lstat(d / "etc").st_mtime == T0 + 5
    assert os.lstat(d / "etc/os-release").st_mtime == T0 + 1
    assert os.lstat(d / "etc/link").st_mtime == T0 + 2  # lutimes, not the target's
    assert os.lstat(d / "empty").st_mtime == T0 + 3


def test_large_file_spanning_many_chunks(tmp_path):
    blob = os.urandom(3 * 1024 * 1024 + 17)
    d = apply(tmp_path, Tar().file("big", blob).file("after", b"ok").bytes())
    assert (d / "big").read_bytes() == blob
    assert (d / "after").read_bytes() == b"ok"


def test_fractional_pax_mtime(tmp_path):
    d = apply(tmp_path, Tar().file("f", b"", mtime=T0 + 0.5).bytes())
    assert os.lstat(d / "f").st_mtime_ns == (T0 * 10**9) + 500_000_000


def test_implicit_parents_are_created(tmp_path):
    d = apply(tmp_path, Tar().file("a/b/c/file", b"deep").bytes())
    assert (d / "a/b/c/file").read_bytes() == b"deep"
    assert stat.S_IMODE(os.lstat(d / "a/b").st_mode) == 0o755


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_in_every_format(tmp_path, fmt):
    long_dir = "d" * 90 + "/" + "e" * 50
    name = long_dir + "/" + "f" * 80
    target = "t" * 99 if fmt == tarfile.USTAR_FORMAT else "t" * 150
    data = Tar(fmt).dir(long_dir.split("/")[0]).dir(long_dir).file(name, b"long").symlink(
        long_dir + "/s", target).bytes()
    d = apply(tmp_path, data)
    assert (d / name).read_bytes() == b"long"
    assert os.readlink(d / long_dir / "s") == target


def test_later_entry_replaces_earlier(tmp_path):
    data = (Tar().file("f", b"one").file("f", b"two")
            .file("x", b"was a file").dir("x").file("x/inside", b"1")          # file -> dir
            .dir("y").file("y/old", b"gone").file("y", b"now a file")         # dir -> file
            .dir("z").file("z/keep", b"k").dir("z", mode=0o700)               # dir + dir merge
            .symlink("s", "f").file("s", b"not a link")                       # symlink -> file
            .bytes())
    d = apply(tmp_path, data)
    assert (d / "f").read_bytes() == b"two"
    assert (d / "x/inside").read_bytes() == b"1"
    assert (d / "y").read_bytes() == b"now a file"
    assert (d / "z/keep").read_bytes() == b"k"
    assert stat.S_IMODE(os.lstat(d / "z").st_mode) == 0o700
    assert not os.path.islink(d / "s") and (d / "s").read_bytes() == b"not a link"


def test_writing_over_a_symlink_replaces_it_never_follows(tmp_path, canary):
    data = Tar().symlink("f", str(canary / "passwd")).file("f", b"pwned").bytes()
    d = apply(tmp_path, data)
    assert (d / "f").read_bytes() == b"pwned"


# --- compression and digests -----------------------------------------------------------

def _zstd_two_frames(b: bytes) -> bytes:
    c = zstandard.ZstdCompressor()
    return c.compress(b[:1000]) + c.compress(b[1000:])


@pytest.mark.parametrize("compress,kind", [
    (lambda b: b, "tar"),
    (gzip.compress, "gzip"),
    (lambda b: gzip.compress(b[:700]) + gzip.compress(b[700:]), "gzip"),  # two members
    (lambda b: zstandard.ZstdCompressor().compress(b), "zstd"),
    (_zstd_two_frames, "zstd"),
    (lzma.compress, "xz"),
    (bz2.compress, "bzip2"),
])
def test_compression_by_magic_and_diff_id(tmp_path, compress, kind):
    raw = Tar().file("a", b"hello" * 1000).file("b/c", b"x").bytes()
    blob = compress(raw)
    assert detect_compression(blob[:16]) == kind
    path = tmp_path / "blob"  # the media type is never consulted: a file without one
    path.write_bytes(blob)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    n = apply_layer(path, tmp_path / "d", [], diff_id)
    assert n == len(raw)
    assert (tmp_path / "d/a").read_bytes() == b"hello" * 1000


def test_diff_id_mismatch_removes_everything(tmp_path):
    blob = gzip.compress(Tar().file("a", b"x").bytes())
    with pytest.raises(DigestMismatch):
        apply_layer(io.BytesIO(blob), tmp_path / "d", [], "sha256:" + "0" * 64)
    assert not (tmp_path / "d").exists()


def test_trailing_data_counts_in_diff_id(tmp_path):
    raw = Tar().file("a", b"x").bytes() + bytes(4096)  # extra zero blocks after the end marker
    d = apply(tmp_path, raw, diff_id="sha256:" + hashlib.sha256(raw).hexdigest())
    assert (d / "a").read_bytes() == b"x"


@pytest.mark.parametrize("mangle,match", [
    (lambda b: gzip.compress(b)[:-30], "truncated|corrupt"),
    (lambda b: gzip.compress(b)[:10] + b"garbage" * 20, "corrupt|truncated"),
    (lambda b: zstandard.ZstdCompressor().compress(b)[:-40], "truncated|corrupt"),
    (lambda b: lzma.compress(b)[:-40], "truncated|corrupt"),
    (lambda b: b[:700], "truncated"),
    (lambda b: b"not a tar at all".ljust(1024, b"x"), "corrupt|not a tar"),
    (lambda b: b[:148] + b"0000000\x00" + b[156:], "checksum"),
])
def test_corrupt_or_truncated_layers(tmp_path, mangle, match):
    raw = Tar().file("a", b"x" * 2000).file("b", b"y").bytes()
    refused(tmp_path, mangle(raw), match)


def test_dest_must_be_empty(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("x")
    with pytest.raises(LayerError, match="not empty"):
        apply_layer(io.BytesIO(Tar().file("a").bytes()), d, [], None)
    assert (d / "x").exists()


# --- escapes ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "/abs", "a/../../x", "./../outside/passwd", "a/.."])
def test_escaping_names_are_refused(tmp_path, canary, name):
    refused(tmp_path, Tar().file("ok", b"1").file(name, b"pwned").bytes(), r"absolute|'\.\.'")


def test_write_through_symlink_in_same_layer(tmp_path, canary):
    data = Tar().symlink("evil", "../outside").file("evil/passwd", b"pwned").bytes()
    refused(tmp_path, data, "symlink")


def test_symlink_to_absolute_path_then_entry_under_it(tmp_path, canary):
    data = Tar().symlink("evil", str(canary)).file("evil/new", b"pwned").bytes()
    refused(tmp_path, data, "symlink")


def test_dir_under_symlink_refused(tmp_path, canary):
    data = Tar().symlink("evil", str(canary)).dir("evil/sub").bytes()
    refused(tmp_path, data, "symlink")


def test_whiteout_through_symlink_refused(tmp_path, canary):
    data = Tar().symlink("evil", str(canary)).file("evil/.wh.passwd").bytes()
    refused(tmp_path, data, "symlink")


def test_hardlink_escapes_refused(tmp_path, canary):
    refused(tmp_path, Tar().link("h", "../../etc/passwd").bytes(), r"'\.\.'")
    refused(tmp_path, Tar().link("h", "/etc/passwd").bytes(), "absolute")


def test_hardlink_through_symlink_refused(tmp_path, canary):
    data = Tar().symlink("evil", str(canary)).link("h", "evil/passwd").bytes()
    refused(tmp_path, data, "symlink")


def test_hardlink_to_missing_target_refused(tmp_path):
    refused(tmp_path, Tar().link("h", "nowhere").bytes(), "neither this layer nor its parents")


def test_hardlink_to_directory_refused(tmp_path):
    refused(tmp_path, Tar().dir("d").link("h", "d").bytes(), "directory")


def test_symlink_in_parent_snapshot_is_not_followed(tmp_path, canary):
    lower = tmp_path / "lower"
    lower.mkdir()
    os.symlink(str(canary), lower / "evil")
    refused(tmp_path, Tar().link("h", "evil/passwd").bytes(), "neither", parents=[lower])


def test_unsupported_types_refused(tmp_path):
    raw = bytearray(Tar().file("a", b"").bytes())
    raw[156:157] = b"Z"
    chk = sum(raw[:148]) + 8 * 32 + sum(raw[156:512])
    raw[148:156] = b"%06o\x00 " % chk
    refused(tmp_path, bytes(raw), "unsupported tar type")


# --- hard links -------------------------------------------------------------------------

def test_hardlink_within_layer(tmp_path):
    d = apply(tmp_path, Tar().file("bin/busybox", b"\x7fELF", mode=0o755)
              .link("bin/sh", "bin/busybox").link("./bin/ls", "./bin/busybox").bytes())
    st = os.lstat(d / "bin/busybox")
    assert st.st_nlink == 3
    assert os.lstat(d / "bin/sh").st_ino == st.st_ino == os.lstat(d / "bin/ls").st_ino


def test_hardlink_to_symlink_links_the_symlink(tmp_path):
    d = apply(tmp_path, Tar().symlink("s", "/nowhere").link("h", "s").bytes())
    assert os.readlink(d / "h") == "/nowhere"
    assert os.lstat(d / "h").st_ino == os.lstat(d / "s").st_ino


def test_hardlink_across_layers_copies_up(tmp_path):
    lower = apply(tmp_path, Tar().dir("usr", mode=0o711, mtime=T0 + 9)
                  .file("usr/lib.so", b"payload", mode=0o751, mtime=T0 + 4).bytes(), name="l1")
    upper = apply(tmp_path, Tar().link("usr/lib2.so", "usr/lib.so").bytes(), parents=[lower])
    a, b = os.lstat(upper / "usr/lib.so"), os.lstat(upper / "usr/lib2.so")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert (upper / "usr/lib2.so").read_bytes() == b"payload"
    assert stat.S_IMODE(a.st_mode) == 0o751 and a.st_mtime == T0 + 4
    # The implicitly created directory copies the lower one's metadata (as copy-up does).
    u = os.lstat(upper / "usr")
    assert stat.S_IMODE(u.st_mode) == 0o711 and u.st_mtime == T0 + 9
    assert os.lstat(lower / "usr/lib.so").st_nlink == 1, "the parent snapshot is never modified"


def test_hardlink_prefers_the_topmost_parent(tmp_path):
    l1 = apply(tmp_path, Tar().file("f", b"old").bytes(), name="l1")
    l2 = apply(tmp_path, Tar().file("f", b"new").bytes(), name="l2", parents=[l1])
    l3 = apply(tmp_path, Tar().link("g", "f").bytes(), name="l3", parents=[l2, l1])
    assert (l3 / "g").read_bytes() == b"new"


@needs_root
def test_hardlink_to_target_whited_out_in_parent_refused(tmp_path):
    l1 = apply(tmp_path, Tar().file("f", b"old").bytes(), name="l1")
    l2 = apply(tmp_path, Tar().file(".wh.f").bytes(), name="l2", parents=[l1])
    refused(tmp_path, Tar().link("g", "f").bytes(), "neither", parents=[l2, l1])


@needs_root
def test_hardlink_below_opaque_dir_in_parent_refused(tmp_path):
    l1 = apply(tmp_path, Tar().file("d/f", b"old").bytes(), name="l1")
    l2 = apply(tmp_path, Tar().dir("d").file("d/.wh..wh..opq").bytes(), name="l2", parents=[l1])
    refused(tmp_path, Tar().link("g", "d/f").bytes(), "neither", parents=[l2, l1])


# --- whiteouts ----------------------------------------------------------------------------

@needs_root
def test_whiteout_becomes_char_device_0_0(tmp_path):
    d = apply(tmp_path, Tar().dir("etc").file("etc/.wh.passwd").file("./.wh.tmp").bytes())
    assert is_whiteout(d / "etc/passwd")
    assert is_whiteout(d / "tmp")
    assert not os.path.lexists(d / "etc/.wh.passwd")


@needs_root
def test_opaque_dir_becomes_xattr(tmp_path):
    d = apply(tmp_path, Tar().dir("var").dir("var/cache").file("var/cache/.wh..wh..opq")
              .file("var/cache/new", b"n").bytes())
    assert opaque(d / "var/cache")
    assert not opaque(d / "var")
    assert (d / "var/cache/new").read_bytes() == b"n"  # same-layer content stays
    assert not os.path.lexists(d / "var/cache/.wh..wh..opq")


@needs_root
def test_opaque_marker_without_dir_entry(tmp_path):
    d = apply(tmp_path, Tar().file("a/b/.wh..wh..opq").bytes())
    assert opaque(d / "a/b") and not opaque(d / "a")


@needs_root
def test_whiteout_does_not_delete_same_layer_entry(tmp_path):
    # Whiteouts apply only to lower layers (layer.md): a file of this layer stays; a
    # directory of this layer stays but becomes opaque (the lower one is deleted).
    d = apply(tmp_path, Tar().file("f", b"mine").file(".wh.f")
              .dir("d").file("d/x", b"1").file(".wh.d").bytes())
    assert (d / "f").read_bytes() == b"mine"
    assert (d / "d/x").read_bytes() == b"1" and opaque(d / "d")


@needs_root
def test_whiteout_then_recreated(tmp_path):
    d = apply(tmp_path, Tar().file(".wh.f").file("f", b"again").file(".wh.d").dir("d").bytes())
    assert (d / "f").read_bytes() == b"again"
    assert os.path.isdir(d / "d") and opaque(d / "d")


@needs_root
def test_whiteout_then_entry_below_it(tmp_path):
    d = apply(tmp_path, Tar().file(".wh.d").file("d/x", b"1").bytes())
    assert (d / "d/x").read_bytes() == b"1" and opaque(d / "d")


def test_entry_below_a_file_refused(tmp_path):
    refused(tmp_path, Tar().file("f", b"1").file("f/x", b"2").bytes(), "not a directory")


def test_aufs_metadata_skipped_and_bad_whiteout_refused(tmp_path):
    d = apply(tmp_path, Tar().file(".wh..wh.plnk/123.456").file(".wh..wh.aufs").file("a", b"1").bytes())
    assert sorted(os.listdir(d)) == ["a"]
    refused(tmp_path, Tar().file("x/.wh..").bytes(), "invalid whiteout")


# --- privileged metadata ----------------------------------------------------------------------

@needs_root
def test_owners_and_setuid_after_chown(tmp_path):
    data = (Tar().dir("home", uid=1000, gid=1000, mode=0o2775)
            .file("home/suid", b"#!", mode=0o4755, uid=1000, gid=1000)
            .file("home/sgid", b"#!", mode=0o2711, uid=0, gid=50)
            .symlink("home/link", "suid", uid=1001, gid=1002).bytes())
    d = apply(tmp_path, data)
    st = os.lstat(d / "home/suid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o4755)
    st = os.lstat(d / "home/sgid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 50, 0o2711)
    st = os.lstat(d / "home/link")
    assert (st.st_uid, st.st_gid) == (1001, 1002)  # lchown, not the target
    st = os.lstat(d / "home")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o2775)


@needs_root
def test_base256_uid_gnu_format(tmp_path):
    d = apply(tmp_path, Tar(tarfile.GNU_FORMAT).file("f", b"x", uid=3_000_000, gid=4_000_000).bytes())
    st = os.lstat(d / "f")
    assert (st.st_uid, st.st_gid) == (3_000_000, 4_000_000)


@needs_root
def test_device_nodes(tmp_path):
    data = (Tar().dir("dev").dev("dev/null", tarfile.CHRTYPE, 1, 3, 0o666)
            .dev("dev/loop0", tarfile.BLKTYPE, 7, 0, 0o660).dev("dev/fifo", tarfile.FIFOTYPE, mode=0o620)
            .bytes())
    d = apply(tmp_path, data)
    st = os.lstat(d / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) and stat.S_IMODE(st.st_mode) == 0o666
    st = os.lstat(d / "dev/loop0")
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(7, 0) and stat.S_IMODE(st.st_mode) == 0o660
    st = os.lstat(d / "dev/fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620
    assert st.st_mtime == T0


def test_fifo_without_root(tmp_path):
    d = apply(tmp_path, Tar().dev("p", tarfile.FIFOTYPE, mode=0o600).bytes())
    assert stat.S_ISFIFO(os.lstat(d / "p").st_mode)


def _pax_xattrs(name: str, xattrs: dict[str, bytes], uid: int = 0) -> bytes:
    """A tar whose file carries PAX ``SCHILY.xattr.*`` records (values are raw bytes)."""
    def record(k: bytes, v: bytes) -> bytes:
        body = b" " + k + b"=" + v + b"\n"
        n = len(body) + 1
        while len(str(n).encode()) + len(body) != n:
            n = len(str(n).encode()) + len(body)
        return str(n).encode() + body
    pax = b"".join(record(b"SCHILY.xattr." + k.encode(), v) for k, v in xattrs.items())
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)
    ph = tarfile.TarInfo("PaxHeaders/" + name)
    ph.type, ph.size = tarfile.XHDTYPE, len(pax)
    tf.addfile(ph, io.BytesIO(pax))
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = 2, 0o4755, uid, uid, T0
    tf.addfile(ti, io.BytesIO(b"#!"))
    tf.close()
    return buf.getvalue()


# struct vfs_cap_data, revision 2: cap_net_bind_service (bit 10) permitted + effective.
CAP = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)


@needs_root
def test_xattrs_and_file_capabilities_survive_chown(tmp_path):
    data = _pax_xattrs("ping", {"security.capability": CAP, "user.note": b"\x00bin\xff",
                                "trusted.overlay.opaque": b"y"}, uid=1000)
    d = apply(tmp_path, data)
    p = d / "ping"
    assert os.getxattr(p, "security.capability") == CAP
    assert os.getxattr(p, "user.note") == b"\x00bin\xff"
    assert not opaque(p), "a layer must not forge overlayfs' own xattrs"
    st = os.lstat(p)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1000, 0o4755)


def test_user_xattr_without_root(tmp_path):
    d = apply(tmp_path, _pax_xattrs("f", {"user.k": b"v"}, uid=os.geteuid()))
    assert os.getxattr(d / "f", "user.k") == b"v"


# --- internals worth pinning ------------------------------------------------------------------

def test_directory_descriptor_cache_eviction(tmp_path, monkeypatch):
    orig = unpack._Writer.__init__

    def small(self, *a, **kw):
        orig(self, *a, **kw)
        self._max_fds = 16

    monkeypatch.setattr(unpack._Writer, "__init__", small)
    t = Tar()
    for i in range(60):
        t.dir(f"d{i}", mode=0o700 + i % 8).file(f"d{i}/f", str(i).encode())
    t.link("last", "d0/f")
    d = apply(tmp_path, t.bytes())
    assert all((d / f"d{i}/f").read_bytes() == str(i).encode() for i in range(60))
    assert stat.S_IMODE(os.lstat(d / "d9").st_mode) == 0o701
    assert os.lstat(d / "last").st_nlink == 2


def test_directory_mode_applied_last_even_if_readonly(tmp_path):
    d = apply(tmp_path, Tar().dir("ro", mode=0o555).file("ro/f", b"x").bytes())
    assert (d / "ro/f").read_bytes() == b"x"
    assert stat.S_IMODE(os.lstat(d / "ro").st_mode) == 0o555
    os.chmod(d / "ro", 0o755)  # let tmp_path cleanup work without root


def test_global_pax_header_ignored(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "abc123", "path": "renamed"}) as tf:
        ti = tarfile.TarInfo("f")
        ti.size = 1
        tf.addfile(ti, io.BytesIO(b"1"))
    d = apply(tmp_path, raw.getvalue())
    assert os.listdir(d) == ["f"]


def test_nul_in_pax_linkpath_refused(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("s")
        ti.type, ti.pax_headers = tarfile.SYMTYPE, {"linkpath": "a\x00b"}
        tf.addfile(ti)
    refused(tmp_path, raw.getvalue(), "null|NUL")


def test_pax_records_parser():
    recs = unpack._parse_pax(b"12 path=a/b\n20 SCHILY.xattr.k=v\n")
    assert recs == {b"path": b"a/b", b"SCHILY.xattr.k": b"v"}
    with pytest.raises(LayerError):
        unpack._parse_pax(b"99 path=a\n")
    assert unpack._pax_time_ns(b"1.5") == 1_500_000_000
    assert unpack._pax_time_ns(b"-1.25") == -1_250_000_000


def test_numeric_fields():
    assert unpack._num(b"0000644\x00") == 0o644
    assert unpack._num(b"  755 \x00") == 0o755
    assert unpack._num(b"\x80\x00\x00\x00\x00\x2d\xc6\xc0") == 3_000_000
    assert unpack._num(b"\x00" * 8) == 0
