"""Registry client pieces that need no registry: hosts, platforms, challenges, credentials file, progress."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import stat

import pytest

from ketch.errors import DigestMismatch, ImageError, UsageError
from ketch.image import auth
from ketch.image.progress import PlainProgress, bar
from ketch.image.registry import (Progress, _error_text, _parse_challenge, is_loopback, parse_platform,
                                  platform_str, registry_host, select_platform)
from ketch.image.store import ContentStore
from ketch.oci import image as oci


def test_registry_host_and_loopback():
    assert registry_host("docker.io") == "registry-1.docker.io"
    assert registry_host("quay.io") == "quay.io"
    for h in ("localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000", "127.1.2.3:80", "[::1]:5000", "::1"):
        assert is_loopback(h), h
    for h in ("quay.io", "10.0.0.1:5000", "registry-1.docker.io", "[2001:db8::1]:5000", "localhost.example.com"):
        assert not is_loopback(h), h


@pytest.mark.parametrize("text,want", [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/aarch64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/arm/6", "linux/arm/v6"),
    ("Linux/386", "linux/386"),
])
def test_parse_platform(text, want):
    assert platform_str(parse_platform(text)) == want


@pytest.mark.parametrize("text", ["", "linux/", "a/b/c/d", "linux//v7"])
def test_parse_platform_errors(text):
    with pytest.raises(UsageError, match="invalid platform"):
        parse_platform(text)


def _entry(n: int, os_: str, arch: str, variant: str | None = None) -> oci.Descriptor:
    return oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + f"{n:x}" * 64, 100, platform=oci.Platform(arch, os_, variant))


def test_select_platform():
    entries = [_entry(1, "linux", "amd64"), _entry(2, "linux", "arm", "v6"), _entry(3, "linux", "arm", "v7"),
               _entry(4, "linux", "arm64", "v8"), _entry(5, "windows", "amd64")]
    pick = lambda t: select_platform(entries, parse_platform(t), "x").digest[7:8]  # noqa: E731
    assert pick("linux/amd64") == "1"
    assert pick("linux/arm/v6") == "2"
    assert pick("linux/arm") == "3"
    assert pick("linux/arm64") == "4" and pick("linux/arm64/v8") == "4"
    assert pick("windows/amd64") == "5"
    with pytest.raises(ImageError, match=r"^no matching manifest for linux/s390x in the manifest list entries "
                                         r"of x \(has: linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64/v8, "
                                         r"windows/amd64\)$"):
        pick("linux/s390x")


def test_challenge_and_error_parsing():
    scheme, p = _parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                 'scope="repository:library/alpine:pull,push"')
    assert scheme == "bearer"
    assert p == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                 "scope": "repository:library/alpine:pull,push"}
    assert _parse_challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    body = b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"x"}}]}'
    assert _error_text(body) == "manifest unknown"
    assert _error_text(b'{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}') \
        == "denied: requested access to the resource is denied"
    assert _error_text(b"<html>\nbad gateway</html>") == "<html> bad gateway</html>"


def test_credentials_file_round_trip(tmp_path, monkeypatch):
    f = tmp_path / "docker" / "config.json"
    monkeypatch.setenv("KETCH_AUTH_FILE", str(f))
    assert auth.auth_file() == f
    assert auth.load_credentials("docker.io") is None
    auth.save_credentials("docker.io", auth.Credentials("me", "pw:with:colons"))
    auth.save_credentials("127.0.0.1:5000", auth.Credentials("u", "p"))
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    doc = json.loads(f.read_text())
    assert set(doc["auths"]) == {"https://index.docker.io/v1/", "127.0.0.1:5000"}
    assert base64.b64decode(doc["auths"]["https://index.docker.io/v1/"]["auth"]) == b"me:pw:with:colons"
    assert auth.load_credentials("index.docker.io") == auth.Credentials("me", "pw:with:colons")
    assert auth.load_credentials("127.0.0.1:5000") == auth.Credentials("u", "p")
    assert "p'" not in repr(auth.load_credentials("127.0.0.1:5000"))
    # other keys and URL-style keys written by Docker are kept and understood
    doc["credHelpers"] = {}
    doc["auths"]["https://quay.io/v2/"] = {"auth": base64.b64encode(b"q:r").decode()}
    f.write_text(json.dumps(doc))
    assert auth.load_credentials("quay.io") == auth.Credentials("q", "r")
    assert auth.remove_credentials("docker.io") and not auth.remove_credentials("docker.io")
    assert auth.load_credentials("docker.io") is None
    assert "credHelpers" in json.loads(f.read_text())
    f.write_text("{not json")
    with pytest.raises(ImageError, match="invalid JSON"):
        auth.load_credentials("quay.io")


def test_credential_helper(tmp_path, monkeypatch):
    helper = tmp_path / "bin" / "docker-credential-fake"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread server\n[ "$1" = get ] && [ "$server" = "ghcr.io" ] && '
                      'echo \'{"Username":"hu","Secret":"hs"}\' && exit 0\necho "credentials not found"; exit 1\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:/usr/bin:/bin")
    f = tmp_path / "config.json"
    f.write_text(json.dumps({"credHelpers": {"ghcr.io": "fake"},
                             "auths": {"other.io": {"auth": base64.b64encode(b"a:b").decode()}}}))
    monkeypatch.setenv("KETCH_AUTH_FILE", str(f))
    assert auth.load_credentials("ghcr.io") == auth.Credentials("hu", "hs")
    assert auth.load_credentials("other.io") == auth.Credentials("a", "b")


def test_commit_partial(tmp_path):
    cs = ContentStore(tmp_path / "c")
    data = b"x" * 1000
    desc = oci.Descriptor(oci.OCI_LAYER, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    p = cs.partial_path(desc.digest)
    p.write_bytes(data)
    cs.commit_partial(p, desc, hashlib.sha256(data), source="test")
    assert cs.has(desc.digest, 1000) and not p.exists()
    p.write_bytes(data[:-1] + b"y")
    bad = oci.Descriptor(oci.OCI_LAYER, "sha256:" + "0" * 64, 1000)
    with pytest.raises(DigestMismatch, match="sha256:0{64} \\(test\\): digest mismatch"):
        cs.commit_partial(p, bad, hashlib.sha256(data[:-1] + b"y"), source="test")
    assert not p.exists()


def test_plain_progress_lines():
    out = io.StringIO()
    pp = PlainProgress(out, tty=False)
    for status in ("Pulling fs layer", "Downloading", "Download complete", "Pull complete"):
        pp(Progress("d4e6fd67dcf7", status, 10, 100))
    assert out.getvalue().splitlines() == ["d4e6fd67dcf7: Pulling fs layer", "d4e6fd67dcf7: Download complete",
                                           "d4e6fd67dcf7: Pull complete"]
    tty = io.StringIO()
    pp = PlainProgress(tty, tty=True)
    pp(Progress("aaaaaaaaaaaa", "Pulling fs layer"))
    pp(Progress("bbbbbbbbbbbb", "Pulling fs layer"))
    pp(Progress("aaaaaaaaaaaa", "Downloading", 1_200_000, 3_600_000))
    assert tty.getvalue().endswith("\x1b[2A\r\x1b[2Kaaaaaaaaaaaa: Downloading "
                                   + bar(1_200_000, 3_600_000) + "\x1b[2B\r")
    assert bar(1_200_000, 3_600_000).endswith("1.2MB/3.6MB") and bar(5, 5).startswith("[" + "=" * 49 + ">]")


def _tar(fmt: int) -> bytes:
    import tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        def add(name, typ=tarfile.REGTYPE, data=b"", link=""):
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.linkname, ti.mtime = typ, len(data), link, 0
            tf.addfile(ti, io.BytesIO(data) if data else None)
        add("d", tarfile.DIRTYPE)
        add("d/a", data=b"a" * 1000)
        add("d/" + "long" * 40, data=b"b" * 513)            # long name: PAX or GNU L
        add("d/hard", tarfile.LNKTYPE, link="d/a")           # counted once
        add("d/sym", tarfile.SYMTYPE, link="x" * 150)         # long link: PAX linkpath or GNU K
        add("d/s2", tarfile.SYMTYPE, link="d/a")
        add("d/empty")
        add("d/fifo", tarfile.FIFOTYPE)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
@pytest.mark.parametrize("comp", ["none", "gzip", "gzip2", "zstd2"])
def test_stream_scanner_matches_scan_layer(tmp_path, fmt, comp):
    import gzip
    import tarfile

    import zstandard

    from ketch.image.layers import StreamScanner, scan_layer
    raw = _tar(tarfile.PAX_FORMAT if fmt == "pax" else tarfile.GNU_FORMAT)
    half = len(raw) // 2
    blob = {"none": raw, "gzip": gzip.compress(raw),
            "gzip2": gzip.compress(raw[:half]) + gzip.compress(raw[half:]),
            "zstd2": zstandard.compress(raw[:half]) + zstandard.compress(raw[half:])}[comp]
    p = tmp_path / "layer"
    p.write_bytes(blob)
    want = scan_layer(p)
    assert want.unpacked_size == 1000 + 513 + 150 + 3
    for step in (1, 7, 512, 4096, len(blob)):
        s = StreamScanner()
        for i in range(0, len(blob), step):
            s.feed(blob[i:i + step])
        got = s.result()
        assert got is not None, step
        assert (got.diff_id, got.unpacked_size, got.tar_size) == (want.diff_id, want.unpacked_size, want.tar_size)


def test_stream_scanner_gives_up_on_garbage():
    import gzip

    from ketch.image.layers import StreamScanner
    s = StreamScanner()
    s.feed(gzip.compress(_tar(2))[:-20])  # cut short: no end of stream
    assert s.result() is None
    s = StreamScanner()
    s.feed(b"\x1f\x8b" + b"\0" * 100)
    assert s.result() is None
