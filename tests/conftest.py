"""Shared fixtures.

Tests by privilege (DESIGN.md): ``tests/unit`` need nothing; ``tests/integration``
need root and a real kernel and skip, with the reason, where a facility is
missing.  Every fixture removes what it made; the session ends by checking that
no mount of the tests' directories is left behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SHARED_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"
KETCH = [sys.executable, "-m", "ketch.cli.main"]
_BIN = Path(sys.executable).parent / "ketch"
if _BIN.exists():
    KETCH = [str(_BIN)]

ALPINE_TAGS = ("3.6.5", "3.10.9", "3.14.10", "3.17.10", "3.20.3", "edge-20240923")
BUSYBOX_TAGS = ("1.37.0-glibc", "1.37.0-musl", "1.37.0-uclibc", "1.38.0-glibc", "1.38.0-musl", "1.38.0-uclibc")


def mounts_under(prefix: str) -> list[str]:
    """Mount points (from /proc/self/mountinfo) at or below ``prefix``."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == prefix or mp.startswith(prefix.rstrip("/") + "/"):
                out.append(mp)
    return out


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates namespaces and mounts")
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            pytest.skip("needs overlayfs in the kernel (modprobe overlay)")


class Ketch:
    """Runs the ``ketch`` CLI as a subprocess against an isolated root/runroot."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "root"
        self.runroot = base / "run"

    def argv(self, *args: str) -> list[str]:
        return [*KETCH, "--root", str(self.root), "--runroot", str(self.runroot), *args]

    def __call__(self, *args: str, check: bool = False, input: bytes | None = None,
                 timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.run(self.argv(*args), input=input, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"ketch {' '.join(args)} exited {p.returncode}:\n{p.stderr.decode()}")
        return p

    def out(self, *args: str, **kw) -> str:
        return self(*args, check=True, **kw).stdout.decode()


def _new_base(prefix: str) -> Path:
    # /var/tmp: on disk, where /tmp may be a small tmpfs; snapshots hold whole distributions.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))


def _cleanup(k: Ketch) -> None:
    # Network state lives outside the root (bridges, iptables rules, netns pins): undo it first.
    from ketch.network.manager import cleanup_root
    cleanup_root(k.root, k.runroot)
    leaks = mounts_under(str(k.base))
    for mp in sorted(leaks, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False)
    shutil.rmtree(k.base, ignore_errors=True)
    assert not leaks, f"mounts left behind: {leaks}"


@pytest.fixture
def ketch_cli():
    """A fresh, empty ketch root for one test."""
    k = Ketch(_new_base("ketch-test-"))
    yield k
    _cleanup(k)


@pytest.fixture(scope="session")
def images():
    """A ketch root shared by the session, with every image of ../shared/images pulled."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"test images not found at {SHARED_IMAGES}")
    k = Ketch(_new_base("ketch-images-"))
    for tag in ALPINE_TAGS:
        k.out("pull", "-q", f"oci:{SHARED_IMAGES / 'alpine'}:{tag}")
    for tag in BUSYBOX_TAGS:
        k.out("pull", "-q", f"oci:{SHARED_IMAGES / 'busybox'}:{tag}")
    yield k
    _cleanup(k)


DEBIAN_CACHE = Path(os.environ.get("KETCH_TEST_CACHE", "/var/cache/ketch-tests"))


@pytest.fixture(scope="session")
def debian_rootfs_tar() -> Path:
    """A Debian bookworm minbase rootfs tar built by mmdebstrap, cached outside the repo."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if not shutil.which("mmdebstrap"):
        pytest.skip("mmdebstrap is not installed (scripts/setup.sh installs it)")
    tar = DEBIAN_CACHE / "bookworm-minbase.tar"
    if not tar.exists():
        DEBIAN_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = tar.with_suffix(".tmp")
        p = subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", "--mode=root", "--format=tar",
                            "bookworm", str(tmp)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        if p.returncode != 0:
            tmp.unlink(missing_ok=True)
            pytest.skip(f"mmdebstrap could not build bookworm (no Debian mirror?): {p.stdout[-300:]!r}")
        tmp.rename(tar)
    return tar


@pytest.fixture(scope="session")
def debian(images, debian_rootfs_tar):
    """The session root with ``debian:bookworm`` imported from the mmdebstrap tar."""
    images.out("import", str(debian_rootfs_tar), "debian:bookworm")
    return images
