"""The overlayfs snapshotter on the real kernel: real image layers, real overlay mounts.

Root only.  Reads the OCI layouts in ../shared/images (never writes there);
every test works under a fresh /var/tmp directory and checks that it leaves
no mount behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.errors import DigestMismatch, LayerError
from ketch.oci.image import OCI_LAYER_GZIP, Descriptor, ImageConfig, Manifest, chain_ids
from ketch.snapshot.overlay import PAGE_LIMIT, Snapshotter
from tests.conftest import ALPINE_TAGS, BUSYBOX_TAGS, SHARED_IMAGES, mounts_under, require_root

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _root():
    require_root()


@pytest.fixture
def base():
    """A scratch directory; no mount may be left under it afterwards."""
    d = Path(tempfile.mkdtemp(prefix="ketch-snap-", dir="/var/tmp"))
    before = mounts_under(str(d))
    yield d
    leaks = mounts_under(str(d))
    for mp in sorted(leaks, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    shutil.rmtree(d, ignore_errors=True)
    assert not before and not leaks, f"mounts left behind: {leaks}"


# --- images --------------------------------------------------------------------------------

class Layout:
    """Read-only view of an OCI image layout: the ``content`` the snapshotter duck-types."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / "blobs" / "sha256" / digest[7:]

    def image(self, tag: str) -> "Image":
        index = json.loads((self.root / "index.json").read_text())
        for m in index["manifests"]:
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
                manifest = Manifest.from_json(json.loads(self.path(m["digest"]).read_text()))
                config = ImageConfig.from_json(json.loads(self.path(manifest.config.digest).read_text()))
                return Image(manifest, config)
        raise KeyError(tag)


@dataclass
class Image:
    manifest: Manifest
    config: ImageConfig


class Blobs:
    """A throwaway content store for synthetic multi-layer images."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / digest[7:]

    def image(self, tars: list[bytes]) -> Image:
        """Store the layers (gzip, no timestamp: the same tars give the same blobs) and
        describe the image.  Like the real content store, a blob is written to a temp
        file and renamed into place, so a blob path another process may be unpacking
        is never truncated or rewritten under it."""
        layers, diff_ids = [], []
        for raw in tars:
            blob = gzip.compress(raw, compresslevel=1, mtime=0)
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            path = self.path(digest)
            if not path.exists():
                fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".blob-")
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                os.replace(tmp, path)
            layers.append(Descriptor(OCI_LAYER_GZIP, digest, len(blob)))
            diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        config = ImageConfig(architecture="amd64", os="linux", config=None, diff_ids=tuple(diff_ids))
        cfg_desc = Descriptor("application/vnd.oci.image.config.v1+json", "sha256:" + "0" * 64, 2)
        return Image(Manifest("application/vnd.oci.image.manifest.v1+json", cfg_desc, tuple(layers)),
                     config)


def tar(*entries) -> bytes:
    """``("f", name, data)``, ``("d", name)``, ``("l", name, target)`` → tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, *rest in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime = 1_600_000_000
            if kind == "f":
                ti.size, ti.mode = len(rest[0]), 0o644
                tf.addfile(ti, io.BytesIO(rest[0]))
            elif kind == "d":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif kind == "l":
                ti.type, ti.linkname = tarfile.LNKTYPE, rest[0]
                tf.addfile(ti)
    return buf.getvalue()


def overlay_options(target: Path) -> str:
    out = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,OPTIONS", str(target)],
                         capture_output=True, text=True).stdout
    assert out.startswith("overlay"), f"{target} is not an overlay mount: {out!r}"
    return out


def mounted(snaps: Snapshotter, lowers, key: str, target: Path):
    upper, work = snaps.prepare_rw(key)
    snaps.mount(lowers, upper, work, target)
    return upper


# --- real layers ---------------------------------------------------------------------------------

def _layout(name: str) -> Layout:
    root = SHARED_IMAGES / name
    if not (root / "index.json").exists():
        pytest.skip(f"test images not found at {root}")
    return Layout(root)


