"""User/group resolution in the image's own passwd and group (ketch.engine.users)."""

from __future__ import annotations

import os

import pytest

from ketch.engine.users import (
    ExecUser, parse_group, parse_passwd, read_file_in_root, resolve_user, resolve_user_in_rootfs,
)
from ketch.errors import SpecError

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bob:x:1000:1000:Bob,,,:/home/bob:/bin/bash

+nisuser
alice:x:1001:1001::/home/alice:/bin/sh
dup:x:1000:5::/dup:/bin/sh
nohome:x:1002:1002:::/bin/sh
"""

GROUP = """\
root:x:0:
daemon:x:1:
wheel:x:10:root,bob
bob:x:1000:
alice:x:1001:
audio:x:29:bob,alice
video:x:44:alice
users:x:100:
junk:x:notanumber:bob
"""


@pytest.mark.parametrize("spec, expected", [
    # name
    ("bob", ExecUser(1000, 1000, (1000, 10, 29), "/home/bob")),
    ("root", ExecUser(0, 0, (0, 10), "/root")),
    ("alice", ExecUser(1001, 1001, (1001, 29, 44), "/home/alice")),
    # "" = uid 0, looked up by uid
    ("", ExecUser(0, 0, (0, 10), "/root")),
    # uid: first passwd match wins; numeric is always an ID
    ("1000", ExecUser(1000, 1000, (1000, 10, 29), "/home/bob")),
    ("0", ExecUser(0, 0, (0, 10), "/root")),
    # unknown numeric uid: allowed, gid 0, default home
    ("4242", ExecUser(4242, 0, (0,), "/")),
    # uid:gid — explicit group, no supplementary groups
    ("1000:44", ExecUser(1000, 44, (44,), "/home/bob")),
    ("4242:4343", ExecUser(4242, 4343, (4343,), "/")),
    # name:group, uid:group, name:gid
    ("bob:video", ExecUser(1000, 44, (44,), "/home/bob")),
    ("1001:users", ExecUser(1001, 100, (100,), "/home/alice")),
    ("alice:9999", ExecUser(1001, 9999, (9999,), "/home/alice")),
    ("root:wheel", ExecUser(0, 10, (10,), "/root")),
    # passwd entry without a home directory
    ("nohome", ExecUser(1002, 1002, (1002,), "/")),
])
def test_resolve_user_forms(spec, expected):
    assert resolve_user(spec, PASSWD, GROUP) == expected


@pytest.mark.parametrize("spec, message", [
    ("nobody", "unable to find user nobody: no matching entries in passwd file"),
    ("nobody:0", "unable to find user nobody: no matching entries in passwd file"),
    ("bob:nogroup", "unable to find group nogroup: no matching entries in group file"),
    ("1000:nogroup", "unable to find group nogroup: no matching entries in group file"),
    ("-1", "uids and gids must be in range 0-2147483647"),
    ("0:2147483648", "uids and gids must be in range 0-2147483647"),
])
def test_resolve_user_errors(spec, message):
    with pytest.raises(SpecError) as e:
        resolve_user(spec, PASSWD, GROUP)
    assert str(e.value) == message


@pytest.mark.parametrize("spec, expected", [
    ("", ExecUser(0, 0, (0,), "/root")),
    ("0", ExecUser(0, 0, (0,), "/root")),
    ("1000", ExecUser(1000, 0, (0,), "/")),
    ("1000:1000", ExecUser(1000, 1000, (1000,), "/")),
])
def test_no_passwd_or_group_with_numeric_ids(spec, expected):
    assert resolve_user(spec, None, None) == expected


def test_no_passwd_with_a_name_is_an_error():
    with pytest.raises(SpecError, match="unable to find user bob: no matching entries in passwd file"):
        resolve_user("bob", None, None)
    with pytest.raises(SpecError, match="unable to find group staff"):
        resolve_user("0:staff", None, None)


def test_parsers_skip_garbage():
    assert [u.name for u in parse_passwd(PASSWD)] == ["root", "daemon", "bob", "alice", "dup", "nohome"]
    assert [g.name for g in parse_group(GROUP)][-1] == "users"
    assert parse_group("g:x:5:a,,b")[0].members == ("a", "b")


def test_duplicate_primary_group_membership_is_not_repeated():
    group = "root:x:0:root\nbin:x:1:root,bin\n"
    assert resolve_user("root", "root:x:0:0::/root:/bin/sh\n", group).additional_gids == (0, 1)


# ---------------------------------------------------------------- reading from a rootfs

def _rootfs(tmp_path, passwd=PASSWD, group=GROUP):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return root


def test_resolve_in_rootfs(tmp_path):
    root = _rootfs(tmp_path)
    assert resolve_user_in_rootfs(root, "bob") == ExecUser(1000, 1000, (1000, 10, 29), "/home/bob")


def test_resolve_in_rootfs_without_etc(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    assert resolve_user_in_rootfs(root, "1234:5") == ExecUser(1234, 5, (5,), "/")
    with pytest.raises(SpecError, match="unable to find user app"):
        resolve_user_in_rootfs(root, "app")


@pytest.mark.parametrize("link", [
    "/etc/secret-passwd",            # absolute: must restart at the rootfs, not the host's /
    "../../../../../../etc/secret-passwd",  # relative climbing out: clamped at the rootfs
    "../../etc/secret-passwd",
])
def test_symlinked_passwd_cannot_escape_rootfs(tmp_path, link):
    # a "host" file the image points at, outside the rootfs
    host_etc = tmp_path / "etc"
    host_etc.mkdir()
    (host_etc / "secret-passwd").write_text("evil:x:0:0::/evil:/bin/sh\n")
    root = _rootfs(tmp_path, passwd=None)
    # what the same path means *inside* the rootfs
    (root / "etc" / "secret-passwd").write_text("inside:x:7:7::/inside:/bin/sh\n")
    os.symlink(link, root / "etc" / "passwd")
    assert resolve_user_in_rootfs(root, "inside") == ExecUser(7, 7, (7,), "/inside")
    with pytest.raises(SpecError, match="unable to find user evil"):
        resolve_user_in_rootfs(root, "evil")


def test_symlinked_passwd_to_the_real_host_shadow_reads_the_rootfs(tmp_path):
    root = _rootfs(tmp_path, passwd=None)
    os.symlink("/etc/shadow", root / "etc" / "passwd")
    # /etc/shadow does not exist inside the rootfs: treated as no passwd at all
    assert read_file_in_root(root, "/etc/passwd") is None
    assert resolve_user_in_rootfs(root, "0") == ExecUser(0, 0, (0,), "/root")


def test_symlinked_etc_directory_stays_inside(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("evil:x:0:0::/evil:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "real").mkdir(parents=True)
    (root / "real" / "passwd").write_text("good:x:5:5::/good:/bin/sh\n")
    os.symlink(str(outside), root / "etc")  # absolute host path: means /<outside> inside the rootfs
    assert read_file_in_root(root, "/etc/passwd") is None
    os.unlink(root / "etc")
    os.symlink("../../../real", root / "etc")
    assert read_file_in_root(root, "/etc/passwd") == "good:x:5:5::/good:/bin/sh\n"


def test_symlink_loop_and_non_regular_files(tmp_path):
    root = _rootfs(tmp_path, passwd=None, group=None)
    os.symlink("passwd", root / "etc" / "passwd")
    with pytest.raises(SpecError, match="cannot read /etc/passwd"):
        read_file_in_root(root, "/etc/passwd")
    os.unlink(root / "etc" / "passwd")
    os.mkfifo(root / "etc" / "passwd")  # would block a naive open()+read()
    with pytest.raises(SpecError, match="not a regular file"):
        resolve_user_in_rootfs(root, "0")
    os.unlink(root / "etc" / "passwd")
    (root / "etc" / "passwd").mkdir()
    with pytest.raises(SpecError, match="not a regular file"):
        read_file_in_root(root, "/etc/passwd")
