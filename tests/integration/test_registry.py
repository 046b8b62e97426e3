"""`ketch pull` / `login` / `run` against Debian's docker-registry (CNCF Distribution) on 127.0.0.1.

Three registries share one filesystem storage filled once by ``skopeo copy``:
plain, htpasswd Basic auth (bcrypt hashes made here), and token auth with a
small Bearer token service in this process (RS256 JWTs signed with a key and
certificate made by the openssl CLI).  A fault-injecting reverse proxy in
this process stands between ketch and the plain registry to cut, corrupt,
shorten and refuse responses.  Only loopback addresses are used.  Every
process, server and directory started here is stopped and removed.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED_IMAGES, Ketch, _cleanup, _new_base, require_root
from tests.integration.registry_helpers import (PASSWORD, USER, FaultProxy, Registry, TokenService, free_port,
                                                http_get, layout_manifest, skopeo_copy)

ALPINE = SHARED_IMAGES / "alpine"
BUSYBOX = SHARED_IMAGES / "busybox"

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo") and ALPINE.is_dir()),
    reason="needs docker-registry, skopeo (scripts/setup.sh installs them) and ../shared/images")


ALPINE_3203 = layout_manifest(ALPINE, "3.20.3") if ALPINE.is_dir() else {}
LAYER = ALPINE_3203.get("layers", [""])[0]


# --------------------------------------------------------------------------
# Fixtures


def make_layout(d: Path, tag: str, layers: list[dict[str, bytes]], base: tuple[bytes, str]) -> None:
    """An OCI layout with one image: the ``base`` layer ``(gzip blob, diff ID)`` and gzip layers
    holding ``layers`` (name -> bytes each)."""
    blobs = d / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> tuple[str, int]:
        dg = hashlib.sha256(data).hexdigest()
        (blobs / dg).write_bytes(data)
        return "sha256:" + dg, len(data)

    dg, n = put(base[0])
    descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dg, "size": n}]
    diff_ids = [base[1]]
    for files in layers:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for name, data in files.items():
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
                tf.addfile(ti, io.BytesIO(data))
        raw = buf.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        dg, n = put(gzip.compress(raw, mtime=0))
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": dg, "size": n})
    cfg = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
           "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cdg, cn = put(json.dumps(cfg).encode())
    man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdg, "size": cn},
           "layers": descs}
    mdg, mn = put(json.dumps(man).encode())
    (d / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (d / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdg, "size": mn,
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))


def put_index(reg: Registry, repo: str, tag: str, entries: list[tuple[str, dict]]) -> str:
    """PUT an OCI index of ``repo``'s tagged manifests with the given platforms; returns its digest."""
    manifests = []
    for src_tag, platform in entries:
        status, hdrs, body = http_get(reg.port, f"/v2/{repo}/manifests/{src_tag}",
                                      {"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 200, body
        manifests.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": len(body),
                          "digest": "sha256:" + hashlib.sha256(body).hexdigest(), "platform": platform})
    doc = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": manifests}).encode()
    c = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=10)
    c.request("PUT", f"/v2/{repo}/manifests/{tag}", body=doc,
              headers={"Content-Type": "application/vnd.oci.image.index.v1+json"})
    r = c.getresponse()
    r.read()
    c.close()
    assert r.status == 201, r.status
    return "sha256:" + hashlib.sha256(doc).hexdigest()


