"""The image commands driven as a subprocess over the real layouts in /work/shared/images.

No root needed.  The shared layouts are only read; every root, archive and
layout copy lives in a temp directory removed at the end.  skopeo (the
reference implementation of the transports) makes the archives and checks
the IDs; tests needing it skip when it is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "images"
if not SHARED.is_dir():
    SHARED = Path("/work/shared/images")
ALPINE = SHARED / "alpine"
BUSYBOX = SHARED / "busybox"
_BIN = Path(sys.executable).parent / "ketch"
KETCH = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "ketch.cli.main"]

pytestmark = pytest.mark.skipif(not (ALPINE.is_dir() and BUSYBOX.is_dir()),
                                reason=f"test images not found at {SHARED}")


def need_skopeo() -> None:
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed (scripts/setup.sh installs it)")


def layout_tags(layout: Path) -> dict[str, dict]:
    """tag -> {"manifest": digest, "config": digest, "diff_ids": [...]} read straight from the layout."""
    out = {}
    for e in json.loads((layout / "index.json").read_text())["manifests"]:
        m = json.loads((layout / "blobs/sha256" / e["digest"][7:]).read_bytes())
        cfg = json.loads((layout / "blobs/sha256" / m["config"]["digest"][7:]).read_bytes())
        out[e["annotations"]["org.opencontainers.image.ref.name"]] = {
            "manifest": e["digest"], "config": m["config"]["digest"], "diff_ids": cfg["rootfs"]["diff_ids"]}
    return out


class K:
    def __init__(self, root: Path):
        self.root = root

    def __call__(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*KETCH, "--root", str(self.root), *args], input=input,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)

    def out(self, *args: str, input: bytes | None = None) -> str:
        p = self(*args, input=input)
        assert p.returncode == 0, f"ketch {' '.join(args)} exited {p.returncode}: {p.stderr.decode()}"
        return p.stdout.decode()

    def fails(self, *args: str) -> str:
        p = self(*args)
        assert p.returncode != 0, f"ketch {' '.join(args)} succeeded: {p.stdout.decode()}"
        err = p.stderr.decode().strip()
        assert err and "\n" not in err and "Traceback" not in err, err
        return err

    def blobs(self) -> set[str]:
        d = self.root / "content/blobs/sha256"
        return set(os.listdir(d)) if d.is_dir() else set()


@pytest.fixture(scope="module")
def tmpdir_mod():
    d = Path(tempfile.mkdtemp(prefix="ketch-images-cli-", dir="/var/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def full(tmpdir_mod):
    """A root with every alpine tag (one pull each) and every busybox tag (one ``pull -a``)."""
    k = K(tmpdir_mod / "full")
    t0 = time.monotonic()
    for tag in layout_tags(ALPINE):
        assert k.out("pull", "-q", f"oci:{ALPINE}:{tag}").strip() == f"docker.io/library/alpine:{tag}"
    out = k.out("pull", "-q", "--all-tags", f"oci:{BUSYBOX}").split()
    k.elapsed = time.monotonic() - t0
    assert out == [f"docker.io/library/busybox:{t}" for t in layout_tags(BUSYBOX)]
    return k


@pytest.fixture
def fresh(tmpdir_mod):
    d = Path(tempfile.mkdtemp(dir=tmpdir_mod))
    yield K(d / "root"), d
    shutil.rmtree(d, ignore_errors=True)


def test_images_lists_every_tag(full):
    rows = [line.split() for line in full.out("images").splitlines()]
    assert rows[0] == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    got = {(r[0], r[1]): r[2] for r in rows[1:]}
    want = {}
    for repo, layout in (("alpine", ALPINE), ("busybox", BUSYBOX)):
        for tag, info in layout_tags(layout).items():
            want[(repo, tag)] = info["config"][7:19]
    assert got == want
    line = next(x for x in full.out("images", "alpine:3.20.3").splitlines() if x.startswith("alpine"))
    assert line.endswith("7.8MB")  # what `docker images` shows for alpine 3.20.3
    assert sorted(full.out("images", "-q", "busybox").split()) == sorted(
        i["config"][7:19] for i in layout_tags(BUSYBOX).values())
    assert len(full.out("images", "-q", "--no-trunc").split()) == 12
    assert all(x.startswith("sha256:") for x in full.out("images", "-q", "--no-trunc").split())
    assert full.out("images", "nosuch").splitlines()[1:] == []
    print(f"pulled 12 images in {full.elapsed:.2f}s")


def test_pull_again_copies_nothing(full):
    before = {n: os.stat(full.root / "content/blobs/sha256" / n).st_ino for n in full.blobs()}
    out = full.out("pull", f"oci:{ALPINE}:3.20.3")
    assert "Already exists" in out and "Status: Image is up to date for alpine:3.20.3" in out
    assert out.splitlines()[-1] == "docker.io/library/alpine:3.20.3"
    after = {n: os.stat(full.root / "content/blobs/sha256" / n).st_ino for n in full.blobs()}
    assert after == before


def test_inspect_matches_skopeo(full):
    need_skopeo()
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--config", f"oci:{ALPINE}:3.20.3"],
                         stdout=subprocess.PIPE, check=True).stdout
    cfg = json.loads(raw)
    for cmd in (["image", "inspect"], ["inspect"]):
        (doc,) = json.loads(full.out(*cmd, "alpine:3.20.3"))
        assert doc["Id"] == "sha256:" + hashlib.sha256(raw).hexdigest()
        assert doc["RepoTags"] == ["alpine:3.20.3"]
        assert doc["RepoDigests"] == [f"alpine@{layout_tags(ALPINE)['3.20.3']['manifest']}"]
        assert doc["Created"] == cfg["created"]
        assert (doc["Architecture"], doc["Os"]) == (cfg["architecture"], cfg["os"])
        assert doc["Config"]["Cmd"] == cfg["config"]["Cmd"] and doc["Config"]["Env"] == cfg["config"]["Env"]
        assert doc["Config"]["Entrypoint"] is None and doc["Config"]["WorkingDir"] == ""
        assert doc["RootFS"] == {"Type": "layers", "Layers": cfg["rootfs"]["diff_ids"]}
        assert doc["Size"] > 7_000_000
    # every name form resolves to the same image
    iid = json.loads(full.out("image", "inspect", "alpine:3.20.3"))[0]["Id"]
    mdig = layout_tags(ALPINE)["3.20.3"]["manifest"]
    for ref in ("docker.io/library/alpine:3.20.3", iid, iid[7:19], iid[7:11], f"alpine@{mdig}"):
        assert full.out("inspect", "-f", "{{.Id}}", ref).strip() == iid, ref
    docs = json.loads(full.out("image", "inspect", "alpine:3.6.5", "busybox:1.38.0-musl"))
    assert [d["RepoTags"] for d in docs] == [["alpine:3.6.5"], ["busybox:1.38.0-musl"]]
    p = full("image", "inspect", "alpine")
    assert p.returncode == 1 and json.loads(p.stdout) == []
    assert p.stderr.decode().strip() == "Error: No such image: alpine:latest"


def test_docker_archive_round_trip(full, fresh):
    need_skopeo()
    k, d = fresh
    arc = d / "alpine-docker.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{ALPINE}:3.20.3", f"docker-archive:{arc}:alpine:3.20.3"],
                   check=True)
    assert k.out("load", "-i", str(arc)).splitlines() == ["Loaded image: alpine:3.20.3"]
    want = layout_tags(ALPINE)["3.20.3"]["config"]
    assert k.out("inspect", "-f", "{{.Id}}", "alpine:3.20.3").strip() == want
    # the same archive through the transport, from stdin, and into a root holding the OCI copy
    assert k.out("pull", "-q", f"docker-archive:{arc}").strip() == "docker.io/library/alpine:3.20.3"
    assert k.out("load", input=arc.read_bytes()).strip() == "Loaded image: alpine:3.20.3"
    k2 = K(d / "root2")
    k2.out("pull", "-q", f"oci:{ALPINE}:3.20.3")
    k2.out("pull", "-q", f"docker-archive:{arc}:alpine:3.20.3")
    assert k2.out("images", "-q", "--no-trunc").split() == [want]


def test_oci_archive_round_trip(fresh):
    need_skopeo()
    k, d = fresh
    arc = d / "bb.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{BUSYBOX}:1.37.0-musl",
                    f"oci-archive:{arc}:busybox:1.37.0-musl"], check=True)
    assert k.out("pull", "-q", f"oci-archive:{arc}:busybox:1.37.0-musl").strip() == \
        "docker.io/library/busybox:1.37.0-musl"
    info = layout_tags(BUSYBOX)["1.37.0-musl"]
    (doc,) = json.loads(k.out("image", "inspect", "busybox:1.37.0-musl"))
    assert doc["Id"] == info["config"] and doc["Descriptor"]["digest"] == info["manifest"]
    assert k.out("load", "-q", "-i", str(arc)) == ""
    assert k.out("image", "load", "-i", str(arc)).strip() == "Loaded image: busybox:1.37.0-musl"


def test_errors_are_one_line_and_add_nothing(full, fresh):
    k, d = fresh
    import socket
    with socket.socket() as s:  # a loopback port nobody listens on: registries are tested in test_registry.py
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert f"registry 127.0.0.1:{port} unreachable" in k.fails("pull", f"127.0.0.1:{port}/alpine")
    assert f"registry 127.0.0.1:{port} unreachable" in k.fails("pull", f"docker://127.0.0.1:{port}/busybox:1.37.0-musl")
    assert f'no image tagged "9.9"' in k.fails("pull", f"oci:{ALPINE}:9.9")
    assert f"{d}/nope: no such directory" in k.fails("pull", f"oci:{d}/nope:1")
    assert "holds 6 images" in k.fails("pull", f"oci:{ALPINE}")
    assert 'unknown transport "ocix"' in k.fails("pull", f"ocix:{ALPINE}")
    assert "invalid reference format" in k.fails("tag", "x", "Bad:tag")
    assert "No such image: nosuch:latest" in k.fails("rmi", "nosuch")
    # a layout copy with one flipped byte in the 3.20.3 layer
    lay = d / "alpine"
    shutil.copytree(ALPINE, lay)
    layer = json.loads((lay / "blobs/sha256" / layout_tags(ALPINE)["3.20.3"]["manifest"][7:]).read_bytes()
                       )["layers"][0]["digest"]
    p = lay / "blobs/sha256" / layer[7:]
    os.chmod(p, 0o644)
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    err = k.fails("pull", f"oci:{lay}:3.20.3")
    assert layer in err and "digest mismatch" in err
    assert k.out("images", "-q") == ""
    assert not [b for b in k.blobs() if b.startswith(".")] and layer[7:] not in k.blobs()
    # the intact tags of the same copy still pull
    assert k.out("pull", "-q", f"oci:{lay}:3.17.10").strip() == "docker.io/library/alpine:3.17.10"


def test_tag_rmi_and_gc(fresh):
    k, d = fresh
    k.out("pull", "-q", f"oci:{ALPINE}:3.20.3")
    k.out("pull", "-q", f"oci:{ALPINE}:3.17.10")
    iid = layout_tags(ALPINE)["3.20.3"]["config"]
    k.out("tag", "alpine:3.20.3", "myalpine")
    k.out("image", "tag", "myalpine", "localhost:5000/x/alpine:v1")
    lines = k.out("images").splitlines()[1:]
    assert sorted(line.split()[0] for line in lines) == ["alpine", "alpine", "localhost:5000/x/alpine", "myalpine"]
    assert k.out("rmi", "myalpine").splitlines() == ["Untagged: myalpine:latest"]
    p = k("rmi", iid[7:19])
    assert p.returncode == 1 and "referenced in multiple repositories" in p.stderr.decode()
    # a container using the image blocks removal
    from ketch import db
    conn = db.connect(k.root)
    conn.execute("INSERT INTO containers (id, name, image, image_name, created) VALUES (?, 'c', ?, 'x', '')",
                 ("ab" * 32, iid))
    p = k("rmi", "-f", "alpine:3.20.3")  # forced: untagged, kept for the container
    assert p.stdout.decode().splitlines() == ["Untagged: alpine:3.20.3"]
    p = k("rmi", "localhost:5000/x/alpine:v1")
    assert p.returncode == 1 and "must force" in p.stderr.decode() and "abababababab" in p.stderr.decode()
    conn.execute("DELETE FROM containers")
    conn.close()
    assert k.out("image", "rm", "localhost:5000/x/alpine:v1").splitlines() == [
        "Untagged: localhost:5000/x/alpine:v1", f"Deleted: {iid}"]
    assert k.out("rmi", "alpine:3.17.10").splitlines()[-1].startswith("Deleted: sha256:")
    assert k.blobs() == set() and k.out("images", "-q") == ""
    assert json.loads((k.root / "content/index.json").read_text())["manifests"] == []


def test_import_and_prune(fresh):
    k, d = fresh
    src = d / "rootfs"
    (src / "bin").mkdir(parents=True)
    (src / "bin/hello").write_text("hi\n")
    tar = d / "rootfs.tar.gz"
    subprocess.run(["tar", "-C", str(src), "-czf", str(tar), "."], check=True)
    iid = k.out("import", "-c", "CMD [\"/bin/hello\"]", str(tar), "mine:1").strip()
    assert iid.startswith("sha256:") and len(iid) == 71
    (doc,) = json.loads(k.out("image", "inspect", "mine:1"))
    assert doc["Id"] == iid and doc["Os"] == "linux" and doc["Architecture"] == "amd64"
    assert doc["Config"]["Cmd"] == ["/bin/hello"] and doc["Size"] == 3
    import gzip
    assert doc["RootFS"]["Layers"] == ["sha256:" + hashlib.sha256(gzip.decompress(tar.read_bytes())).hexdigest()]
    # untagged import, then prune removes only it
    other = k.out("image", "import", "-m", "second", "-", input=tar.read_bytes()).strip()
    rows = k.out("images").splitlines()[1:]
    assert sorted(r.split()[0] for r in rows) == ["<none>", "mine"]
    out = k.out("image", "prune", "-f")
    assert f"deleted: {other}" in out and iid not in out
    assert k.out("images", "-q", "--no-trunc").split() == [iid]
    assert "not a valid" in k.fails("import", "/etc/hostname", "bad:1")
