"""A Debian userland built from Debian's own packages (mmdebstrap), imported and run (root only)."""

from __future__ import annotations

import platform

import pytest

from tests.conftest import require_root

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _root():
    require_root()


def test_debian_os_release_and_host_kernel(debian):
    out = debian.out("run", "--rm", "debian:bookworm", "sh", "-c",
                     ". /etc/os-release; echo $VERSION_CODENAME; uname -r; echo $$")
    assert out.split() == ["bookworm", platform.release(), "1"]


def test_debian_tools_work_inside(debian):
    # dpkg reads its own database from the image, not the host's
    out = debian.out("run", "--rm", "debian:bookworm", "dpkg-query", "-W", "-f", "${Package}\n", "base-files")
    assert out == "base-files\n"


def test_debian_user_from_image_passwd(debian):
    out = debian.out("run", "--rm", "-u", "www-data", "debian:bookworm", "sh", "-c", "id; echo $HOME")
    assert out.split() == ["uid=33(www-data)", "gid=33(www-data)", "groups=33(www-data)", "/var/www"]


def test_debian_devices_and_proc(debian):
    out = debian.out("run", "--rm", "debian:bookworm", "sh", "-c",
                     "head -c 4 /dev/zero | od -An -tx1; echo /proc/[0-9]*; test -w /dev/null && echo ok")
    # the glob is expanded by the shell itself (no child): only PID 1 exists
    assert out.split() == ["00", "00", "00", "00", "/proc/1", "ok"]
