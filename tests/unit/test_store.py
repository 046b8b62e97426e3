"""Content store and image store: atomic verified ingest, names, resolve, tag, rmi, GC."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import sys
import tarfile
import types
from pathlib import Path

import pytest

from ketch.errors import DigestMismatch, ImageError, ImageNotFound, InvalidReference
from ketch.image.layers import scan_layer
from ketch.image.store import BlobInfo, ContentStore, ImageStore, created_time
from ketch.oci import image as oci
from ketch.paths import Paths


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def make_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 0
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def leftovers(cs: ContentStore) -> list[str]:
    return [n for n in os.listdir(cs.blobs) if n.startswith(".")] if cs.blobs.exists() else []


# --------------------------------------------------------------------------
# ContentStore


def test_ingest_bytes_and_queries(tmp_path):
    cs = ContentStore(tmp_path / "content")
    data = b'{"a": 1}'
    info = cs.ingest_bytes(data, sha(data))
    assert info == BlobInfo(sha(data), len(data))
    assert cs.has(info.digest) and cs.has(info.digest, len(data)) and not cs.has(info.digest, 3)
    assert cs.path(info.digest).read_bytes() == data
    assert cs.read_json(info.digest) == {"a": 1}
    assert json.loads((cs.root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert json.loads((cs.root / "index.json").read_text())["manifests"] == []
    assert list(cs.digests()) == [info.digest]
    # idempotent
    assert cs.ingest_bytes(data) == info
    assert leftovers(cs) == []


def test_absent_and_bad_digests(tmp_path):
    cs = ContentStore(tmp_path)
    missing = "sha256:" + "0" * 64
    assert not cs.has(missing)
    with pytest.raises(ImageError, match=missing):
        cs.path(missing)
    for bad in ("sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, "sha256:" + "0" * 63):
        with pytest.raises(ImageError, match="invalid digest"):
            cs.has(bad)
        with pytest.raises(ImageError, match="invalid digest"):
            cs.ingest(io.BytesIO(b"x"), BlobInfo(bad, 1))


def test_ingest_digest_mismatch_leaves_nothing(tmp_path):
    cs = ContentStore(tmp_path)
    want = sha(b"good")
    with pytest.raises(DigestMismatch) as e:
        cs.ingest(io.BytesIO(b"evil"), BlobInfo(want, 4), source="somewhere")
    assert want in str(e.value) and "somewhere" in str(e.value) and "\n" not in str(e.value)
    assert not cs.has(want) and not cs.has(sha(b"evil"))
    assert leftovers(cs) == [] and list(cs.digests()) == []


@pytest.mark.parametrize("data", [b"goo", b"good-and-more"])
def test_ingest_truncated_or_too_long(tmp_path, data):
    cs = ContentStore(tmp_path)
    with pytest.raises(DigestMismatch, match="want 4 bytes"):
        cs.ingest(io.BytesIO(data), BlobInfo(sha(b"good"), 4))
    assert list(cs.digests()) == [] and leftovers(cs) == []


def test_ingest_interrupted_stream_is_atomic(tmp_path):
    cs = ContentStore(tmp_path)

    class Dying(io.RawIOBase):
        n = 0

        def read(self, size=-1):
            self.n += 1
            if self.n > 2:
                raise OSError("source vanished")
            return b"x" * (1 << 20)

    with pytest.raises(OSError, match="vanished"):
        cs.ingest(Dying())
    assert list(cs.digests()) == [] and leftovers(cs) == []


def test_ingest_without_expected_computes_digest(tmp_path):
    cs = ContentStore(tmp_path)
    data = os.urandom(3 * (1 << 20) + 7)  # several chunks
    info = cs.ingest(io.BytesIO(data))
    assert info == BlobInfo(sha(data), len(data))
    assert cs.path(info.digest).read_bytes() == data
    assert oct(cs.path(info.digest).stat().st_mode & 0o777) == "0o644"


def test_copy_in_skips_present(tmp_path):
    cs = ContentStore(tmp_path / "c")
    src = tmp_path / "blob"
    src.write_bytes(b"hello")
    desc = BlobInfo(sha(b"hello"), 5)
    assert cs.copy_in(src, desc) is True
    ino = cs.path(desc.digest).stat().st_ino
    assert cs.copy_in(src, desc) is False
    assert cs.path(desc.digest).stat().st_ino == ino
    with pytest.raises(ImageError, match="missing"):
        cs.copy_in(tmp_path / "nope", BlobInfo(sha(b"other"), 5))


def test_stale_temps_removed(tmp_path):
    cs = ContentStore(tmp_path)
    cs.init()
    t = cs.blobs / ".ingest-dead"
    t.write_bytes(b"x")
    os.utime(t, (1, 1))
    fresh = cs.blobs / ".ingest-live"
    fresh.write_bytes(b"x")
    cs.remove_stale_temps()
    assert not t.exists() and fresh.exists()


def test_scan_layer_sizes(tmp_path):
    tar = make_tar({"a": b"12345", "b/c": b"xy"})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (("f", b"abc"),):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("hard")
        link.type = tarfile.LNKTYPE
        link.linkname = "f"
        tf.addfile(link)
        sym = tarfile.TarInfo("sym")
        sym.type = tarfile.SYMTYPE
        sym.linkname = "target"
        tf.addfile(sym)
        d = tarfile.TarInfo("dir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
    p = tmp_path / "l.tar.gz"
    p.write_bytes(gzip.compress(tar))
    info = scan_layer(p)
    assert info.diff_id == sha(tar) and info.unpacked_size == 7 and info.compression == "gzip"
    p2 = tmp_path / "l2.tar"
    p2.write_bytes(buf.getvalue())
    info = scan_layer(p2)
    assert info.unpacked_size == 3 + len("target") and info.compression == "none"


# --------------------------------------------------------------------------
# ImageStore


class Builder:
    """Puts tiny images straight into a store's content (what a transport does)."""

    def __init__(self, store: ImageStore):
        self.store = store

    def image(self, layers: list[bytes], cmd: str = "sh", created: str = "2024-01-01T00:00:00Z") -> str:
        cs = self.store.content
        descs, infos = [], {}
        for tar in layers:
            blob = gzip.compress(tar, mtime=0)
            d = cs.ingest_bytes(blob)
            descs.append(oci.Descriptor(oci.OCI_LAYER_GZIP, d.digest, d.size))
            infos[d.digest] = scan_layer(cs.path(d.digest))
        cfg = {"architecture": "amd64", "os": "linux", "created": created, "config": {"Cmd": [cmd]},
               "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in layers]}}
        c = cs.ingest_bytes(json.dumps(cfg).encode())
        m = oci.Manifest(oci.OCI_MANIFEST, oci.Descriptor(oci.OCI_CONFIG, c.digest, c.size), tuple(descs))
        md = cs.ingest_bytes(json.dumps(m.to_json()).encode())
        self._infos = infos
        return md.digest

    def add(self, names, layers=None, **kw):
        md = self.image(layers or [make_tar({"f": os.urandom(8)})], **kw)
        return self.store.add(md, names, layers=self._infos)


@pytest.fixture
def store(tmp_path):
    return ImageStore(Paths(tmp_path / "root", tmp_path / "run"))


def test_add_and_resolve_forms(store):
    b = Builder(store)
    img = b.add(["alpine:3.20.3"])
    assert img.names == ("docker.io/library/alpine:3.20.3",)
    assert img.repo_tags == ["alpine:3.20.3"]
    assert img.repo_digests == [f"alpine@{img.manifest_digest}"]
    assert img.config.config.Cmd == ("sh",)
    assert img.id == img.manifest.config.digest and len(img.short_id) == 12
    assert img.size == 8 and img.compressed_size == img.manifest.layers[0].size
    assert img.chain_ids == list(img.config.diff_ids)
    for ref in ("alpine:3.20.3", "docker.io/library/alpine:3.20.3", "library/alpine:3.20.3",
                img.id, img.id[7:], img.id[7:11], img.id[:11], f"alpine@{img.manifest_digest}"):
        assert store.resolve(ref) == img, ref
    with pytest.raises(ImageNotFound, match="^No such image: alpine:latest$"):
        store.resolve("alpine")
    with pytest.raises(ImageNotFound, match="No such image: other@"):
        store.resolve(f"other@{img.manifest_digest}")
    with pytest.raises(InvalidReference):
        store.resolve("Bad!")
    with pytest.raises(ImageNotFound):
        store.resolve(img.id[7:10])  # too short for an ID prefix, and no such name
    # persisted and exported as an OCI layout index
    db = json.loads(store.paths.images.read_text())
    assert db["images"][img.manifest_digest]["names"] == ["docker.io/library/alpine:3.20.3"]
    index = json.loads((store.paths.content / "index.json").read_text())
    assert index["manifests"][0]["annotations"] == {oci.ANNOTATION_REF_NAME: "docker.io/library/alpine:3.20.3"}


def test_ambiguous_prefix(store):
    tar = make_tar({"f": b"x"})

    def config_digest(cmd: str) -> str:  # what Builder.image writes for this cmd
        cfg = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z", "config": {"Cmd": [cmd]},
               "rootfs": {"type": "layers", "diff_ids": [sha(tar)]}}
        return sha(json.dumps(cfg).encode())

    seen: dict[str, str] = {}
    for i in range(100000):
        d = config_digest(f"c{i}")
        if d[7:11] in seen:
            pair = (seen[d[7:11]], f"c{i}")
            break
        seen[d[7:11]] = f"c{i}"
    b = Builder(store)
    one = b.add(["one:1"], layers=[tar], cmd=pair[0])
    two = b.add(["two:1"], layers=[tar], cmd=pair[1])
    prefix = os.path.commonprefix([one.id, two.id])
    with pytest.raises(ImageError, match="ambiguous image ID prefix"):
        store.resolve(prefix[7:])
    with pytest.raises(ImageError, match="ambiguous"):
        store.resolve(prefix)
    assert store.resolve(one.id[:len(prefix) + 1]) == one


