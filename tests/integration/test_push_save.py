"""`ketch push` and `ketch save`, checked by the tools users would read the results with.

Push: Debian's docker-registry (CNCF Distribution) on 127.0.0.1 — plain (with
its access log on, to see cross-repository mounts), htpasswd Basic auth, and
token auth with the Bearer token service of :mod:`registry_helpers` — all over
one filesystem storage, plus the fault-injecting proxy in front of the plain
one.  What ketch pushes is read by ``skopeo inspect``/``skopeo copy`` and
pulled back by ketch.

Save: archives written by ketch are loaded by ``podman load`` (into an isolated
store under the test's directory, removed with ``podman system reset -f``),
read by skopeo's ``docker-archive:``/``oci-archive:`` transports and by ``ketch
load``, each giving the same image ID.

Loopback only; every process and directory started here is stopped and removed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pty
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import SHARED_IMAGES, Ketch, _cleanup, _new_base
from tests.integration.registry_helpers import (PASSWORD, USER, FaultProxy, Registry, TokenService, free_port,
                                                layout_manifest)

ALPINE = SHARED_IMAGES / "alpine"
BUSYBOX = SHARED_IMAGES / "busybox"

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo") and ALPINE.is_dir()),
    reason="needs docker-registry, skopeo (scripts/setup.sh installs them) and ../shared/images")


A = layout_manifest(ALPINE, "3.20.3") if ALPINE.is_dir() else {}
B = layout_manifest(BUSYBOX, "1.37.0-musl") if BUSYBOX.is_dir() else {}


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["skopeo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    if check:
        assert p.returncode == 0, f"skopeo {' '.join(args)}: {p.stderr.decode()}"
    return p


@pytest.fixture(scope="module")
def env():
    base = Path(tempfile.mkdtemp(prefix="ketch-push-", dir="/var/tmp"))
    started: list = []
    try:
        storage = base / "storage"
        plain = Registry(base, "plain", storage, accesslog=True)
        started.append(plain)
        import bcrypt
        htpasswd = base / "htpasswd"
        htpasswd.write_text(f"{USER}:{bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()}\n")
        basic = Registry(base, "basic", base / "basic-storage",
                         f"auth:\n  htpasswd:\n    realm: ketch-test\n    path: {htpasswd}\n")
        started.append(basic)
        tokens = TokenService(base, "ketch-registry", "ketch-test-issuer")
        started.append(tokens)
        token = Registry(base, "token", base / "token-storage", f"""auth:
  token:
    realm: {tokens.realm}
    service: ketch-registry
    issuer: ketch-test-issuer
    rootcertbundle: {tokens.cert}