@pytest.fixture(scope="module")
def env():
    """Plain, Basic-auth and token-auth registries over one storage, a token service and a fault proxy."""
    base = Path(tempfile.mkdtemp(prefix="ketch-registry-", dir="/var/tmp"))
    started: list = []
    try:
        storage = base / "storage"
        plain = Registry(base, "plain", storage)
        started.append(plain)
        t0 = time.monotonic()
        skopeo_copy(f"oci:{ALPINE}:3.20.3", f"docker://{plain.host}/alpine:3.20.3")
        skopeo_copy(f"oci:{BUSYBOX}:1.37.0-musl", f"docker://{plain.host}/multi:busybox")
        skopeo_copy(f"oci:{ALPINE}:3.20.3", f"docker://{plain.host}/multi:alpine")
        layers = [{f"layer{i}/file": f"content of layer {i}\n".encode() * (i * 20000 + 1)} for i in range(5)]
        layers.append({"layer0/file": b"overridden by the top layer\n"})
        alpine_cfg = json.loads((ALPINE / "blobs/sha256" / ALPINE_3203["config"][7:]).read_bytes())
        make_layout(base / "layered", "v1", layers,
                    ((ALPINE / "blobs/sha256" / LAYER[7:]).read_bytes(), alpine_cfg["rootfs"]["diff_ids"][0]))
        skopeo_copy(f"oci:{base / 'layered'}:v1", f"docker://{plain.host}/layered:v1")
        index_digest = put_index(plain, "multi", "idx", [
            ("alpine", {"os": "linux", "architecture": "amd64"}),
            ("busybox", {"os": "linux", "architecture": "arm64", "variant": "v8"})])
        fill_time = time.monotonic() - t0
        htpasswd = base / "htpasswd"
        import bcrypt
        htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        basic = Registry(base, "basic", storage, f"auth:\n  htpasswd:\n    realm: ketch-test\n    path: {htpasswd}\n")
        started.append(basic)
        tokens = TokenService(base, "ketch-registry", "ketch-test-issuer")
        started.append(tokens)
        token = Registry(base, "token", storage, f"""auth:
  token:
    realm: {tokens.realm}
    service: ketch-registry
    issuer: ketch-test-issuer
    rootcertbundle: {tokens.cert}
""")
        started.append(token)
        proxy = FaultProxy(plain.port)
        started.append(proxy)
        yield {"base": base, "plain": plain, "basic": basic, "token": token, "tokens": tokens, "proxy": proxy,
               "index": index_digest, "fill_time": fill_time}
    finally:
        for s in reversed(started):
            s.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def k(env):
    """A fresh ketch root whose credentials file lives in its own temp dir."""
    kk = Ketch(_new_base("ketch-reg-test-"))
    kk.auth = kk.base / "auth" / "config.json"
    e = dict(os.environ, KETCH_AUTH_FILE=str(kk.auth))

    def call(*args, **kw):
        kw.setdefault("env", e)
        return kk(*args, **kw)

    kk.run_ = call  # every command of a test sees only its own credentials file
    env["proxy"].reset()
    yield kk
    _cleanup(kk)