def test_add_refuses_missing_blobs(store):
    b = Builder(store)
    md = b.image([make_tar({"x": b"1"})])
    layer = store.content.read_json(md)["layers"][0]["digest"]
    store.content.delete(layer)
    with pytest.raises(ImageError, match=f"blob {layer} missing"):
        store.add(md, ["x:1"])
    assert store.list() == []
    assert not store.paths.images.exists() or json.loads(store.paths.images.read_text())["images"] == {}


def test_add_rejects_digest_names(store):
    b = Builder(store)
    md = b.image([make_tar({"x": b"1"})])
    with pytest.raises(InvalidReference):
        store.add(md, [f"x@{md}"])


def test_tag_moves_names_and_dangling(store):
    b = Builder(store)
    one = b.add(["app:1"])
    store.tag("app:1", "app")  # default tag latest
    store.tag(one.id[7:19], "quay.io/x/app:v1")
    assert store.resolve("app:latest").id == one.id
    assert store.resolve("quay.io/x/app:v1").id == one.id
    two = b.add(["app:1", "app:latest", "quay.io/x/app:v1"])
    assert store.resolve("app:1").id == two.id
    dangling = [i for i in store.list() if not i.names]
    assert [i.id for i in dangling] == [one.id]
    with pytest.raises(InvalidReference):
        store.tag("app:1", f"app@{two.manifest_digest}")
    with pytest.raises(ImageNotFound):
        store.tag("nope", "x")
    after = store.untag("app:latest")
    assert "docker.io/library/app:latest" not in after.names
    with pytest.raises(ImageNotFound):
        store.untag("app:latest")


