"""Unit tests of the runtime's pure parts: mount options, the sync channel,
executable lookup, secure_join, lifecycle rules.  No root needed."""

from __future__ import annotations

import os

import pytest

from ketch.errors import ExecError, KetchError
from ketch.fs import secure_join
from ketch.linux import syscalls as sc
from ketch.runtime import sync
from ketch.runtime.container import Status
from ketch.runtime.init import find_executable
from ketch.runtime.mountopts import parse_options


@pytest.mark.parametrize("opts,flags,prop,data", [
    (("rbind", "ro", "rprivate"), sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY, (sc.MS_PRIVATE | sc.MS_REC,), ""),
    (("nosuid", "noexec", "mode=755", "size=65536k"), sc.MS_NOSUID | sc.MS_NOEXEC, (), "mode=755,size=65536k"),
    (("ro", "rw"), 0, (), ""),                      # later wins, as in mount(8)
    (("noatime", "atime", "nodev"), sc.MS_NODEV, (), ""),
    (("defaults", "newinstance", "ptmxmode=0666"), 0, (), "newinstance,ptmxmode=0666"),
    (("shared", "rslave"), 0, (sc.MS_SHARED, sc.MS_SLAVE | sc.MS_REC), ""),
])
def test_parse_options(opts, flags, prop, data):
    m = parse_options(opts)
    assert (m.flags, m.propagation, m.data) == (flags, prop, data)


def test_bind_remount_flags_only_for_per_mount_flags():
    assert parse_options(("rbind", "ro", "nosuid")).bind_remount_flags == sc.MS_RDONLY | sc.MS_NOSUID
    assert parse_options(("rbind",)).bind_remount_flags == 0


def test_sync_channel_round_trip():
    a, b = sync.Channel.pair()
    try:
        for msg in (sync.Pid(42), sync.Ready(), sync.Error("boom", 127)):
            b.send(msg)
            assert a.recv() == msg
        b.close()
        assert a.recv() is None
    finally:
        a.close()


def test_sync_channel_rejects_garbage():
    a, b = sync.Channel.pair()
    try:
        b.sock.send(b'{"type": "launch-missiles"}')
        with pytest.raises(KetchError, match="malformed"):
            a.recv()
    finally:
        a.close()
        b.close()


def test_sync_error_maps_exec_codes():
    with pytest.raises(ExecError) as e:
        sync.raise_error(sync.Error('exec: "x": executable file not found in $PATH', 127))
    assert e.value.exit_code == 127
    with pytest.raises(KetchError) as e:
        sync.raise_error(sync.Error("mount /proc: EPERM"))
    assert e.value.exit_code == 125


def test_find_executable(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir()
    d2.mkdir()
    (d1 / "tool").write_text("#!/bin/sh\n")  # not executable: skipped in favour of d2's
    (d2 / "tool").write_text("#!/bin/sh\n")
    (d2 / "tool").chmod(0o755)
    (d1 / "dir").mkdir()
    path = f"{d1}:{d2}"
    assert find_executable("tool", path) == str(d2 / "tool")
    with pytest.raises(ExecError) as e:
        find_executable("missing", path)
    assert e.value.exit_code == 127 and "executable file not found in $PATH" in str(e.value)
    with pytest.raises(ExecError) as e:
        find_executable(str(d1 / "dir"), path)
    assert e.value.exit_code == 126
    with pytest.raises(ExecError) as e:
        find_executable(str(tmp_path / "nope"), path)
    assert e.value.exit_code == 127
    if os.geteuid() != 0:  # root may execute anything with any x bit, and reads the rest
        with pytest.raises(ExecError) as e:
            find_executable(str(d1 / "tool"), path)
        assert e.value.exit_code == 126


def test_secure_join_stays_inside(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/etc/shadow", root / "etc" / "passwd")
    os.symlink("../../../..", root / "up")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    assert secure_join(root, "/etc/passwd") == f"{root}/etc/shadow"
    assert secure_join(root, "up/etc") == f"{root}/etc"
    assert secure_join(root, "../../x") == f"{root}/x"
    assert secure_join(root, "/new/dir") == f"{root}/new/dir"
    with pytest.raises(OSError):
        secure_join(root, "loop1/x")


def test_lifecycle_rules():
    assert Status.CREATED.can_start() and not Status.RUNNING.can_start()
    assert Status.RUNNING.can_kill() and Status.CREATED.can_kill() and not Status.STOPPED.can_kill()
    assert Status.STOPPED.can_delete() and not Status.RUNNING.can_delete()
