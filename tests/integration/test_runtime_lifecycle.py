"""The runtime library alone, on a bundle: create leaves PID 1 waiting, start
releases it, state follows, kill and delete (runtime-spec runtime.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from ketch.errors import ContainerStateError, ExecError
from ketch.oci.runtime import default_spec
from ketch.runtime.container import Runtime, Status, wait_exit_code
from tests.conftest import SHARED_IMAGES, mounts_under, require_root

pytestmark = pytest.mark.integration


@pytest.fixture
def bundle(tmp_path):
    require_root()
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"test images not found at {SHARED_IMAGES}")
    layout = SHARED_IMAGES / "alpine"
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"]
                if m["annotations"]["org.opencontainers.image.ref.name"] == "3.20.3")
    manifest = json.loads((layout / "blobs" / "sha256" / desc["digest"][7:]).read_text())
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    subprocess.run(["tar", "-xzf", str(layout / "blobs" / "sha256" / manifest["layers"][0]["digest"][7:]),
                    "-C", str(rootfs)], check=True)
    yield tmp_path
    assert not mounts_under(str(tmp_path))


def write_spec(bundle, *args, **changes):
    spec = default_spec(args=args, terminal=False).with_(**changes)
    (bundle / "config.json").write_text(json.dumps(spec.to_json()))


def test_create_waits_until_start(bundle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_spec(bundle, "sh", "-c", "echo started > /out/marker; sleep 30")
    spec = json.loads((bundle / "config.json").read_text())
    spec["mounts"].append({"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind"]})
    (bundle / "config.json").write_text(json.dumps(spec))
    rt = Runtime(tmp_path / "state")
    st = rt.create("c1", bundle, subreaper=True)
    try:
        assert rt.load("c1").status() is Status.CREATED
        assert os.path.exists(f"/proc/{st.pid}")
        time.sleep(0.2)
        assert not (out / "marker").exists(), "the program ran before start"
        with pytest.raises(ContainerStateError):
            rt.delete("c1")
        rt.start("c1")
        for _ in range(100):
            if (out / "marker").exists():
                break
            time.sleep(0.05)
        assert (out / "marker").read_text() == "started\n"
        assert rt.load("c1").status() is Status.RUNNING
        assert rt.load("c1").to_json()["pid"] == st.pid
        with pytest.raises(ContainerStateError):
            rt.start("c1")
        rt.kill("c1", signal.SIGKILL)
        assert wait_exit_code(st.pid) == 128 + signal.SIGKILL
        assert rt.load("c1").status() is Status.STOPPED
        rt.delete("c1")
        assert not (tmp_path / "state" / "c1").exists()
    finally:
        rt.delete("c1", force=True)


def test_create_reports_missing_program_and_leaves_nothing(bundle, tmp_path):
    write_spec(bundle, "/no/such/program")
    rt = Runtime(tmp_path / "state")
    with pytest.raises(ExecError) as e:
        rt.create("c2", bundle, subreaper=True)
    assert e.value.exit_code == 127
    assert not (tmp_path / "state" / "c2").exists()


def test_duplicate_id_refused(bundle, tmp_path):
    write_spec(bundle, "true")
    rt = Runtime(tmp_path / "state")
    st = rt.create("c3", bundle, subreaper=True)
    try:
        with pytest.raises(ContainerStateError, match="already exists"):
            rt.create("c3", bundle, subreaper=True)
        rt.start("c3")
        assert wait_exit_code(st.pid) == 0
    finally:
        rt.delete("c3", force=True)