""")
        started.append(token)
        proxy = FaultProxy(plain.port)
        started.append(proxy)
        yield {"base": base, "plain": plain, "basic": basic, "token": token, "tokens": tokens, "proxy": proxy}
    finally:
        for s in reversed(started):
            s.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def k(env):
    """A fresh ketch root with alpine:3.20.3 and busybox:1.37.0-musl, and its own credentials file."""
    kk = Ketch(_new_base("ketch-push-test-"))
    kk.env = dict(os.environ, KETCH_AUTH_FILE=str(kk.base / "auth.json"))
    env["proxy"].reset()
    ok(kk, "pull", "-q", f"oci:{ALPINE}:3.20.3")
    ok(kk, "pull", "-q", f"oci:{BUSYBOX}:1.37.0-musl")
    yield kk
    _cleanup(kk)


def run(kk: Ketch, *args: str, input: bytes | None = None, **kw) -> subprocess.CompletedProcess:
    return kk(*args, input=input, env=kk.env, **kw)


def ok(kk: Ketch, *args: str, input: bytes | None = None) -> str:
    p = run(kk, *args, input=input)
    assert p.returncode == 0, f"ketch {' '.join(args)} exited {p.returncode}: {p.stderr.decode()}"
    return p.stdout.decode()


def fails(kk: Ketch, *args: str) -> str:
    p = run(kk, *args)
    assert p.returncode != 0, f"ketch {' '.join(args)} succeeded: {p.stdout.decode()}"
    err = p.stderr.decode().strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def image_id(kk: Ketch, ref: str) -> str:
    return json.loads(ok(kk, "image", "inspect", ref))[0]["Id"]


# --------------------------------------------------------------------------
# push


def test_push_read_by_skopeo_and_pulled_back(env, k):
    host = env["plain"].host
    ok(k, "tag", "alpine:3.20.3", f"{host}/alpine:3.20.3")
    lines = ok(k, "push", f"{host}/alpine:3.20.3").splitlines()
    short = A["layers"][0][7:19]
    assert lines[0] == f"The push refers to repository [{host}/alpine]"
    assert f"{short}: Preparing" in lines and f"{short}: Pushed" in lines
    size = len((ALPINE / "blobs/sha256" / A["digest"][7:]).read_bytes())
    assert lines[-1] == f"3.20.3: digest: {A['digest']} size: {size}"
    # skopeo sees the same manifest (bytes unchanged) and copies the same config out
    doc = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/alpine:3.20.3").stdout)
    assert doc["Digest"] == A["digest"] and doc["Layers"] == A["layers"]
    out = env["base"] / "copied"
    try:
        skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{host}/alpine:3.20.3", f"oci:{out}:x")
        idx = json.loads((out / "index.json").read_text())
        m = json.loads((out / "blobs/sha256" / idx["manifests"][0]["digest"][7:]).read_bytes())
        assert m["config"]["digest"] == A["config"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    # pulled back by another ketch: the same image
    other = Ketch(_new_base("ketch-push-back-"))
    try:
        other.env = k.env
        ok(other, "pull", "-q", f"{host}/alpine:3.20.3")
        assert image_id(other, f"{host}/alpine:3.20.3") == A["config"]
    finally:
        _cleanup(other)
    # again: nothing to send
    out = ok(k, "push", f"{host}/alpine:3.20.3")
    assert f"{short}: Layer already exists" in out and "Pushed" not in out


def test_cross_repository_mount(env, k):
    host = env["plain"].host
    ok(k, "tag", "busybox:1.37.0-musl", f"{host}/busybox:1.37.0-musl")
    ok(k, "push", "-q", f"{host}/busybox:1.37.0-musl")
    # the same image under another repository of that registry: blobs are mounted, not sent
    out = ok(k, "push", "busybox:1.37.0-musl", f"docker://{host}/copies/bb:v1")
    assert f"{B['layers'][0][7:19]}: Mounted from busybox" in out
    log = (env["base"] / "plain.log").read_text()
    mounts = [line for line in log.splitlines() if "mount=" in line and "from=busybox" in line
              and "/v2/copies/bb/blobs/uploads/" in line and '" 201 ' in line]
    assert mounts, "no successful mount in the registry's access log"
    doc = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/copies/bb:v1").stdout)
    assert doc["Digest"] == B["digest"]
    # -q prints the reference only
    assert ok(k, "push", "-q", "busybox:1.37.0-musl", f"{host}/copies/bb:v2") == f"{host}/copies/bb:v2\n"


def test_push_basic_auth(env, k):
    host = env["basic"].host
    ok(k, "tag", "alpine:3.20.3", f"{host}/alpine:3.20.3")
    err = fails(k, "push", f"{host}/alpine:3.20.3")
    assert err.startswith("ketch: unauthorized") and host in err
    ok(k, "login", "-u", USER, "--password-stdin", host, input=PASSWORD.encode())
    out = ok(k, "push", f"{host}/alpine:3.20.3")
    assert "Pushed" in out
    doc = json.loads(skopeo("inspect", "--tls-verify=false", f"--creds={USER}:{PASSWORD}",
                            f"docker://{host}/alpine:3.20.3").stdout)
    assert doc["Digest"] == A["digest"]
    # a wrong password is refused in one line
    auth = json.loads(Path(k.env["KETCH_AUTH_FILE"]).read_text())
    auth["auths"][host]["auth"] = base64.b64encode(f"{USER}:nope".encode()).decode()
    Path(k.env["KETCH_AUTH_FILE"]).write_text(json.dumps(auth))
    assert "unauthorized" in fails(k, "push", "-q", f"{host}/alpine:3.20.3")


def test_push_token_auth_asks_for_push_and_mount_scopes(env, k):
    host, tokens = env["token"].host, env["tokens"]
    ok(k, "tag", "alpine:3.20.3", f"{host}/alpine:3.20.3")
    err = fails(k, "push", f"{host}/alpine:3.20.3")  # anonymous: the token grants nothing
    assert "unauthorized" in err
    ok(k, "login", "-u", USER, "--password-stdin", host, input=PASSWORD.encode())
    ok(k, "push", "-q", f"{host}/alpine:3.20.3")
    tokens.requests.clear()
    ok(k, "tag", "alpine:3.20.3", f"{host}/team/app:1")
    out = ok(k, "push", f"{host}/team/app:1")
    assert "Mounted from alpine" in out
    assert [r["scope"] for r in tokens.requests] == [["repository:team/app:pull,push", "repository:alpine:pull"]]


def test_push_retries_transient_failures(env, k):
    proxy = env["proxy"]
    host = proxy.host
    ok(k, "tag", "alpine:3.20.3", f"{host}/flaky:1")
    proxy.plan["status"] += [("/blobs/uploads/", 503, {}), ("/manifests/1", 500, {}),
                             ("/blobs/sha256:", 429, {"Retry-After": "0"})]
    proxy.plan["cut"]["&digest="] = 1  # one upload is cut halfway: it starts over in a new session
    out = ok(k, "push", f"{host}/flaky:1")
    assert "Pushed" in out
    assert proxy.plan["status"] == [] and proxy.plan["cut"]["&digest="] == 0
    puts = [p for m, p, _ in proxy.log if m == "PUT" and "&digest=" in p]
    assert len(puts) == 3  # config, layer, and the cut one again
    assert len({p.split("?")[0] for p in puts}) == 3  # each in its own upload session
    doc = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/flaky:1").stdout)
    assert doc["Digest"] == A["digest"]
    # a registry that keeps failing: a bounded number of tries, one line naming the status
    proxy.reset()
    proxy.plan["status"] += [("/manifests/", 500, {})] * 20
    t0 = time.monotonic()
    err = fails(k, "push", f"{host}/flaky:1")
    assert "answered 500" in err and "gave up after" in err
    assert time.monotonic() - t0 < 15


def test_push_errors_are_one_line(env, k):
    host = env["plain"].host
    assert fails(k, "push", f"{host}/nosuch:1") == \
        f"ketch: An image does not exist locally with the tag: {host}/nosuch:1"
    assert "No such image" in fails(k, "push", "nosuch:1", f"{host}/x:1")
    port = free_port()
    assert fails(k, "push", "-q", "alpine:3.20.3", f"127.0.0.1:{port}/x:1") == \
        f"ketch: registry 127.0.0.1:{port} unreachable: connection refused"
    assert "digest" in fails(k, "push", "alpine:3.20.3", f"{host}/x@{A['digest']}")


# --------------------------------------------------------------------------
# save


@pytest.fixture
def podman(env):
    """``podman`` in an isolated store under the test's directory, reset afterwards."""
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (scripts/setup.sh installs it)")
    d = Path(tempfile.mkdtemp(prefix="ketch-podman-", dir="/var/tmp"))
    argv = ["podman", "--root", str(d / "root"), "--runroot", str(d / "run"), "--tmpdir", str(d / "tmp"),
            "--storage-driver", "vfs", "--events-backend", "file", "--cgroup-manager", "cgroupfs"]

    def call(*args: str) -> str:
        p = subprocess.run([*argv, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=180)
        assert p.returncode == 0, f"podman {' '.join(args)}: {p.stderr.decode()}"
        return p.stdout.decode()

    try:
        yield call
    finally:
        subprocess.run([*argv, "system", "reset", "-f"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)
        shutil.rmtree(d, ignore_errors=True)


def podman_images(call) -> dict[str, str]:
    out = call("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    return {n: ("sha256:" + i if not i.startswith("sha256:") else i) for n, i in
            (line.split() for line in out.splitlines())}


def config_id(*skopeo_args: str) -> str:
    raw = skopeo("inspect", "--raw", "--config", *skopeo_args).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def test_save_docker_archive_loaded_by_podman_skopeo_and_ketch(env, k, podman):
    f = k.base / "two.tar"
    ok(k, "save", "-o", str(f), "alpine:3.20.3", "busybox:1.37.0-musl")
    assert not [x for x in os.listdir(k.base) if x.startswith(".ketch-save-")]
    assert podman("load", "-q", "-i", str(f))
    imgs = podman_images(podman)
    assert imgs["docker.io/library/alpine:3.20.3"] == A["config"]
    assert imgs["docker.io/library/busybox:1.37.0-musl"] == B["config"]
    assert config_id(f"docker-archive:{f}:alpine:3.20.3") == A["config"]
    assert config_id(f"docker-archive:{f}:busybox:1.37.0-musl") == B["config"]
    other = Ketch(_new_base("ketch-save-load-"))
    try:
        other.env = k.env
        out = ok(other, "load", "-i", str(f))
        assert out == "Loaded image: alpine:3.20.3\nLoaded image: busybox:1.37.0-musl\n"
        assert image_id(other, "alpine:3.20.3") == A["config"]
    finally:
        _cleanup(other)
    # to stdout when it is not a terminal: the same bytes (the archive is deterministic)
    with open(k.base / "stdout.tar", "wb") as out:
        p = run(k, "save", "alpine:3.20.3", "busybox:1.37.0-musl", stdout=out)
    assert p.returncode == 0, p.stderr.decode()
    assert (k.base / "stdout.tar").read_bytes() == f.read_bytes()
    # a pipe works too (not seekable)
    p = subprocess.run(f"{' '.join(k.argv('save', '-o', '-', 'alpine:3.20.3'))} | sha256sum", shell=True,
                       stdout=subprocess.PIPE, check=True)
    ok(k, "save", "-o", str(k.base / "one.tar"), "alpine:3.20.3")
    assert p.stdout.split()[0].decode() == hashlib.sha256((k.base / "one.tar").read_bytes()).hexdigest()


def test_save_oci_archive_loaded_by_podman_skopeo_and_ketch(env, k, podman):
    f = k.base / "alpine-oci.tar"
    ok(k, "save", "--format", "oci-archive", "-o", str(f), "alpine:3.20.3")
    podman("load", "-q", "-i", str(f))
    assert podman_images(podman)["docker.io/library/alpine:3.20.3"] == A["config"]
    assert config_id(f"oci-archive:{f}") == A["config"]
    assert config_id(f"oci-archive:{f}:docker.io/library/alpine:3.20.3") == A["config"]
    # the stored manifest travels unchanged
    assert json.loads(skopeo("inspect", f"oci-archive:{f}").stdout)["Digest"] == A["digest"]
    other = Ketch(_new_base("ketch-save-load-"))
    try:
        other.env = k.env
        assert ok(other, "load", "-i", str(f)) == "Loaded image: alpine:3.20.3\n"
        assert json.loads(ok(other, "image", "inspect", "alpine:3.20.3"))[0]["Descriptor"]["digest"] == A["digest"]
    finally:
        _cleanup(other)


def test_save_a_repository_means_all_its_tags(env, k):
    ok(k, "tag", "busybox:1.37.0-musl", "alpine:bb")
    f = k.base / "repo.tar"
    ok(k, "save", "-o", str(f), "alpine")
    import tarfile
    with tarfile.open(f) as tf:
        doc = json.load(tf.extractfile("manifest.json"))
    assert sorted(t for e in doc for t in e["RepoTags"]) == ["docker.io/library/alpine:3.20.3",
                                                              "docker.io/library/alpine:bb"]
    # by ID: no name recorded
    ok(k, "save", "-o", str(f), A["config"][7:19])
    with tarfile.open(f) as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] is None


def test_save_errors_leave_nothing(env, k):
    f = k.base / "x.tar"
    assert fails(k, "save", "-o", str(f), "alpine:3.20.3", "nosuch:1") == "ketch: No such image: nosuch:1"
    assert fails(k, "save", "-o", str(k.base / "no/dir/x.tar"), "alpine:3.20.3").startswith("ketch: ")
    p = run(k, "save", "--format", "dir", "-o", str(f), "alpine:3.20.3")
    assert p.returncode != 0 and b"invalid choice" in p.stderr
    # a stored layer that no longer matches its diff ID
    blob = k.root / "content/blobs/sha256" / A["layers"][0][7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    err = fails(k, "save", "-o", str(f), "alpine:3.20.3")
    assert A["layers"][0] in err
    assert not f.exists() and not [x for x in os.listdir(k.base) if x.startswith(".ketch-save-")]
    # a terminal is refused, as Docker does
    master, slave = pty.openpty()
    try:
        p = run(k, "save", "busybox:1.37.0-musl", stdout=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert p.returncode != 0 and "cowardly refusing to save to a terminal" in p.stderr.decode()