def run(kk: Ketch, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return kk.run_(*args, input=input)


def ok(kk: Ketch, *args: str, input: bytes | None = None) -> str:
    p = run(kk, *args, input=input)
    assert p.returncode == 0, f"ketch {' '.join(args)} exited {p.returncode}: {p.stderr.decode()}"
    return p.stdout.decode()


def fails(kk: Ketch, *args: str, input: bytes | None = None) -> str:
    p = run(kk, *args, input=input)
    assert p.returncode != 0, f"ketch {' '.join(args)} succeeded: {p.stdout.decode()}"
    err = p.stderr.decode().strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def image_ids(kk: Ketch) -> list[str]:
    return ok(kk, "images", "-q", "--no-trunc").split()


def stored(kk: Ketch) -> set[str]:
    d = kk.root / "content/blobs/sha256"
    return set(os.listdir(d)) if d.is_dir() else set()


# --------------------------------------------------------------------------
# Tests


def test_pull_plain_registry(env, k):
    host = env["plain"].host
    t0 = time.monotonic()
    out = ok(k, "pull", f"{host}/alpine:3.20.3")
    elapsed = time.monotonic() - t0
    lines = out.splitlines()
    assert lines[0] == "3.20.3: Pulling from alpine"
    short = LAYER[7:19]
    assert f"{short}: Pulling fs layer" in lines and f"{short}: Download complete" in lines
    assert lines.index(f"{short}: Pull complete") > lines.index(f"{short}: Download complete")
    assert f"Digest: {ALPINE_3203['digest']}" in lines
    assert f"Status: Downloaded newer image for {host}/alpine:3.20.3" in lines
    assert lines[-1] == f"{host}/alpine:3.20.3"
    (doc,) = json.loads(ok(k, "image", "inspect", f"{host}/alpine:3.20.3"))
    assert doc["Id"] == ALPINE_3203["config"]
    assert doc["RepoDigests"] == [f"{host}/alpine@{ALPINE_3203['digest']}"]
    assert not [b for b in stored(k) if b.startswith(".")]
    # again: nothing fetched, up to date; -q prints the name only; docker:// is the same source
    out = ok(k, "pull", f"docker://{host}/alpine:3.20.3")
    assert f"{short}: Already exists" in out and f"Status: Image is up to date for {host}/alpine:3.20.3" in out
    assert ok(k, "pull", "-q", f"{host}/alpine:3.20.3") == f"{host}/alpine:3.20.3\n"
    # by digest: no new name, same image
    out = ok(k, "pull", "-q", f"{host}/alpine@{ALPINE_3203['digest']}")
    assert out.strip() == f"{host}/alpine@{ALPINE_3203['digest']}"
    assert image_ids(k) == [ALPINE_3203["config"]]
    print(f"registry filled by skopeo in {env['fill_time']:.2f}s; ketch pull alpine:3.20.3 took {elapsed:.2f}s")


def test_pull_layered_image_concurrently_and_run(env, k):
    require_root()
    host = env["plain"].host
    out = ok(k, "pull", f"{host}/layered:v1")
    assert out.count("Pull complete") == 7 and out.count("Pulling fs layer") == 7
    p = run(k, "run", "--rm", f"{host}/layered:v1", "cat", "/layer0/file", "/layer4/file")
    assert p.returncode == 0, p.stderr.decode()
    assert p.stdout.decode().startswith("overridden by the top layer\ncontent of layer 4\n")


def test_run_pulls_a_missing_image(env, k):
    require_root()
    host = env["plain"].host
    p = run(k, "run", "--rm", f"{host}/alpine:3.20.3", "cat", "/etc/os-release")
    assert p.returncode == 0, p.stderr.decode()
    assert "VERSION_ID=3.20.3" in p.stdout.decode()
    err = p.stderr.decode().splitlines()
    assert err[0] == f"Unable to find image '{host}/alpine:3.20.3' locally"
    assert f"{LAYER[7:19]}: Pull complete" in err
    assert image_ids(k) == [ALPINE_3203["config"]]
    # present now: no pull
    p = run(k, "run", "--rm", f"{host}/alpine:3.20.3", "true")
    assert p.returncode == 0 and b"Unable to find" not in p.stderr


def test_platform_selection_from_an_index(env, k):
    host = env["plain"].host
    out = ok(k, "pull", f"{host}/multi:idx")
    assert f"Digest: {env['index']}" in out
    (doc,) = json.loads(ok(k, "image", "inspect", f"{host}/multi:idx"))
    assert doc["Id"] == ALPINE_3203["config"]
    ok(k, "pull", "-q", "--platform", "linux/arm64", f"{host}/multi:idx")
    bb = layout_manifest(BUSYBOX, "1.37.0-musl")
    (doc,) = json.loads(ok(k, "image", "inspect", f"{host}/multi:idx"))
    assert doc["Id"] == bb["config"]
    err = fails(k, "pull", "--platform", "linux/s390x", f"{host}/multi:idx")
    assert "no matching manifest for linux/s390x" in err and "linux/amd64" in err and "linux/arm64/v8" in err
    err = fails(k, "pull", "--platform", "linux/arm64", f"{host}/alpine:3.20.3")
    assert "does not match the specified platform: wanted linux/arm64, actual: linux/amd64" in err
    assert "invalid platform" in fails(k, "pull", "--platform", "linux//x", f"{host}/alpine:3.20.3")


def test_errors_are_one_line_and_name_nothing(env, k):
    host = env["plain"].host
    err = fails(k, "pull", f"{host}/alpine:9.9")
    assert err == f"ketch: manifest for {host}/alpine:9.9 not found: manifest unknown"
    assert "manifest unknown" in fails(k, "pull", f"{host}/nosuch/repo")
    port = free_port()
    err = fails(k, "pull", f"127.0.0.1:{port}/alpine:3.20.3")
    assert err == f"ketch: registry 127.0.0.1:{port} unreachable: connection refused"
    assert "Unable to find image" in run(k, "run", "--rm", f"127.0.0.1:{port}/x", "true").stderr.decode()
    assert image_ids(k) == [] and stored(k) == set()
    assert "--all-tags" in fails(k, "pull", "-a", f"{host}/alpine")


def test_basic_auth(env, k):
    host = env["basic"].host
    err = fails(k, "pull", f"{host}/alpine:3.20.3")
    assert "unauthorized" in err and host in err
    err = fails(k, "login", "-u", USER, "--password-stdin", host, input=b"wrong\n")
    assert "unauthorized" in err and "incorrect username or password" in err
    assert not k.auth.exists()
    p = run(k, "login", "-u", USER, "-p", PASSWORD, host)
    assert p.returncode == 0 and p.stdout.decode() == "Login Succeeded\n"
    assert "--password-stdin" in p.stderr.decode()
    assert stat.S_IMODE(k.auth.stat().st_mode) == 0o600
    doc = json.loads(k.auth.read_text())
    assert base64.b64decode(doc["auths"][host]["auth"]).decode() == f"{USER}:{PASSWORD}"
    assert ok(k, "pull", "-q", f"{host}/alpine:3.20.3").strip() == f"{host}/alpine:3.20.3"
    # a wrong password written in Docker's format by someone else
    doc["auths"][host]["auth"] = base64.b64encode(f"{USER}:nope".encode()).decode()
    k.auth.write_text(json.dumps(doc))
    err = fails(k, "pull", f"{host}/alpine:3.20.3")
    assert "unauthorized" in err
    assert ok(k, "logout", host) == f"Removing login credentials for {host}\n"
    assert json.loads(k.auth.read_text())["auths"] == {}
    assert ok(k, "logout", host) == f"Not logged in to {host}\n"


def test_token_auth(env, k):
    host, tokens = env["token"].host, env["tokens"]
    tokens.requests.clear()
    err = fails(k, "pull", f"{host}/alpine:3.20.3")
    assert "unauthorized" in err and "alpine" in err
    assert tokens.requests and tokens.requests[-1]["user"] is None
    assert tokens.requests[-1]["scope"] == ["repository:alpine:pull"]
    assert tokens.requests[-1]["service"] == ["ketch-registry"]
    err = fails(k, "login", "-u", USER, "--password-stdin", host, input=b"wrong")
    assert "incorrect username or password" in err
    assert ok(k, "login", "-u", USER, "--password-stdin", host, input=PASSWORD.encode()) == "Login Succeeded\n"
    tokens.requests.clear()
    out = ok(k, "pull", f"{host}/alpine:3.20.3")
    assert f"{LAYER[7:19]}: Pull complete" in out
    assert {r["user"] for r in tokens.requests} == {USER}
    assert len(tokens.requests) == 1  # one token, reused for the manifest, config and layer
    ok(k, "logout", host)
    assert "unauthorized" in fails(k, "pull", f"{host}/alpine:3.20.3")


def test_resume_after_a_dropped_connection(env, k):
    proxy = env["proxy"]
    proxy.plan["drop"][LAYER] = 1
    out = ok(k, "pull", f"{proxy.host}/alpine:3.20.3")
    assert "Pull complete" in out
    gets = [(p, r) for m, p, r in proxy.log if m == "GET" and LAYER in p]
    assert len(gets) == 2 and gets[0][1] is None
    assert gets[1][1] and gets[1][1].startswith("bytes=") and int(gets[1][1][6:].rstrip("-")) > 0
    assert image_ids(k) == [ALPINE_3203["config"]]


def test_flipped_byte_is_a_digest_mismatch(env, k):
    proxy = env["proxy"]
    proxy.plan["flip"].append(LAYER)
    err = fails(k, "pull", f"{proxy.host}/alpine:3.20.3")
    assert LAYER in err and "digest mismatch" in err
    assert image_ids(k) == []
    assert LAYER[7:] not in stored(k) and not [b for b in stored(k) if b.startswith(".")]
    proxy.reset()
    assert ok(k, "pull", "-q", f"{proxy.host}/alpine:3.20.3").strip() == f"{proxy.host}/alpine:3.20.3"


def test_truncated_blob_is_an_error(env, k):
    proxy = env["proxy"]
    proxy.plan["short"].append(LAYER)
    err = fails(k, "pull", f"{proxy.host}/alpine:3.20.3")
    assert LAYER in err and "truncated" in err
    assert image_ids(k) == []
    # the partial download is kept, and the next pull resumes from it
    assert [b for b in stored(k) if b.startswith(".ingest-partial-")] == [".ingest-partial-" + LAYER[7:]]
    proxy.reset()
    ok(k, "pull", "-q", f"{proxy.host}/alpine:3.20.3")
    assert [r for m, p, r in proxy.log if m == "GET" and LAYER in p][0].startswith("bytes=")
    assert not [b for b in stored(k) if b.startswith(".")]


def test_transient_errors_are_retried(env, k):
    proxy = env["proxy"]
    proxy.plan["status"] += [("/manifests/", 503, {}), (LAYER, 500, {}), (LAYER, 429, {"Retry-After": "0"}),
                             (ALPINE_3203["config"], 502, {})]
    out = ok(k, "pull", f"{proxy.host}/alpine:3.20.3")
    assert "Pull complete" in out and "Retrying" in out
    assert proxy.plan["status"] == []
    assert len([1 for m, p, _ in proxy.log if LAYER in p]) == 3
    # a registry that keeps failing: the error names the status, after a bounded number of tries
    proxy.reset()
    proxy.plan["status"] += [("/manifests/", 500, {})] * 20
    t0 = time.monotonic()
    err = fails(k, "pull", f"{proxy.host}/alpine:3.20.3")
    assert "answered 500" in err and "gave up after" in err
    assert time.monotonic() - t0 < 15


def test_schema1_is_unsupported(env, k):
    proxy = env["proxy"]
    body = json.dumps({"schemaVersion": 1, "name": "old", "tag": "v1", "architecture": "amd64",
                       "fsLayers": [], "history": []}).encode()
    proxy.plan["replace"]["/manifests/old"] = (200, "application/vnd.docker.distribution.manifest.v1+prettyjws", body)
    err = fails(k, "pull", f"{proxy.host}/alpine:old")
    assert "schema 1 is not supported" in err and "alpine:old" in err
