"""Parsing of docker run flag values (ketch.engine.options)."""

from __future__ import annotations

import os

import pytest

from ketch.engine.options import (
    Mount, RunOptions, merge_tmpfs_options, parse_env, parse_env_file, parse_mount,
    parse_ram_bytes, parse_run_options, parse_tmpfs, parse_volume, parse_workdir,
    tmpfs_size_option, validate_hostname,
)
from ketch.errors import UsageError


# ---------------------------------------------------------------- -v

@pytest.mark.parametrize("value, expected", [
    ("/h:/c", Mount("bind", "/c", "/h", propagation="rprivate", create_source=True)),
    ("/h:/c:ro", Mount("bind", "/c", "/h", read_only=True, propagation="rprivate", create_source=True)),
    ("/h:/c:rw", Mount("bind", "/c", "/h", propagation="rprivate", create_source=True)),
    ("/h:/c:z", Mount("bind", "/c", "/h", propagation="rprivate", create_source=True)),
    ("/h:/c:ro,Z", Mount("bind", "/c", "/h", read_only=True, propagation="rprivate", create_source=True)),
    ("/h:/c:rshared", Mount("bind", "/c", "/h", propagation="rshared", create_source=True)),
    ("/h:/c:ro,slave,cached", Mount("bind", "/c", "/h", read_only=True, propagation="slave", create_source=True)),
    ("/h//x/../y/:/c/./d/", Mount("bind", "/c/d", "/h/y", propagation="rprivate", create_source=True)),
])
def test_parse_volume_binds(value, expected):
    assert parse_volume(value) == expected


def test_parse_volume_relative_dot_is_made_absolute():
    assert parse_volume("./data:/c", cwd="/work").source == "/work/data"
    assert parse_volume(".:/c", cwd="/work").source == "/work"


@pytest.mark.parametrize("value, message", [
    ("", "invalid volume specification: ''"),
    (":/c", "invalid volume specification: ':/c'"),
    ("/a:/b:ro:x", "invalid volume specification: '/a:/b:ro:x'"),
    ("/foo:rw", "invalid volume specification: '/foo:rw'"),
    ("/h:/c:bogus", "invalid mode: bogus"),
    ("/h:/c:ro,rw", "invalid mode: ro,rw"),
    ("/h:/c:z,Z", "invalid mode: z,Z"),
    ("/h:/c:shared,slave", "invalid mode: shared,slave"),
    ("/h:c", "invalid volume specification: '/h:c': invalid mount config for type \"bind\": "
             "invalid mount path: 'c' mount path must be absolute"),
    ("/h:/", "invalid volume specification: '/h:/': invalid mount config for type \"bind\": "
             "invalid specification: destination can't be '/'"),
    ("/h:/c:nocopy", "invalid volume specification: '/h:/c:nocopy': invalid mount config for type \"bind\": "
                     "field VolumeOptions must not be specified"),
    ("myvol:/c", "named volumes are not supported yet: myvol"),
    ("myvol:/c:ro", "named volumes are not supported yet: myvol"),
    ("/c", "anonymous volumes are not supported yet: /c"),
])
def test_parse_volume_errors(value, message):
    with pytest.raises(UsageError) as e:
        parse_volume(value)
    assert str(e.value) == message


# ---------------------------------------------------------------- --mount

def test_parse_mount_bind(tmp_path):
    src = str(tmp_path)
    assert parse_mount(f"type=bind,source={src},target=/y") == Mount("bind", "/y", src, propagation="rprivate")
    assert parse_mount(f"type=bind,src={src},dst=/y,readonly") == Mount(
        "bind", "/y", src, read_only=True, propagation="rprivate")
    assert parse_mount(f"type=bind,src={src},destination=/y,ro=true,bind-propagation=rslave") == Mount(
        "bind", "/y", src, read_only=True, propagation="rslave")
    assert parse_mount(f"Type=BIND,Source={src},Target=/y,readonly=false").read_only is False
    assert parse_mount(f"type=bind,src={src},dst=/y,bind-nonrecursive").recursive is False
    assert parse_mount(f"type=bind,src={src},dst=/y,ro=1").read_only is True
    # CSV quoting, as docker/cli reads the value with encoding/csv
    assert parse_mount(f'type=bind,"source={src}",target=/y').source == src


