"""`ketch run` explains a container killed by SIGSEGV/SIGILL/SIGSYS (issue 7 point 2; root only)."""

from __future__ import annotations

import shutil
import subprocess
import tarfile

import pytest

from tests.conftest import require_root
from tests.unit.test_compat_units import VSYSCALL_READ_SRC, cc

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _root():
    require_root()


def test_sigsegv_is_explained_and_exit_code_kept(images):
    # PID 1 ignores signals it has no handler for: a child shell kills itself, PID 1 passes 139 on.
    r = images("run", "--rm", "--network", "none", "alpine:3.20.3", "sh", "-c",
               'echo before; sh -c "kill -SEGV \\$\\$"; exit $?')
    assert r.returncode == 139
    assert r.stdout.decode() == "before\n"
    err = r.stderr.decode().splitlines()
    line = [x for x in err if x.startswith("ketch:")]
    assert len(line) == 1, err
    assert "killed by SIGSEGV (exit 139)" in line[0] and "ketch compat alpine:3.20.3" in line[0]


def test_normal_and_other_exits_print_nothing_extra(images):
    for cmd, code in (("true", 0), ("exit 3", 3), ("exit 137", 137)):
        r = images("run", "--rm", "--network", "none", "alpine:3.20.3", "sh", "-c", cmd)
        assert r.returncode == code
        assert b"ketch:" not in r.stderr


def test_vsyscall_reader_names_the_cause(images, tmp_path):
    from ketch.compat.host import probe
    if probe().vsyscall not in ("xonly", "none"):
        pytest.skip("the vsyscall page is readable on this host")
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    prog = cc(tmp_path, "vread", VSYSCALL_READ_SRC, "-static")
    tar = tmp_path / "img.tar"
    with tarfile.open(tar, "w") as t:
        t.add(prog, "bin/vread")
    images.out("import", str(tar), "vread:explain")
    try:
        r = images("run", "--rm", "--network", "none", "vread:explain", "/bin/vread")
        assert r.returncode == 139
        err = [x for x in r.stderr.decode().splitlines() if x.startswith("ketch:")]
        assert err and "killed by SIGSEGV (exit 139)" in err[0]
        assert "likely cause: /bin/vread reads" in err[0] and "vsyscall page" in err[0]
        assert "ketch compat vread:explain" in err[0]
    finally:
        images("rmi", "vread:explain")


def test_run_path_imports_no_compat(images):
    import sys
    argv = images.argv("run", "--rm", "--network", "none", "alpine:3.20.3", "true")
    argv = argv[argv.index("--root"):]
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "ketch.cli.main", *argv],
                       capture_output=True)
    assert r.returncode == 0, r.stderr
    mods = r.stderr.decode()
    for m in ("ketch.compat", "elftools", "capstone"):
        assert m not in mods