@pytest.mark.parametrize("tag", BUSYBOX_TAGS)
def test_busybox_hardlinks_through_overlay(base, tag):
    layout = _layout("busybox")
    snaps = Snapshotter(base / "snapshots")
    lowers = snaps.ensure_image(layout, layout.image(tag))
    assert len(lowers) == 1
    target = base / "rootfs"
    mounted(snaps, lowers, "c1", target)
    try:
        overlay_options(target)
        st = os.lstat(target / "bin/busybox")
        assert st.st_nlink > 300, "busybox applets are hard links of bin/busybox"
        assert os.lstat(target / "bin/sh").st_ino == st.st_ino
        assert stat.S_IMODE(os.lstat(target / "tmp").st_mode) == 0o1777
        assert os.lstat(target / "home").st_uid == 65534
        assert stat.S_IMODE(os.lstat(target / "etc/shadow").st_mode) == 0o600
    finally:
        snaps.unmount(target)
    snaps.unmount(target)  # idempotent
    assert not mounts_under(str(target))
    snaps.remove_rw("c1")
    snaps.remove_rw("c1")


@pytest.mark.parametrize("tag", ALPINE_TAGS)
def test_alpine_os_release_through_overlay(base, tag):
    layout = _layout("alpine")
    snaps = Snapshotter(base / "snapshots")
    lowers = snaps.ensure_image(layout, layout.image(tag))
    target = base / "rootfs"
    mounted(snaps, lowers, "c1", target)
    try:
        text = (target / "etc/os-release").read_text()
        assert "ID=alpine" in text
        if not tag.startswith("edge"):
            assert f"VERSION_ID={tag}" in text
        assert os.readlink(target / "bin/sh") == "/bin/busybox"
        assert os.lstat(target / "bin/busybox").st_nlink == 1
    finally:
        snaps.unmount(target)
    snaps.remove_rw("c1")


def test_layers_shared_by_containers_and_images(base):
    layout = _layout("busybox")
    snaps = Snapshotter(base / "snapshots")
    img = layout.image(BUSYBOX_TAGS[0])
    lowers = snaps.ensure_image(layout, img)
    ino = os.lstat(lowers[0]).st_ino
    assert snaps.ensure_image(layout, img) == lowers
    assert os.lstat(lowers[0]).st_ino == ino, "a layer is unpacked once"
    assert lowers == [snaps.layer_path(chain_ids(img.config.diff_ids)[-1])]
    t1, t2 = base / "r1", base / "r2"
    up1 = mounted(snaps, lowers, "one", t1)
    try:
        mounted(snaps, lowers, "two", t2)
        try:
            (t1 / "etc/passwd").write_text("changed in one\n")
            (t1 / "new").write_text("x")
            assert (t2 / "etc/passwd").read_text() != "changed in one\n"
            assert not (t2 / "new").exists()
            assert (up1 / "etc/passwd").read_text() == "changed in one\n"
            assert (lowers[0] / "etc/passwd").read_text() != "changed in one\n"
            os.unlink(t1 / "etc/group")
            assert not (t1 / "etc/group").exists() and (t2 / "etc/group").exists()
        finally:
            snaps.unmount(t2)
    finally:
        snaps.unmount(t1)
    snaps.remove_rw("one")
    snaps.remove_rw("two")
    assert not (base / "snapshots/rw/one").exists()


# --- synthetic multi-layer images ---------------------------------------------------------------

