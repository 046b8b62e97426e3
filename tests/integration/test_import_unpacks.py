"""`ketch import` unpacks at once (as `docker import` extracts): an escaping
entry is refused at import, naming it, and leaves no image and no snapshot."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from tests.conftest import require_root


def _tar(path, entries):
    with tarfile.open(path, "w") as t:
        for name, kind, arg in entries:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, arg
                t.addfile(ti)
            else:
                ti.size = len(arg)
                t.addfile(ti, io.BytesIO(arg))


def test_import_refuses_an_escaping_tar_and_leaves_nothing(ketch_cli, tmp_path):
    require_root()
    target = tmp_path / "outside"
    target.mkdir()
    bad = tmp_path / "bad.tar"
    _tar(bad, [("etc", "dir", None), ("etc/link", "symlink", str(target)),
               ("etc/link/pwned", "file", b"x")])
    p = ketch_cli("import", str(bad), "evil:1")
    assert p.returncode == 125, p.stderr
    assert b"etc/link/pwned" in p.stderr and len(p.stderr.decode().strip().splitlines()) == 1, p.stderr
    assert not os.listdir(target)
    assert ketch_cli.out("images", "-q").split() == []
    assert not [d for d in ketch_cli.root.glob("snapshots/layers/*")]


def test_import_then_run_needs_no_unpack(ketch_cli, tmp_path):
    require_root()
    good = tmp_path / "good.tar"
    _tar(good, [("bin", "dir", None), ("hello.txt", "file", b"hi\n")])
    ketch_cli.out("import", str(good), "tiny:1")
    layers = list(ketch_cli.root.glob("snapshots/layers/*/fs/hello.txt"))
    assert len(layers) == 1 and layers[0].read_bytes() == b"hi\n"
