"""ketch.image.unpack with a source whose ``read(n)`` returns fewer bytes than asked.

A pipe, a socket or an HTTP body does that; only ``b""`` means the end.  The
result of an unpack must not depend on where the reads split the stream:
neither the compression detected from the magic bytes nor the trailing zero
padding a layer may carry after its compressed data.  A real end of stream in
the middle of the data is still an error.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import random
import tarfile

import pytest
import zstandard

from ketch.errors import LayerError
from ketch.image.unpack import apply_layer


class ShortReads(io.RawIOBase):
    """Serves ``data`` in pieces of 1..``most`` bytes (seeded, so a failure replays)."""

    def __init__(self, data: bytes, most: int, seed: int = 0):
        self._b = io.BytesIO(data)
        self._most = most
        self._rng = random.Random(seed)
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.calls += 1
        if n is None or n < 0:
            n = self._most
        return self._b.read(self._rng.randint(1, max(1, min(n, self._most))))


def _layer() -> bytes:
    rng = random.Random(1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for j in range(12):
            data = rng.randbytes(3000 + 700 * j)
            ti = tarfile.TarInfo(f"d/f{j}")
            ti.size, ti.mtime = len(data), 1_600_000_000
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


RAW = _layer()
DIFF_ID = "sha256:" + hashlib.sha256(RAW).hexdigest()
PAD = bytes(4096)  # zero padding after the compressed data (tolerated, as before)

BLOBS = {
    "tar": RAW,
    "gzip": gzip.compress(RAW, mtime=0),
    "gzip-2-members": gzip.compress(RAW[:5000], mtime=0) + gzip.compress(RAW[5000:], mtime=0),
    "gzip-padded": gzip.compress(RAW, mtime=0) + PAD,
    "zstd": zstandard.ZstdCompressor().compress(RAW),
    "xz": lzma.compress(RAW),
    "xz-padded": lzma.compress(RAW) + PAD,
    "bzip2": bz2.compress(RAW),
    "bzip2-padded": bz2.compress(RAW) + PAD,
}


@pytest.mark.parametrize("most", [1, 3, 9, 4096])
@pytest.mark.parametrize("kind", sorted(BLOBS))
def test_short_reads_give_the_same_layer(tmp_path, kind, most):
    n = apply_layer(ShortReads(BLOBS[kind], most), tmp_path / "d", [], DIFF_ID)
    assert n == len(RAW)
    assert sorted(p.name for p in (tmp_path / "d/d").iterdir()) == sorted(f"f{j}" for j in range(12))


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz", "bzip2"])
def test_magic_split_over_reads_is_still_detected(tmp_path, kind):
    # The first read returns one byte: detection must wait for the whole magic number.
    class OneThenRest(io.RawIOBase):
        def __init__(self, data: bytes):
            self._b = io.BytesIO(data)
            self._first = True

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            if self._first:
                self._first = False
                return self._b.read(1)
            return self._b.read(n)

    n = apply_layer(OneThenRest(BLOBS[kind]), tmp_path / "d", [], DIFF_ID)
    assert n == len(RAW)


@pytest.mark.parametrize("kind", ["gzip", "gzip-padded", "xz", "bzip2"])
def test_padding_split_at_every_offset(tmp_path, kind):
    """The member/stream ends exactly at a read boundary and the zeros come in a later read."""
    blob = BLOBS[kind].rstrip(b"\x00") if kind.endswith("padded") else BLOBS[kind]
    end = len(blob)
    blob += PAD
    for cut in (end, end + 1, end + 512):
        class Split(io.RawIOBase):
            def __init__(self, data: bytes):
                self._b = io.BytesIO(data)

            def readable(self) -> bool:
                return True

            def read(self, n: int = -1) -> bytes:
                pos = self._b.tell()
                if pos < cut:
                    n = min(n, cut - pos)
                return self._b.read(n)

        dest = tmp_path / f"d{cut}"
        assert apply_layer(Split(blob), dest, [], DIFF_ID) == len(RAW)


@pytest.mark.parametrize("compress", [lambda b: gzip.compress(b, mtime=0), lzma.compress,
                                      bz2.compress],
                         ids=["gzip", "xz", "bzip2"])
def test_data_after_padding_is_refused_wherever_reads_split(tmp_path, compress):
    blob = compress(RAW) + PAD + compress(RAW)
    for most in (7, 4096, 1 << 20):
        dest = tmp_path / f"d{most}"
        with pytest.raises(LayerError, match="corrupt|truncated"):
            apply_layer(ShortReads(blob, most), dest, [], None)
        assert not dest.exists()


@pytest.mark.parametrize("kind,match", [("gzip", "truncated gzip"), ("xz", "truncated"),
                                        ("bzip2", "truncated"), ("zstd", "truncated zstd")])
def test_a_real_early_end_is_still_truncated(tmp_path, kind, match):
    cut = BLOBS[kind][:len(BLOBS[kind]) // 2]
    with pytest.raises(LayerError, match=match):
        apply_layer(ShortReads(cut, 5), tmp_path / "d", [], None)
    assert not (tmp_path / "d").exists()
