"""Transports without root or real images: tiny OCI layouts, archives and rootfs tars built here."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from ketch.cli import images as cli
from ketch.errors import DigestMismatch, ImageError, InvalidReference, LayerError, UsageError
from ketch.image import transports as tr
from ketch.image.store import ImageStore
from ketch.oci import image as oci
from ketch.paths import Paths
from tests.unit.test_store import make_tar, sha


def tar_dir(src: Path, dest: Path) -> None:
    with tarfile.open(dest, "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, p.relative_to(src).as_posix(), recursive=False)


class Layout:
    """Writes an OCI image layout; returns descriptors so tests can break things."""

    def __init__(self, root: Path):
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.entries: list[dict] = []

    def blob(self, data: bytes, media_type: str) -> oci.Descriptor:
        (self.root / "blobs" / "sha256" / sha(data)[7:]).write_bytes(data)
        return oci.Descriptor(media_type, sha(data), len(data))

    def image(self, files: dict[str, bytes], cmd: str = "sh", arch: str = "amd64",
              diff_id: str | None = None) -> tuple[oci.Descriptor, oci.Descriptor, oci.Descriptor]:
        tar = make_tar(files)
        layer = self.blob(gzip.compress(tar, mtime=0), oci.OCI_LAYER_GZIP)
        cfg = {"architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
               "config": {"Cmd": [cmd], "Env": ["PATH=/bin"]},
               "rootfs": {"type": "layers", "diff_ids": [diff_id or sha(tar)]}}
        config = self.blob(json.dumps(cfg).encode(), oci.OCI_CONFIG)
        m = oci.Manifest(oci.OCI_MANIFEST, config, (layer,))
        return self.blob(json.dumps(m.to_json()).encode(), oci.OCI_MANIFEST), config, layer

    def tag(self, desc: oci.Descriptor, tag: str | None, **ann) -> None:
        a = dict(ann)
        if tag:
            a[oci.ANNOTATION_REF_NAME] = tag
        self.entries.append(oci.Descriptor(desc.mediaType, desc.digest, desc.size, a,
                                           desc.platform).to_json())
        self.write_index()

    def write_index(self) -> None:
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.entries}))


@pytest.fixture
def store(tmp_path):
    return ImageStore(Paths(tmp_path / "root", tmp_path / "run"))


@pytest.fixture
def layout(tmp_path):
    return Layout(tmp_path / "myimg")


def stored_files(store: ImageStore) -> set[str]:
    return set(os.listdir(store.content.blobs)) if store.content.blobs.exists() else set()


# --------------------------------------------------------------------------
# source parsing


@pytest.mark.parametrize("text,want", [
    ("oci:/x/alpine:3.20.3", tr.Source("oci", "/x/alpine", "3.20.3")),
    ("oci:/x/alpine", tr.Source("oci", "/x/alpine", None)),
    ("oci:rel/dir:t", tr.Source("oci", "rel/dir", "t")),
    ("oci-archive:/a.tar:alpine:3", tr.Source("oci-archive", "/a.tar", "alpine:3")),
    ("docker-archive:/a.tar:alpine:3", tr.Source("docker-archive", "/a.tar", "alpine:3")),
    ("alpine", tr.Source("docker", "docker.io/library/alpine:latest")),
    ("docker://quay.io/x/y:1", tr.Source("docker", "quay.io/x/y:1")),
    ("localhost:5000/x", tr.Source("docker", "localhost:5000/x:latest")),
])
def test_parse_source(text, want):
    assert tr.parse_source(text) == want


@pytest.mark.parametrize("text,err,msg", [
    ("ocix:/foo", ImageError, 'unknown transport "ocix"'),
    ("dir:/foo", ImageError, 'transport "dir" is not supported'),
    ("oci:", ImageError, "missing path"),
    ("Alpine", InvalidReference, "must be lowercase"),
])
def test_parse_source_errors(text, err, msg):
    with pytest.raises(err, match=msg):
        tr.parse_source(text)


def test_registry_pull_unreachable_is_a_clear_error(store):
    import socket
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImageError, match=f"^registry 127.0.0.1:{port} unreachable: connection refused$"):
        tr.pull(store, f"127.0.0.1:{port}/alpine")
    assert store.list() == []


# --------------------------------------------------------------------------
# oci:


def test_pull_oci_by_tag_and_naming(store, layout):
    m1, c1, l1 = layout.image({"one": b"1"})
    m2, c2, _ = layout.image({"two": b"22"}, cmd="two")
    layout.tag(m1, "1.0")
    layout.tag(m2, "2.0")
    (r,) = tr.pull(store, f"oci:{layout.root}:1.0")
    assert r.names == ("docker.io/library/myimg:1.0",)
    assert r.image.id == c1.digest and r.image.manifest_digest == m1.digest
    assert r.layers == [(l1.digest, "Pull complete")] and not r.up_to_date
    assert store.resolve("myimg:1.0").config.config.Cmd == ("sh",)
    # again: nothing copied, up to date
    (r,) = tr.pull(store, f"oci:{layout.root}:1.0")
    assert r.up_to_date and r.layers == [(l1.digest, "Already exists")]
    # no tag with several images: error naming the tags; --all-tags takes both
    with pytest.raises(ImageError, match=r"holds 2 images.*tags: 1.0, 2.0"):
        tr.pull(store, f"oci:{layout.root}")
    rs = tr.pull(store, f"oci:{layout.root}", all_tags=True)
    assert [x.names for x in rs] == [("docker.io/library/myimg:1.0",), ("docker.io/library/myimg:2.0",)]
    assert store.resolve("myimg:2.0").id == c2.digest


def test_pull_oci_single_untagged_and_full_names(store, tmp_path):
    lay = Layout(tmp_path / "solo")
    m, c, _ = lay.image({"a": b"a"})
    lay.tag(m, None)
    (r,) = tr.pull(store, f"oci:{lay.root}")
    assert r.names == ("docker.io/library/solo:latest",)
    lay.entries.clear()
    lay.tag(m, "quay.io/org/thing:7")
    (r,) = tr.pull(store, f"oci:{lay.root}")
    assert r.names == ("quay.io/org/thing:7",)
    lay.entries.clear()
    lay.tag(m, "v1", **{tr.CONTAINERD_NAME: "docker.io/library/named:v1"})
    (r,) = tr.pull(store, f"oci:{lay.root}:v1")
    assert r.names == ("docker.io/library/named:v1",)


def test_pull_oci_bad_dir_name(store, tmp_path):
    lay = Layout(tmp_path / "Bad_Name")
    m, _, _ = lay.image({"a": b"a"})
    lay.tag(m, "1")
    with pytest.raises(InvalidReference, match='after "Bad_Name"'):
        tr.pull(store, f"oci:{lay.root}:1")


def test_pull_oci_errors_name_the_culprit(store, layout, tmp_path):
    m, c, l = layout.image({"one": b"1"})
    layout.tag(m, "1.0")
    with pytest.raises(ImageError, match=f"{tmp_path}/nope: no such directory"):
        tr.pull(store, f"oci:{tmp_path}/nope:1")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ImageError, match="not an OCI image layout"):
        tr.pull(store, f"oci:{tmp_path}/plain")
    with pytest.raises(ImageError, match=r'no image tagged "9" \(tags: 1.0\)'):
        tr.pull(store, f"oci:{layout.root}:9")
    assert store.list() == []


@pytest.mark.parametrize("which", ["layer", "config", "manifest"])
def test_pull_oci_corrupt_blob(store, layout, which):
    m, c, l = layout.image({"one": b"1" * 1000})
    layout.tag(m, "1.0")
    desc = {"layer": l, "config": c, "manifest": m}[which]
    p = layout.root / "blobs" / "sha256" / desc.digest[7:]
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match=desc.digest):
        tr.pull(store, f"oci:{layout.root}:1.0")
    assert store.list() == []
    assert desc.digest[7:] not in stored_files(store)
    assert not [f for f in stored_files(store) if f.startswith(".")]


def test_pull_oci_truncated_and_missing_blob(store, layout):
    m, c, l = layout.image({"one": b"1" * 1000})
    layout.tag(m, "1.0")
    p = layout.root / "blobs" / "sha256" / l.digest[7:]
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(DigestMismatch, match=l.digest):
        tr.pull(store, f"oci:{layout.root}:1.0")
    p.unlink()
    with pytest.raises(ImageError, match=f"blob {l.digest} missing"):
        tr.pull(store, f"oci:{layout.root}:1.0")
    assert store.list() == []


def test_pull_oci_diff_id_mismatch(store, layout):
    m, c, l = layout.image({"one": b"1"}, diff_id="sha256:" + "0" * 64)
    layout.tag(m, "1.0")
    with pytest.raises(DigestMismatch, match="uncompresses to"):
        tr.pull(store, f"oci:{layout.root}:1.0")
    assert store.list() == []


def test_pull_oci_nested_index_picks_host_platform(store, layout):
    amd, camd, _ = layout.image({"x": b"amd"}, arch="amd64")
    arm, _, _ = layout.image({"x": b"arm"}, arch="arm64")
    idx = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        dict(oci.Descriptor(oci.OCI_MANIFEST, arm.digest, arm.size,
                            platform=oci.Platform("arm64", "linux", "v8")).to_json()),
        dict(oci.Descriptor(oci.OCI_MANIFEST, amd.digest, amd.size,
                            platform=oci.Platform("amd64", "linux")).to_json()),
    ]}
    ix = layout.blob(json.dumps(idx).encode(), oci.OCI_INDEX)
    layout.tag(ix, "multi")
    if tr.host_platform().architecture != "amd64":
        pytest.skip("platform choice is checked on amd64 hosts")
    (r,) = tr.pull(store, f"oci:{layout.root}:multi")
    assert r.image.id == camd.digest and r.image.manifest_digest == amd.digest
    # an index with no image for this host
    idx["manifests"] = idx["manifests"][:1]
    ix2 = layout.blob(json.dumps(idx).encode(), oci.OCI_INDEX)
    layout.tag(ix2, "armonly")
    with pytest.raises(ImageError, match=r"no image for linux/amd64 \(has: linux/arm64\)"):
        tr.pull(store, f"oci:{layout.root}:armonly")


# --------------------------------------------------------------------------
# oci-archive:


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_pull_oci_archive(store, layout, tmp_path, compress):
    m, c, _ = layout.image({"one": b"1"})
    layout.tag(m, "1.0")
    arc = tmp_path / "thing.tar"
    tar_dir(layout.root, arc)
    if compress == "gzip":
        arc.write_bytes(gzip.compress(arc.read_bytes()))
    elif compress == "zstd":
        arc.write_bytes(zstandard.ZstdCompressor().compress(arc.read_bytes()))
    (r,) = tr.pull(store, f"oci-archive:{arc}:1.0")
    assert r.names == ("docker.io/library/thing:1.0",) and r.image.id == c.digest
    with pytest.raises(ImageError, match=r'oci-archive:.*thing.tar: no image tagged "2"'):
        tr.pull(store, f"oci-archive:{arc}:2")
    assert not [f for f in stored_files(store) if f.startswith(".")]  # decompressed temp removed
    (r,) = tr.load(store, arc)  # ref.name "1.0" is only a tag: loaded untagged
    assert r.names == () and r.image.id == c.digest


def test_pull_archive_errors(store, tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        tr.pull(store, f"oci-archive:{tmp_path}/none.tar")
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ImageError, match="not a tar archive"):
        tr.pull(store, f"oci-archive:{junk}")
    empty = tmp_path / "empty.tar"
    empty.write_bytes(make_tar({"hello": b"x"}))
    with pytest.raises(ImageError, match="neither a docker-archive"):
        tr.load(store, empty)


# --------------------------------------------------------------------------
# docker-archive:


def docker_archive(path: Path, images: list[tuple[list[str] | None, list[bytes], dict]],
                   symlink_dupes: bool = True) -> list[bytes]:
    """Write a classic ``docker save`` tar; returns each image's config bytes."""
    manifest, configs = [], []
    with tarfile.open(path, "w") as tf:
        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        written = {}
        for k, (tags, layers, extra) in enumerate(images):
            cfg = {"architecture": "amd64", "os": "linux", "created": "2023-05-01T00:00:00.123456789Z",
                   "config": {"Cmd": ["/bin/true"], "Entrypoint": None}, "docker_version": "24.0.7",
                   "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}, **extra}
            cb = json.dumps(cfg, indent=2).encode()  # not canonical JSON: must be kept byte for byte
            configs.append(cb)
            add(f"{sha(cb)[7:]}.json", cb)
            names = []
            for i, layer in enumerate(layers):
                d = sha(layer)[7:]
                name = f"{d[:20]}{k}{i}/layer.tar"  # like Docker's per-image v1 IDs
                if d in written and symlink_dupes:
                    ti = tarfile.TarInfo(name)
                    ti.type = tarfile.SYMTYPE
                    ti.linkname = f"../{written[d]}"
                    tf.addfile(ti)
                else:
                    add(name, layer)
                    written[d] = name
                names.append(name)
            manifest.append({"Config": f"{sha(cb)[7:]}.json", "RepoTags": tags, "Layers": names})
        add("manifest.json", json.dumps(manifest).encode())
    return configs


def test_docker_archive_load_and_pull(store, tmp_path):
    base = make_tar({"etc/os-release": b"ID=test\n"})
    top = make_tar({"bin/app": b"\x7fELF" + b"0" * 100})
    arc = tmp_path / "save.tar"
    c1, c2, c3 = docker_archive(arc, [(["app:1", "reg.io/app:1"], [base, top], {}),
                                      (["base:latest"], [base], {}),
                                      (None, [top], {})])
    rs = tr.load(store, arc)
    assert [r.names for r in rs] == [("docker.io/library/app:1", "reg.io/app:1"),
                                     ("docker.io/library/base:latest",), ()]
    assert [r.image.id for r in rs] == [sha(c1), sha(c2), sha(c3)]  # Docker's IDs
    img = store.resolve("app:1")
    assert store.content.read_bytes(img.id) == c1
    assert [x.mediaType for x in img.manifest.layers] == [oci.OCI_LAYER, oci.OCI_LAYER]
    assert [x.digest for x in img.manifest.layers] == [sha(base), sha(top)]
    assert img.manifest.mediaType == oci.OCI_MANIFEST
    assert img.config.created.startswith("2023-05-01")
    # pull one by name; nothing copied again
    (r,) = tr.pull(store, f"docker-archive:{arc}:base")
    assert r.names == ("docker.io/library/base:latest",) and r.up_to_date
    with pytest.raises(ImageError, match=r'no image named "nope:1" \(has: app:1, base:latest, reg.io/app:1\)'):
        tr.pull(store, f"docker-archive:{arc}:nope:1")
    with pytest.raises(ImageError, match="holds 3 images"):
        tr.pull(store, f"docker-archive:{arc}")


def test_docker_archive_gzip_via_stream(store, tmp_path):
    layer = make_tar({"f": b"data"})
    arc = tmp_path / "save.tar"
    (cfg,) = docker_archive(arc, [(["x:1"], [layer], {})])
    (r,) = tr.load(store, io.BytesIO(gzip.compress(arc.read_bytes())))
    assert r.image.id == sha(cfg) and r.names == ("docker.io/library/x:1",)
    assert not [f for f in stored_files(store) if f.startswith(".")]


def test_docker_archive_corrupt_layer(store, tmp_path):
    layer = make_tar({"f": b"data"})
    arc = tmp_path / "save.tar"
    docker_archive(arc, [(["x:1"], [layer], {})])
    data = arc.read_bytes()
    i = data.index(b"data")
    arc.write_bytes(data[:i] + b"DATA" + data[i + 4:])
    with pytest.raises(DigestMismatch, match=f"uncompresses to .* but the config says {sha(layer)}"):
        tr.load(store, arc)
    assert store.list() == []


# --------------------------------------------------------------------------
# import


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_import(store, tmp_path, compress):
    tar = make_tar({"bin/sh": b"#!", "etc/hostname": b"box\n"})
    data = {"none": tar, "gzip": gzip.compress(tar), "zstd": zstandard.ZstdCompressor().compress(tar)}[compress]
    f = tmp_path / "rootfs.tar"
    f.write_bytes(data)
    r = tr.import_rootfs(store, f, "mine:1", changes=['CMD ["/bin/sh"]', "ENV A=1 B=2", "WORKDIR /w"],
                         now=lambda: "2024-02-02T00:00:00Z")
    img = r.image
    assert img.names == ("docker.io/library/mine:1",)
    assert img.config.diff_ids == (sha(tar),)
    assert (img.config.os, img.config.architecture) == ("linux", tr.host_platform().architecture)
    assert img.config.created == "2024-02-02T00:00:00Z"
    assert img.config.config.Cmd == ("/bin/sh",) and img.config.config.Env == ("A=1", "B=2")
    assert img.config.config.WorkingDir == "/w"
    assert img.manifest.layers[0].digest == sha(data)
    assert img.manifest.layers[0].mediaType == {"none": oci.OCI_LAYER, "gzip": oci.OCI_LAYER_GZIP,
                                                "zstd": oci.OCI_LAYER_ZSTD}[compress]
    assert img.size == 2 + 4
    assert img.config_json["history"][0]["comment"] == f"Imported from {f}"


def test_import_untagged_stdin_and_errors(store, tmp_path):
    tar = make_tar({"a": b"1"})
    r = tr.import_rootfs(store, io.BytesIO(tar))
    assert r.names == () and store.resolve(r.image.id).names == ()
    assert r.image.config_json["history"][0]["comment"] == "Imported from -"
    bad = tmp_path / "notatar"
    bad.write_bytes(b"hello world" * 100)
    before = stored_files(store)
    with pytest.raises(LayerError, match="notatar: not a valid tar layer"):
        tr.import_rootfs(store, bad, "bad:1")
    assert stored_files(store) == before
    with pytest.raises(ImageError, match="no such file"):
        tr.import_rootfs(store, tmp_path / "missing.tar", "x")
    with pytest.raises(ImageError, match="not supported by import"):
        tr.import_rootfs(store, io.BytesIO(tar), "x", changes=["RUN echo"])


# --------------------------------------------------------------------------
# CLI formatting helpers


@pytest.mark.parametrize("n,want", [(0, "0B"), (999, "999B"), (1000, "1kB"), (7797760, "7.8MB"),
                                    (4421246, "4.42MB"), (1234567890, "1.23GB"), (187_000_000, "187MB")])
def test_human_size(n, want):
    assert cli.human_size(n) == want


@pytest.mark.parametrize("s,want", [(0.5, "Less than a second"), (1, "1 second"), (59, "59 seconds"),
                                    (61, "About a minute"), (3599, "59 minutes"), (3600, "About an hour"),
                                    (47 * 3600, "47 hours"), (3 * 86400, "3 days"), (15 * 86400, "2 weeks"),
                                    (90 * 86400, "3 months"), (800 * 86400, "2 years")])
def test_human_duration(s, want):
    assert cli.human_duration(s) == want


def test_table_like_tabwriter():
    out = cli.table([["REPOSITORY", "TAG", "SIZE"], ["alpine", "3.20.3", "7.8MB"]])
    assert out.splitlines() == ["REPOSITORY   TAG       SIZE", "alpine       3.20.3    7.8MB"]


def test_render_format():
    doc = {"Id": "sha256:x", "Config": {"Cmd": ["/bin/sh", "-c"], "Env": None, "Labels": {"b": "2", "a": "1"}}}
    assert cli.render_format("{{.Id}}", doc) == "sha256:x"
    assert cli.render_format("{{json .Config.Cmd}}|{{.Config.Cmd}}", doc) == '["/bin/sh", "-c"]|[/bin/sh -c]'
    assert cli.render_format("{{.Config.Labels}} {{.Config.Env}}", doc) == "map[a:1 b:2] <nil>"
    with pytest.raises(UsageError):
        cli.render_format("{{range .X}}", doc)
    with pytest.raises(UsageError, match="no entry for key"):
        cli.render_format("{{.Nope}}", doc)