def test_whiteouts_and_opaque_dirs_in_merged_view(base):
    blobs = Blobs(base / "blobs")
    l1 = tar(("d", "etc"), ("f", "etc/keep", b"k"), ("f", "etc/gone", b"g"),
             ("d", "var"), ("d", "var/cache"), ("f", "var/cache/old1", b"1"),
             ("d", "var/cache/sub"), ("f", "var/cache/sub/old2", b"2"),
             ("d", "olddir"), ("f", "olddir/x", b"x"), ("f", "lib.so", b"lib"))
    l2 = tar(("f", "etc/.wh.gone", b""), ("d", "var/cache"), ("f", "var/cache/.wh..wh..opq", b""),
             ("f", "var/cache/new", b"n"), ("f", ".wh.olddir", b""),
             ("l", "lib2.so", "lib.so"))
    l3 = tar(("f", "etc/gone", b"back"), ("d", "olddir"), ("f", "olddir/y", b"y"))
    snaps = Snapshotter(base / "snapshots")
    img = blobs.image([l1, l2, l3])
    lowers = snaps.ensure_image(blobs, img)
    chains = chain_ids(img.config.diff_ids)
    assert lowers == [snaps.layer_path(c) for c in reversed(chains)]
    target = base / "rootfs"

    # Layers 1+2: the whiteout and the opaque dir take effect.
    mounted(snaps, lowers[1:], "two", target)
    try:
        assert sorted(os.listdir(target / "etc")) == ["keep"]
        assert sorted(os.listdir(target / "var/cache")) == ["new"]
        assert not (target / "olddir").exists()
        assert (target / "lib2.so").read_text() == "lib"  # hard link resolved by copy-up
        assert os.lstat(target / "lib2.so").st_ino == os.lstat(target / "lib.so").st_ino
    finally:
        snaps.unmount(target)

    # All three: layer 3 recreates what layer 2 deleted; the old olddir stays hidden.
    mounted(snaps, lowers, "three", target)
    try:
        assert (target / "etc/gone").read_text() == "back"
        assert sorted(os.listdir(target / "olddir")) == ["y"]
        assert sorted(os.listdir(target / "var/cache")) == ["new"]
    finally:
        snaps.unmount(target)
    for k in ("two", "three"):
        snaps.remove_rw(k)


@pytest.mark.parametrize("nlayers", [40, 130])
def test_many_layers_exceed_one_page(base, nlayers):
    # A long root path makes the absolute option string exceed one page.
    deep = base / ("x" * 100) / ("y" * 100)
    snaps = Snapshotter(deep / "snapshots")
    blobs = Blobs(base / "blobs")
    tars = [tar(("d", "layers"), ("f", f"layers/{i:03}", str(i).encode()),
                ("f", "top", str(i).encode())) for i in range(nlayers)]
    lowers = snaps.ensure_image(blobs, blobs.image(tars))
    assert len(lowers) == nlayers
    upper, work = snaps.prepare_rw("many")
    assert len(snaps.mount_options(lowers, upper, work)) >= PAGE_LIMIT
    cwd = os.getcwd()
    target = base / "rootfs"
    snaps.mount(lowers, upper, work, target)
    try:
        assert os.getcwd() == cwd, "the process's working directory is untouched"
        assert "lowerdir=l/" in overlay_options(target)
        assert sorted(os.listdir(target / "layers")) == [f"{i:03}" for i in range(nlayers)]
        assert (target / "top").read_text() == str(nlayers - 1)
    finally:
        snaps.unmount(target)
    snaps.remove_rw("many")


def test_keys_are_single_path_components(base):
    snaps = Snapshotter(base / "snapshots")
    for bad in ["", "../x", "a/b", ".hidden", "x" * 200]:
        with pytest.raises(ValueError):
            snaps.prepare_rw(bad)
        with pytest.raises(ValueError):
            snaps.remove_rw(bad)
    assert not (base / "x").exists()


def test_root_path_with_overlay_separators(base):
    snaps = Snapshotter(base / "odd,dir:name")
    blobs = Blobs(base / "blobs")
    lowers = snaps.ensure_image(blobs, blobs.image([tar(("f", "a", b"1")), tar(("f", "b", b"2"))]))
    target = base / "rootfs"
    mounted(snaps, lowers, "c", target)
    try:
        assert sorted(os.listdir(target)) == ["a", "b"]
        (target / "c").write_text("3")
        assert (base / "odd,dir:name/rw/c/upper/c").read_text() == "3"
    finally:
        snaps.unmount(target)


def test_image_without_layers_mounts_empty_root(base):
    snaps = Snapshotter(base / "snapshots")
    blobs = Blobs(base / "blobs")
    lowers = snaps.ensure_image(blobs, blobs.image([]))
    assert lowers == []
    target = base / "rootfs"
    mounted(snaps, lowers, "empty", target)
    try:
        assert os.listdir(target) == []
    finally:
        snaps.unmount(target)


