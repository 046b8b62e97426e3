"""`ketch image prune -a` when two stored manifests share one image ID."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import SHARED_IMAGES


def test_prune_all_with_one_image_stored_twice(ketch_cli, tmp_path):
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"test images not found at {SHARED_IMAGES}")
    if not shutil.which("skopeo"):
        pytest.skip("skopeo is not installed (scripts/setup.sh installs it)")
    archive = tmp_path / "alpine.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{SHARED_IMAGES / 'alpine'}:3.20.3",
                    f"docker-archive:{archive}:copy/alpine:3.20.3"], check=True)
    ketch_cli.out("pull", "-q", f"oci:{SHARED_IMAGES / 'alpine'}:3.20.3")
    ketch_cli.out("load", "-q", "-i", str(archive))
    ketch_cli.out("pull", "-q", f"oci:{SHARED_IMAGES / 'alpine'}:3.14.10")
    assert len(ketch_cli.out("images", "-q").split()) >= 2
    p = ketch_cli("image", "prune", "-a", "-f")
    assert p.returncode == 0, p.stderr
    assert ketch_cli.out("images", "-q").split() == []