def test_parse_mount_bind_dot_source(tmp_path):
    (tmp_path / "d").mkdir()
    assert parse_mount("type=bind,src=./d,dst=/y", cwd=str(tmp_path)).source == str(tmp_path / "d")


def test_parse_mount_bind_source_must_exist(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UsageError) as e:
        parse_mount(f"type=bind,source={missing},target=/y")
    assert str(e.value) == f'invalid mount config for type "bind": bind source path does not exist: {missing}'
    dangling = tmp_path / "link"
    os.symlink(missing, dangling)
    with pytest.raises(UsageError, match="bind source path does not exist"):
        parse_mount(f"type=bind,source={dangling},target=/y")


@pytest.mark.parametrize("value, expected", [
    ("type=tmpfs,target=/t", Mount("tmpfs", "/t")),
    ("type=tmpfs,dst=/t,tmpfs-size=67108864", Mount("tmpfs", "/t", tmpfs_options=("size=64m",))),
    ("type=tmpfs,dst=/t,tmpfs-size=64m,tmpfs-mode=1777",
     Mount("tmpfs", "/t", tmpfs_options=("mode=1777", "size=64m"))),
    ("type=tmpfs,dst=/t,tmpfs-size=1000", Mount("tmpfs", "/t", tmpfs_options=("size=1000",))),
    ("type=tmpfs,dst=/t,tmpfs-size=2048,ro", Mount("tmpfs", "/t", read_only=True, tmpfs_options=("ro", "size=2k"))),
    ("type=tmpfs,dst=/t,tmpfs-mode=700", Mount("tmpfs", "/t", tmpfs_options=("mode=700",))),
])
def test_parse_mount_tmpfs(value, expected):
    assert parse_mount(value) == expected


@pytest.mark.parametrize("value, message", [
    ("type=bind,source=/tmp", 'invalid argument "type=bind,source=/tmp" for "--mount" flag: target is required'),
    ("type=,target=/t", 'invalid argument "type=,target=/t" for "--mount" flag: type is required'),
    ("type=bind,src=/tmp,dst=/y,foo", 'invalid argument "type=bind,src=/tmp,dst=/y,foo" for "--mount" flag: '
                                      "invalid field 'foo' must be a key=value pair"),
    ("type=bind,src=/tmp,dst=/y,color=red", 'invalid argument "type=bind,src=/tmp,dst=/y,color=red" for '
                                            "\"--mount\" flag: unexpected key 'color' in 'color=red'"),
    ("type=bind,src=/tmp,dst=/y,ro=maybe", 'invalid argument "type=bind,src=/tmp,dst=/y,ro=maybe" for '
                                           '"--mount" flag: invalid value for ro: maybe'),
    ("type=tmpfs,dst=/t,tmpfs-size=lots", 'invalid argument "type=tmpfs,dst=/t,tmpfs-size=lots" for '
                                          '"--mount" flag: invalid value for tmpfs-size: lots'),
    ("type=tmpfs,dst=/t,tmpfs-mode=999", 'invalid argument "type=tmpfs,dst=/t,tmpfs-mode=999" for '
                                         '"--mount" flag: invalid value for tmpfs-mode: 999'),
    ("type=tmpfs,dst=/t,bind-propagation=shared", 'invalid argument "type=tmpfs,dst=/t,bind-propagation=shared" '
                                                  "for \"--mount\" flag: cannot mix 'bind-*' options with mount "
                                                  "type 'tmpfs'"),
    ("type=bind,src=/tmp,dst=/y,tmpfs-size=1", 'invalid argument "type=bind,src=/tmp,dst=/y,tmpfs-size=1" for '
                                               "\"--mount\" flag: cannot mix 'tmpfs-*' options with mount type "
                                               "'bind'"),
    ("type=bind,dst=/y", 'invalid mount config for type "bind": field Source must not be empty'),
    ("type=bind,src=tmp,dst=/y", "invalid mount config for type \"bind\": invalid mount path: 'tmp' mount path "
                                 "must be absolute"),
    ("type=bind,src=/tmp,dst=y", "invalid mount config for type \"bind\": invalid mount path: 'y' mount path "
                                 "must be absolute"),
    ("type=bind,src=/tmp,dst=/", "invalid mount config for type \"bind\": invalid specification: destination "
                                 "can't be '/'"),
    ("type=bind,src=/tmp,dst=/y,bind-propagation=weird", 'invalid mount config for type "bind": invalid '
                                                         "propagation mode: weird"),
    ("type=tmpfs,src=/tmp,dst=/t", 'invalid mount config for type "tmpfs": field Source must not be specified'),
    ("type=npipe,src=/tmp,dst=/t", 'invalid mount config for type "npipe": mount type unknown'),
    ("type=volume,src=data,dst=/d", "named volumes are not supported yet: data"),
    ("source=data,target=/d", "named volumes are not supported yet: data"),
    ("target=/d", "anonymous volumes are not supported yet: /d"),
])
def test_parse_mount_errors(value, message):
    with pytest.raises(UsageError) as e:
        parse_mount(value)
    assert str(e.value) == message


