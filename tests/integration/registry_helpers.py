"""Registry test helpers shared by test_registry.py and test_push_save.py.

``docker-registry serve`` on 127.0.0.1 (:class:`Registry`), a Bearer token
service (:class:`TokenService`, RS256 JWTs signed with an openssl-made key) and
a fault-injecting reverse proxy (:class:`FaultProxy`).  Loopback only; every
one has a ``stop()`` that ends what it started.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

USER, PASSWORD = "ketch", "s3cret-pw"


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


class Registry:
    """One ``docker-registry serve`` process on 127.0.0.1:port."""

    def __init__(self, base: Path, name: str, storage: Path, auth: str = "", accesslog: bool = False):
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        cfg = base / f"{name}.yml"
        cfg.write_text(f"""version: 0.1
log:
  level: error
  accesslog:
    disabled: {"false" if accesslog else "true"}
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
    * ``replace``: ``{substr: (code, content_type, body)}`` served instead of forwarding;
    * ``cut``: ``{substr: count}`` — read half of a request's body (an upload), then close (count times).

    Every method is forwarded with its body; the ``Host`` header is kept, so the
    registry's ``Location`` answers (upload sessions) point back at the proxy.
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

            def do_POST(self):
                self.handle_any("POST")

            def do_PUT(self):
                self.handle_any("PUT")

            def do_PATCH(self):
                self.handle_any("PATCH")

            def do_DELETE(self):
                self.handle_any("DELETE")

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
                length = int(self.headers.get("Content-Length") or 0)
                with proxy.lock:
                    proxy.log.append((method, path, rng))
                    plan = proxy.plan
                    fault = None
                    cut = False
                    for sub, n in plan["cut"].items():
                        if sub in path and n > 0 and length > 2:
                            plan["cut"][sub] = n - 1
                            cut = True
                            break
                if cut:  # take half of the upload, then hang up
                    self.rfile.read(length // 2)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                req_body = self.rfile.read(length) if length else None
                with proxy.lock:
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
                    fwd = {k: v for k, v in self.headers.items()
                           if k.lower() in ("authorization", "range", "content-type", "host")}
                    if self.headers.get_all("Accept"):  # skopeo sends one Accept header per type
                        fwd["Accept"] = ", ".join(self.headers.get_all("Accept"))
                    c.request(method, path, body=req_body, headers=fwd)  # Host kept: Locations point here
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
            self.plan = {"status": [], "drop": {}, "flip": [], "short": [], "replace": {}, "cut": {}}
            self.log: list[tuple[str, str, str | None]] = []

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def skopeo_copy(src: str, dest: str) -> None:
    subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", src, dest], check=True, timeout=120)


def layout_manifest(layout: Path, tag: str) -> dict:
    """The manifest digest/size, config and layer digests of ``tag`` in an OCI layout."""
    idx = json.loads((layout / "index.json").read_text())
    (e,) = [m for m in idx["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    m = json.loads((layout / "blobs/sha256" / e["digest"][7:]).read_bytes())
    return {"digest": e["digest"], "size": e["size"], "layers": [x["digest"] for x in m["layers"]],
            "config": m["config"]["digest"]}
