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
import socket
import stat
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import SHARED_IMAGES, Ketch, _cleanup, _new_base, require_root

ALPINE = SHARED_IMAGES / "alpine"
BUSYBOX = SHARED_IMAGES / "busybox"
USER, PASSWORD = "ketch", "s3cret-pw"

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo") and ALPINE.is_dir()),
    reason="needs docker-registry, skopeo (scripts/setup.sh installs them) and ../shared/images")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def layout_manifest(layout: Path, tag: str) -> dict:
    idx = json.loads((layout / "index.json").read_text())
    (e,) = [m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    m = json.loads((layout / "blobs/sha256" / e["digest"][7:]).read_bytes())
    return {"digest": e["digest"], "size": e["size"], "layers": [x["digest"] for x in m["layers"]],
            "config": m["config"]["digest"]}


ALPINE_3203 = layout_manifest(ALPINE, "3.20.3") if ALPINE.is_dir() else {}
LAYER = ALPINE_3203.get("layers", [""])[0]


class Registry:
    """One ``docker-registry serve`` process on 127.0.0.1:port."""

    def __init__(self, base: Path, name: str, storage: Path, auth: str = ""):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        cfg = base / f"{name}.yml"
        cfg.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{self.port}
  secret: ketch-test-secret
{auth}""")
        self.log = open(base / f"{name}.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                status, _, _ = http_get(self.port, "/v2/")
                if status in (200, 401):
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"docker-registry {name} did not start: {(base / f'{name}.log').read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# --------------------------------------------------------------------------
# Token service (Docker's registry token spec, RS256 JWT)


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def libtrust_key_id(der_spki: bytes) -> str:
    """libtrust's KeyID: base32 of the first 240 bits of sha256(SPKI DER), in groups of 4."""
    s = base64.b32encode(hashlib.sha256(der_spki).digest()[:30]).decode().rstrip("=")
    return ":".join(s[i:i + 4] for i in range(0, len(s), 4))


class TokenService:
    def __init__(self, base: Path, service: str, issuer: str):
        self.key = base / "token.key"
        self.cert = base / "token.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "2", "-subj", "/CN=ketch-test-token"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pub = subprocess.run(f"openssl x509 -in {self.cert} -pubkey -noout | openssl pkey -pubin -outform DER",
                             shell=True, check=True, stdout=subprocess.PIPE).stdout
        self.kid = libtrust_key_id(pub)
        self.service, self.issuer = service, issuer
        self.requests: list[dict] = []
        svc = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if (u, p) != (USER, PASSWORD):
                        svc.requests.append({"user": u, "ok": False, "scope": q.get("scope")})
                        self.send_response(401)
                        self.send_header("Content-Type", "application/json")
                        body = b'{"details":"incorrect username or password"}'
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                    user = u
                scopes = q.get("scope", [])
                svc.requests.append({"user": user, "ok": True, "scope": scopes, "service": q.get("service")})
                access = []
                if user:
                    for sc in scopes:
                        typ, name, actions = sc.split(":")
                        access.append({"type": typ, "name": name, "actions": actions.split(",")})
                body = json.dumps({"token": svc.token(user or "", access), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, sub: str, access: list) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {"iss": self.issuer, "sub": sub, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                             stdout=subprocess.PIPE, check=True).stdout
        return f"{signing}.{_b64url(sig)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------
# Fault-injecting reverse proxy


class FaultProxy:
    """Forwards to a registry; ``plan`` entries (matched on a substring of the path) inject faults:

    * ``status``: list of ``(substr, code, headers)`` answered once each instead of forwarding;
    * ``drop``: ``{substr: count}`` — send the headers and half of the body, then close (count times);
    * ``flip``: substrings whose body gets one byte flipped (always);
    * ``short``: substrings whose body is served half-length with a matching Content-Length,
      and whose Range requests get 416 (a blob shorter than its descriptor);
    * ``replace``: ``{substr: (code, content_type, body)}`` served instead of forwarding.
    """

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.lock = threading.Lock()
        self.reset()
        proxy = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self.handle_any("HEAD")

            def do_GET(self):
                self.handle_any("GET")

            def reply(self, code: int, headers: dict, body: bytes, send_len: int | None = None) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if send_len is None else send_len))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def handle_any(self, method: str) -> None:
                path, rng = self.path, self.headers.get("Range")
                with proxy.lock:
                    proxy.log.append((method, path, rng))
                    plan = proxy.plan
                    fault = None
                    for i, (sub, code, hdrs) in enumerate(plan["status"]):
                        if sub in path:
                            fault = ("status", code, hdrs)
                            del plan["status"][i]
                            break
                    if fault is None:
                        for sub, n in plan["drop"].items():
                            if sub in path and n > 0:
                                plan["drop"][sub] = n - 1
                                fault = ("drop",)
                                break
                    if fault is None:
                        for sub, resp in plan["replace"].items():
                            if sub in path:
                                fault = ("replace", *resp)
                    flip = any(sub in path for sub in plan["flip"])
                    short = any(sub in path for sub in plan["short"])
                if fault and fault[0] == "status":
                    self.reply(fault[1], {"Content-Type": "application/json", **fault[2]},
                               b'{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}')
                    return
                if fault and fault[0] == "replace":
                    self.reply(fault[1], {"Content-Type": fault[2]}, fault[3])
                    return
                if short and rng:
                    self.reply(416, {"Content-Type": "application/json"}, b"{}")
                    return
                c = http.client.HTTPConnection("127.0.0.1", proxy.upstream, timeout=30)
                try:
                    fwd = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept", "range")}
                    c.request(method, path, headers=fwd)
                    r = c.getresponse()
                    body = r.read()
                    headers = {k: v for k, v in r.getheaders()
                               if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                finally:
                    c.close()
                if flip and body:
                    b = bytearray(body)
                    b[len(b) // 2] ^= 0xFF
                    body = bytes(b)
                if short and body:
                    body = body[: len(body) // 2]
                if fault and fault[0] == "drop" and len(body) > 2:
                    self.send_response(r.status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.reply(r.status, headers, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        with self.lock:
            self.plan = {"status": [], "drop": {}, "flip": [], "short": [], "replace": {}}
            self.log: list[tuple[str, str, str | None]] = []

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


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


def skopeo_copy(src: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", src, dest], check=True, timeout=120)


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