# ---------------------------------------------------------------- --tmpfs

@pytest.mark.parametrize("value, expected", [
    ("/run", Mount("tmpfs", "/run")),
    ("/run:rw,size=64m,exec", Mount("tmpfs", "/run", tmpfs_options=("rw", "size=64m", "exec"))),
    ("/run:ro", Mount("tmpfs", "/run", read_only=True, tmpfs_options=("ro",))),
    ("/a/../run/", Mount("tmpfs", "/run")),
])
def test_parse_tmpfs(value, expected):
    assert parse_tmpfs(value) == expected


@pytest.mark.parametrize("value, message", [
    ("run", "invalid mount path: 'run' mount path must be absolute"),
    ("/", "invalid specification: destination can't be '/'"),
    ("/run:bogus", 'invalid tmpfs option "bogus"'),
    ("/run:color=red", 'invalid tmpfs option "color=red"'),
])
def test_parse_tmpfs_errors(value, message):
    with pytest.raises(UsageError) as e:
        parse_tmpfs(value)
    assert str(e.value) == message


@pytest.mark.parametrize("opts, merged", [
    (["noexec", "nosuid", "nodev", "rprivate"], ("noexec", "nosuid", "nodev", "rprivate")),
    (["noexec", "nosuid", "nodev", "rprivate", "exec"], ("nosuid", "nodev", "rprivate", "exec")),
    (["noexec", "rprivate", "size=1k", "size=2k", "shared"], ("noexec", "size=2k", "shared")),
    (["defaults", "ro", "rw", "mode=1777"], ("rw", "mode=1777")),
    (["nr_inodes=10", "uid=1", "gid=2", "mpol=default"], ("nr_inodes=10", "uid=1", "gid=2", "mpol=default")),
])
def test_merge_tmpfs_options(opts, merged):
    assert merge_tmpfs_options(opts) == merged


@pytest.mark.parametrize("value, n", [
    ("1024", 1024), ("64m", 64 << 20), ("64M", 64 << 20), ("1g", 1 << 30), ("10KiB", 10 << 10),
    ("1.5k", 1536), ("2mb", 2 << 20),
])
def test_parse_ram_bytes(value, n):
    assert parse_ram_bytes(value) == n


@pytest.mark.parametrize("n, opt", [(1 << 30, "size=1g"), (3 << 20, "size=3m"), (1536, "size=1536"),
                                    (2048, "size=2k"), (1 << 31, "size=2g")])
def test_tmpfs_size_option(n, opt):
    assert tmpfs_size_option(n) == opt


# ---------------------------------------------------------------- env

def test_parse_env_resolves_bare_keys_from_caller():
    host = {"HOSTVAR": "from-host", "EMPTY": ""}
    assert parse_env(["A=1", "B=", "HOSTVAR", "EMPTY", "MISSING", "C=x=y"], host) == [
        "A=1", "B=", "HOSTVAR=from-host", "EMPTY=", "MISSING", "C=x=y"]


@pytest.mark.parametrize("bad", ["=x", "=", ""])
def test_parse_env_rejects_empty_key(bad):
    with pytest.raises(UsageError) as e:
        parse_env([bad], {})
    assert str(e.value) == f"invalid environment variable: {bad}"
    with pytest.raises(UsageError):
        RunOptions(env=(bad,))


def test_parse_env_file(tmp_path):
    f = tmp_path / "env"
    f.write_bytes(
        b"\xef\xbb\xbf# a comment\n"
        b"A=1\n"
        b"\n"
        b"   # indented comment\n"
        b"  B=two words  \n"
        b"C=\"quoted\"\r\n"
        b"D=\n"
        b"FROMHOST\n"
        b"UNSET\n"
        b"E=a=b\n"
    )
    assert parse_env_file(f, {"FROMHOST": "h"}) == [
        "A=1", "B=two words  ", 'C="quoted"', "D=", "FROMHOST=h", "UNSET", "E=a=b"]