def test_same_config_two_manifests(store):
    """A docker-archive copy of an OCI image has the same ID; moving the name drops the unnamed twin."""
    b = Builder(store)
    tar = make_tar({"f": b"same"})
    first = b.add(["a:1"], layers=[tar])
    cs = store.content
    # the same config and layer, but uncompressed: a different manifest
    layer = cs.ingest_bytes(tar)
    m = oci.Manifest(oci.OCI_MANIFEST, first.manifest.config,
                     (oci.Descriptor(oci.OCI_LAYER, layer.digest, layer.size),))
    md = cs.ingest_bytes(json.dumps(m.to_json()).encode()).digest
    second = store.add(md, ["a:1"], layers={layer.digest: scan_layer(cs.path(layer.digest))})
    assert second.id == first.id and second.manifest_digest != first.manifest_digest
    assert [i.manifest_digest for i in store.list()] == [md]
    assert not cs.has(first.manifest_digest)  # its unique blobs were collected
    assert not cs.has(first.manifest.layers[0].digest)
    assert cs.has(first.id)


def test_rmi_semantics(store):
    b = Builder(store)
    img = b.add(["app:1", "app:2"])
    assert store.remove("app:1") == [("Untagged", "app:1")]
    assert store.resolve("app:2").id == img.id
    assert store.remove("app:2") == [("Untagged", "app:2"), ("Deleted", img.id)]
    assert store.list() == []
    assert list(store.content.digests()) == []  # every blob of it collected

    img = b.add(["app:1", "app:2"])
    # by ID: all tags of one repository go without force
    assert store.remove(img.id[7:19]) == [("Untagged", "app:1"), ("Untagged", "app:2"), ("Deleted", img.id)]

    img = b.add(["app:1", "other:1"])
    with pytest.raises(ImageError, match="referenced in multiple repositories"):
        store.remove(img.id)
    assert store.remove(img.id, force=True)[-1] == ("Deleted", img.id)

    img = b.add(["app:1", "other:1"])
    assert store.remove(f"app@{img.manifest_digest}") == [("Untagged", "app:1")]
    assert store.resolve("other:1").id == img.id
    with pytest.raises(ImageNotFound, match="No such image: nope:latest"):
        store.remove("nope")


