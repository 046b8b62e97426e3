"""Pieces of ``ketch save`` and ``ketch push`` that need no registry or store on disk."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from types import SimpleNamespace

import pytest
import zstandard

from ketch.errors import DigestMismatch, ImageError
from ketch.image.push import mount_sources
from ketch.image.reference import parse
from ketch.image.save import _TarWriter, _uncompressed_chunks


def _tar_bytes(n: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = bytes(range(256)) * (n // 256)
        ti = tarfile.TarInfo("f")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_tar_writer_streams_members_of_unknown_size(tmp_path):
    out = tmp_path / "a.tar"
    with open(out, "w+b") as f:
        tw = _TarWriter(f)
        tw.add_bytes("manifest.json", b"[]")
        tw.add_dir("blobs")
        n = tw.add_stream("big.tar", iter([b"x" * 1000, b"y" * 700]))
        tw.close()
    assert n == 1700 and out.stat().st_size % 10240 == 0
    with tarfile.open(out) as tf:
        assert tf.getnames() == ["manifest.json", "blobs", "big.tar"]
        assert tf.extractfile("big.tar").read() == b"x" * 1000 + b"y" * 700
        assert all(m.mtime == 0 and m.uid == 0 for m in tf.getmembers())


@pytest.mark.parametrize("comp", ["none", "gzip", "gzip2", "zstd"])
def test_layers_are_decompressed_and_checked(tmp_path, comp):
    raw = _tar_bytes(300_000)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    blob = {"none": raw, "gzip": gzip.compress(raw, mtime=0),
            "gzip2": gzip.compress(raw[:1000], mtime=0) + gzip.compress(raw[1000:], mtime=0),  # two members
            "zstd": zstandard.ZstdCompressor().compress(raw)}[comp]
    p = tmp_path / "blob"
    p.write_bytes(blob)
    assert b"".join(_uncompressed_chunks(p, diff_id, "L")) == raw
    with pytest.raises(DigestMismatch, match="the config says"):
        b"".join(_uncompressed_chunks(p, "sha256:" + "0" * 64, "L"))


def test_corrupt_or_truncated_gzip_is_an_image_error(tmp_path):
    raw = _tar_bytes(300_000)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    blob = gzip.compress(raw, mtime=0)
    p = tmp_path / "blob"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageError, match="truncated"):
        b"".join(_uncompressed_chunks(p, diff_id, "L"))
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    p.write_bytes(bytes(bad))
    with pytest.raises(ImageError, match="layer L"):
        b"".join(_uncompressed_chunks(p, diff_id, "L"))


def test_mount_sources_are_other_repositories_of_the_same_registry():
    img = SimpleNamespace(names=("127.0.0.1:5000/alpine:3", "127.0.0.1:5000/alpine:latest",
                                 "127.0.0.1:5000/team/app:1", "docker.io/library/alpine:3", "quay.io/x/y:1"))
    assert mount_sources(img, parse("127.0.0.1:5000/team/app:2")) == ["alpine"]
    assert mount_sources(img, parse("127.0.0.1:5000/new:1")) == ["alpine", "team/app"]
    assert mount_sources(img, parse("ghcr.io/a/b:1")) == []