def test_remove_unused_keeps_shared_bases(base):
    blobs = Blobs(base / "blobs")
    snaps = Snapshotter(base / "snapshots")
    common = tar(("f", "base", b"b"))
    img_a = blobs.image([common, tar(("f", "a", b"a"))])
    img_b = blobs.image([common, tar(("f", "b", b"b")), tar(("f", "b2", b"2"))])
    snaps.ensure_image(blobs, img_a)
    snaps.ensure_image(blobs, img_b)
    ca, cb = chain_ids(img_a.config.diff_ids), chain_ids(img_b.config.diff_ids)
    assert ca[0] == cb[0]
    assert len(snaps.layers()) == 4
    assert snaps.remove_unused({cb[-1]}) == [ca[1]]
    assert snaps.layers() == sorted(cb)
    assert len(os.listdir(base / "snapshots/l")) == 3, "short links go with their layers"
    assert snaps.remove_unused(set()) == sorted(cb)
    assert snaps.layers() == [] and os.listdir(base / "snapshots/l") == []


def test_failed_layer_leaves_nothing(base):
    blobs = Blobs(base / "blobs")
    snaps = Snapshotter(base / "snapshots")
    good = tar(("f", "ok", b"1"))
    img = blobs.image([good, tar(("f", "x", b"2"))])
    # Corrupt the diff_id of layer 2: the unpack must fail and leave no trace.
    bad = ImageConfig(architecture="amd64", os="linux", config=None,
                      diff_ids=(img.config.diff_ids[0], "sha256:" + "1" * 64))
    with pytest.raises(DigestMismatch):
        snaps.ensure_image(blobs, Image(img.manifest, bad))
    assert snaps.layers() == [chain_ids(img.config.diff_ids)[0]]
    assert [n for n in os.listdir(base / "snapshots/layers") if n.startswith(".")] == []
    assert len(os.listdir(base / "snapshots/l")) == 1
    # An escaping layer, likewise.
    evil = blobs.image([tar(("f", "../../evil", b"x"))])
    with pytest.raises(LayerError, match="escape"):
        snaps.ensure_image(blobs, evil)
    assert len(snaps.layers()) == 1 and not (base / "evil").exists()


def _ensure(root: str, blobs_root: str, tars: list[bytes], q) -> None:
    blobs = Blobs(Path(blobs_root))
    q.put([str(p) for p in Snapshotter(root).ensure_image(blobs, blobs.image(tars))])


def test_concurrent_unpack_of_the_same_layers(base):
    tars = [tar(*[("f", f"f{i}-{j}", os.urandom(20000)) for j in range(200)]) for i in range(3)]
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ensure, args=(str(base / "snapshots"), str(base / "blobs"), tars, q))
             for _ in range(4)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r == results[0] for r in results)
    snaps = Snapshotter(base / "snapshots")
    assert len(snaps.layers()) == 3
    assert [n for n in os.listdir(base / "snapshots/layers") if n.startswith(".")] == []
    assert len(os.listdir(base / "snapshots/l")) == 3, "losers drop their short links"
    assert len(os.listdir(Path(results[0][0]))) == 200


def test_unpack_dir_of_a_killed_process_is_removed(tmp_path):
    """A ``.tmp-…-<pid>-`` dir left by a process killed mid-unpack goes away
    at the next unpack; one of a live process stays."""
    import subprocess as sp
    from ketch.snapshot.overlay import Snapshotter
    snaps = Snapshotter(tmp_path / "snaps")
    snaps._init()
    dead = sp.Popen(["true"])
    dead.wait()
    stale = snaps._layers / f".tmp-aaaaaaaaaaaa-{dead.pid}-xyz"
    live = snaps._layers / f".tmp-bbbbbbbbbbbb-{os.getpid()}-xyz"
    for d in (stale, live):
        (d / "fs").mkdir(parents=True)
    snaps._remove_dead_tmps()
    assert not stale.exists() and live.exists()