@pytest.mark.parametrize("content, message", [
    (b"BAD KEY=1\n", "poorly formatted environment: variable 'BAD KEY' contains whitespaces"),
    (b"TRAILING \n", "poorly formatted environment: variable 'TRAILING ' contains whitespaces"),
    (b"=value\n", "poorly formatted environment: no variable name on line '=value'"),
])
def test_parse_env_file_errors(tmp_path, content, message):
    f = tmp_path / "env"
    f.write_bytes(content)
    with pytest.raises(UsageError) as e:
        parse_env_file(f, {})
    assert str(e.value) == message


def test_parse_env_file_not_utf8_or_missing(tmp_path):
    f = tmp_path / "env"
    f.write_bytes(b"A=1\nB=\xff\n")
    with pytest.raises(UsageError, match="invalid utf8 bytes at line 2"):
        parse_env_file(f, {})
    with pytest.raises(UsageError, match="No such file"):
        parse_env_file(tmp_path / "missing", {})


# ---------------------------------------------------------------- simple values, RunOptions

def test_workdir_must_be_absolute():
    assert parse_workdir("/a/b/../c/") == "/a/c"
    with pytest.raises(UsageError) as e:
        parse_workdir("rel")
    assert str(e.value) == "the working directory 'rel' is invalid, it needs to be an absolute path"
    assert RunOptions(workdir="/x//y").workdir == "/x/y"


@pytest.mark.parametrize("name, ok", [
    ("web", True), ("web-1.example.com", True), ("a", True), ("x" * 64, True),
    ("x" * 65, False), ("-bad", False), ("bad-", False), ("sp ace", False), ("a..b", False), ("a_b", False),
])
def test_validate_hostname(name, ok):
    if ok:
        assert validate_hostname(name) == name
    else:
        with pytest.raises(UsageError, match=f"invalid hostname format: {name}"):
            RunOptions(hostname=name)


def test_run_options_is_frozen_and_stores_tuples():
    o = RunOptions(env=["A=1"], command=["echo", "hi"])
    assert o.env == ("A=1",) and o.command == ("echo", "hi")
    with pytest.raises(AttributeError):
        o.tty = True  # type: ignore[misc]


def test_parse_run_options_parses_mount_strings(tmp_path):
    o = parse_run_options(volumes=["/h:/c"], mounts=[f"type=bind,src={tmp_path},dst=/m"],
                          tmpfs=["/t"], tty=True, command=["sh"])
    assert [m.target for m in o.volumes + o.mounts + o.tmpfs] == ["/c", "/m", "/t"]
    assert o.tty and o.command == ("sh",)


def test_user_mounts_duplicates(tmp_path):
    src = str(tmp_path)
    with pytest.raises(UsageError) as e:
        parse_run_options(volumes=["/a:/c", "/b:/c"]).user_mounts()
    assert str(e.value) == "Duplicate mount point: /c"
    with pytest.raises(UsageError, match="Duplicate mount point: /c"):
        parse_run_options(volumes=["/a:/c"], mounts=[f"type=bind,src={src},dst=/c/"]).user_mounts()
    with pytest.raises(UsageError, match="Duplicate mount point: /c"):
        parse_run_options(volumes=["/a:/c"], mounts=["type=tmpfs,dst=/c"]).user_mounts()
    # --tmpfs replaces a bind at the same target; the last --tmpfs wins
    ms = parse_run_options(volumes=["/a:/c"], tmpfs=["/c:size=1k", "/c:size=2k"]).user_mounts()
    assert ms == (Mount("tmpfs", "/c", tmpfs_options=("size=2k",)),)


@pytest.mark.parametrize("name,ok", [
    ("web", True), ("web-1_a.b", True), ("/web", True), ("a1", True),
    ("a", False), ("bad name", False), ("a/b", False), ("-x", False), ("x\ny", False), ("", False),
])
def test_container_names_follow_docker(name, ok):
    from ketch.engine.options import validate_name
    if ok:
        assert RunOptions(name=name).name == name
    else:
        with pytest.raises(UsageError, match="Invalid container name"):
            validate_name(name)