def test_rmi_keeps_shared_blobs(store):
    b = Builder(store)
    base = make_tar({"base": b"shared"})
    a = b.add(["a:1"], layers=[base, make_tar({"a": b"1"})])
    c = b.add(["c:1"], layers=[base, make_tar({"c": b"2"})])
    store.remove("a:1")
    assert store.content.has(a.manifest.layers[0].digest)
    assert not store.content.has(a.manifest.layers[1].digest)
    assert store.resolve("c:1") == c
    db = json.loads(store.paths.images.read_text())
    assert set(db["layers"]) == {x.digest for x in c.manifest.layers}


def test_rmi_gc_sweeps_old_strays_only(store):
    b = Builder(store)
    b.add(["a:1"])
    old = store.content.ingest_bytes(b"old stray")
    new = store.content.ingest_bytes(b"new stray (a pull in flight)")
    os.utime(store.content.path(old.digest), (1, 1))
    store.remove("a:1")
    assert not store.content.has(old.digest) and store.content.has(new.digest)


def _write_container(paths: Paths, cid: str, image_id: str) -> None:
    from ketch import db
    conn = db.connect(paths.root)
    conn.execute("INSERT INTO containers (id, name, image, image_name, created) VALUES (?, ?, ?, 'x', '')",
                 (cid, cid[:12], image_id))
    conn.close()


def test_rmi_refuses_image_in_use(store):
    b = Builder(store)
    img = b.add(["app:1"])
    assert store.containers_using(img.id) == []
    cid = "c0ffee" * 10 + "abcd"
    _write_container(store.paths, cid, img.id)
    assert store.containers_using(img.id) == [cid]
    with pytest.raises(ImageError, match=r'unable to remove repository reference "app:1" \(must force\) - '
                                         rf"container {cid[:12]} is using its referenced image {img.short_id}"):
        store.remove("app:1")
    with pytest.raises(ImageError, match=f"being used by stopped container {cid[:12]}"):
        store.remove(img.id)
    # forced: untagged but kept, so the container's layers survive
    assert store.remove("app:1", force=True) == [("Untagged", "app:1")]
    assert store.resolve(img.id).names == ()
    assert store.content.has(img.manifest.layers[0].digest)


def test_rmi_calls_snapshotter(store, monkeypatch):
    calls = []

    class FakeSnapshotter:
        def __init__(self, root):
            calls.append(("init", Path(root)))

        def remove_unused(self, keep):
            calls.append(("keep", set(keep)))

    mod = types.ModuleType("ketch.snapshot.overlay")
    mod.Snapshotter = FakeSnapshotter
    monkeypatch.setitem(sys.modules, "ketch.snapshot.overlay", mod)
    b = Builder(store)
    base = make_tar({"base": b"shared"})
    a = b.add(["a:1"], layers=[base, make_tar({"a": b"1"})])
    c = b.add(["c:1"], layers=[base])
    store.remove("a:1")
    assert calls == [("init", store.paths.snapshots), ("keep", set(c.chain_ids))]
    assert set(a.chain_ids) - set(c.chain_ids)  # a's top layer chain is not kept


def test_created_time():
    assert created_time("1970-01-01T00:01:00Z") == 60
    assert created_time("2024-09-06T12:05:36.123456789Z") == pytest.approx(1725624336.123456)
    assert created_time("2024-09-06T14:05:36+02:00") == 1725624336
    assert created_time(None) is None and created_time("yesterday") is None


def _add_names(root: str, digest: str, prefix: str, n: int) -> None:
    s = ImageStore(Paths(Path(root), Path(root) / "run"))
    for i in range(n):
        s.tag(digest[7:], f"{prefix}:{i}")


def test_concurrent_tagging_is_serialized(store):
    b = Builder(store)
    img = b.add(["base:1"])
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_add_names, args=(str(store.paths.root), img.id, f"p{k}", 15)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(store.resolve("base:1").names) == 1 + 3 * 15
