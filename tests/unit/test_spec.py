"""The spec builder: image config + docker run options → OCI spec (ketch.engine.spec)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ketch.engine.options import Mount, RunOptions, parse_run_options
from ketch.engine.spec import (
    DEFAULT_PATH_ENV, build_mounts, build_spec, create_bind_sources, hosts_content, make_hosts_files,
    make_workdir, mount_depth, process_args, process_env, replace_or_append_env, resolv_conf_content,
)
from ketch.errors import SpecError, UsageError
from ketch.oci import runtime as oci
from ketch.oci.image import ExecConfig, ImageConfig

CID = "0123456789abcdef" * 4


def image(**kw) -> ImageConfig:
    return ImageConfig("amd64", "linux", ExecConfig(**kw), ())


@pytest.fixture
def rootfs(tmp_path) -> str:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         "app:x:1000:1000::/home/app:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nwheel:x:10:root,app\napp:x:1000:\n")
    return str(root)


def build(img: ImageConfig, opts: RunOptions, rootfs: str, hosts_files=None, host_env=None) -> oci.Spec:
    return build_spec(img, opts, container_id=CID, rootfs=rootfs, hosts_files=hosts_files,
                      host_env=host_env or {})


# ---------------------------------------------------------------- Entrypoint / Cmd

# Dockerfile reference, "Understand how CMD and ENTRYPOINT interact", plus the
# run-time overrides (--entrypoint, command, --entrypoint "").
E, C = ("/ep", "e1"), ("c1", "c2")


@pytest.mark.parametrize("ep, cmd, flag_ep, user_cmd, expected", [
    # image only
    (None, None, None, (), SpecError),                      # no ENTRYPOINT, no CMD: error
    (None, C, None, (), C),                                  # CMD only
    (E, None, None, (), E),                                  # ENTRYPOINT only
    (E, C, None, (), E + C),                                 # ENTRYPOINT + CMD
    (("/bin/sh", "-c", "ep sh"), C, None, (), ("/bin/sh", "-c", "ep sh") + C),  # shell-form entrypoint
    # user command replaces CMD, keeps ENTRYPOINT
    (None, C, None, ("u",), ("u",)),
    (E, C, None, ("u", "v"), E + ("u", "v")),
    (E, None, None, ("u",), E + ("u",)),
    (None, None, None, ("u",), ("u",)),
    # --entrypoint replaces ENTRYPOINT and clears the image's CMD
    (E, C, "/new", (), ("/new",)),
    (None, C, "/new", (), ("/new",)),
    (E, C, "/new", ("u",), ("/new", "u")),
    (E, C, "/bin/echo hi", (), ("/bin/echo hi",)),            # not split
    # --entrypoint "" resets ENTRYPOINT (and, still, the image's CMD)
    (E, C, "", (), SpecError),
    (E, C, "", ("u", "v"), ("u", "v")),
    (None, C, "", (), SpecError),
    # an image ENTRYPOINT of [""] counts as none
    (("",), C, None, (), C),
    # empty lists are "not set"
    ((), (), None, (), SpecError),
    ((), C, None, (), C),
])
def test_process_args_table(ep, cmd, flag_ep, user_cmd, expected):
    cfg = ExecConfig(Entrypoint=ep, Cmd=cmd)
    if expected is SpecError:
        with pytest.raises(SpecError) as e:
            process_args(cfg, flag_ep, user_cmd)
        assert str(e.value) == "no command specified"
    else:
        assert process_args(cfg, flag_ep, user_cmd) == expected


# ---------------------------------------------------------------- environment

def test_replace_or_append_env():
    assert replace_or_append_env(["A=1", "B=2"], ["B=3", "C=4", "A", "C=5", "X"]) == ["B=3", "C=5"]


def env_of(image_env, *, env=(), env_files=(), tty=False, host_env=None, home=None, hostname="h"):
    opts = RunOptions(env=tuple(env), env_files=tuple(env_files), tty=tty)
    return process_env(tuple(image_env), opts, host_env or {}, hostname=hostname, home=home)


def test_env_defaults_and_order():
    assert env_of([]) == (DEFAULT_PATH_ENV, "HOSTNAME=h")
    assert env_of([], tty=True, home="/root") == (DEFAULT_PATH_ENV, "HOSTNAME=h", "TERM=xterm", "HOME=/root")
    # the image's PATH replaces the default in place; other image entries follow
    assert env_of(["PATH=/img", "LANG=C"]) == ("PATH=/img", "HOSTNAME=h", "LANG=C")


def test_env_precedence_image_then_env_file_then_e(tmp_path):
    f1 = tmp_path / "one"
    f1.write_text("A=file1\nB=file1\nC=file1\n")
    f2 = tmp_path / "two"
    f2.write_text("B=file2\n")
    got = env_of(["A=img", "B=img", "C=img", "D=img"], env_files=[f1, f2], env=["C=flag"])
    # Docker's order: defaults, user entries (files then -e), image entries the user did not name
    assert got == (DEFAULT_PATH_ENV, "HOSTNAME=h", "A=file1", "B=file2", "C=flag", "D=img")


@pytest.mark.parametrize("image_env, flags, host_env, expected_tail", [
    ([], ["K"], {"K": "host"}, ("K=host",)),               # bare key from the caller
    ([], ["K"], {}, ()),                                    # bare key unset: omitted
    (["K=img"], ["K"], {}, ()),                             # ... and hides the image's value, as Docker
    (["K=img"], ["K"], {"K": "host"}, ("K=host",)),
    (["K=img"], ["K="], {}, ("K=",)),                       # empty value is a value
    ([], ["A=1", "A=2"], {}, ("A=2",)),                     # later -e wins
    ([], ["HOSTNAME=custom"], {}, None),                    # user may override HOSTNAME in place
    ([], ["TERM=vt100"], {}, ("TERM=vt100",)),
])
def test_env_rules(image_env, flags, host_env, expected_tail):
    got = env_of(image_env, env=flags, host_env=host_env)
    if expected_tail is None:
        assert got == (DEFAULT_PATH_ENV, "HOSTNAME=custom")
    else:
        assert got == (DEFAULT_PATH_ENV, "HOSTNAME=h", *expected_tail)


def test_env_tty_term_can_be_overridden():
    assert env_of(["TERM=dumb"], tty=True) == (DEFAULT_PATH_ENV, "HOSTNAME=h", "TERM=dumb")


def test_env_home_only_when_absent():
    assert env_of(["HOME=/img"], home="/root")[-1] == "HOME=/img"
    assert env_of([], env=["HOME=/flag"], home="/root")[-1] == "HOME=/flag"
    assert env_of([], home="/home/app")[-1] == "HOME=/home/app"


# ---------------------------------------------------------------- build_spec: process and root

def test_build_spec_minimal(rootfs):
    s = build(image(Cmd=("sh",)), RunOptions(), rootfs)
    assert s.process.args == ("sh",)
    assert s.process.cwd == "/"
    assert s.process.terminal is False
    assert s.process.user == oci.User(0, 0, additionalGids=(0, 10))
    assert s.process.env == (DEFAULT_PATH_ENV, f"HOSTNAME={CID[:12]}", "HOME=/root")
    assert s.hostname == CID[:12]
    assert s.root == oci.Root(rootfs, readonly=False)
    assert [n.type for n in s.linux.namespaces] == ["pid", "network", "ipc", "uts", "mount", "cgroup"]
    assert s.linux.maskedPaths == oci.DEFAULT_MASKED_PATHS
    assert s.linux.readonlyPaths == oci.DEFAULT_READONLY_PATHS
    assert s.linux.rootfsPropagation is None
    # what we write must be what the runtime reads back
    assert oci.Spec.from_json(s.to_json()) == s


def test_build_spec_options(rootfs):
    img = image(Entrypoint=("/entry",), Cmd=("default",), Env=("PATH=/bin", "X=img"),
                WorkingDir="/srv", User="app")
    opts = RunOptions(hostname="web", tty=True, command=("run",), env=("X",))
    s = build(img, opts, rootfs, host_env={"X": "caller"})
    assert s.process.args == ("/entry", "run")
    assert s.process.cwd == "/srv"
    assert s.process.terminal is True
    assert s.process.user == oci.User(1000, 1000, additionalGids=(1000, 10))
    assert s.process.env == ("PATH=/bin", "HOSTNAME=web", "TERM=xterm", "X=caller", "HOME=/home/app")
    assert s.hostname == "web"


@pytest.mark.parametrize("flag, image_dir, cwd", [
    (None, "", "/"), (None, "/srv/app", "/srv/app"), (None, "rel", "/rel"), ("/w", "/srv", "/w"),
])
def test_cwd(rootfs, flag, image_dir, cwd):
    s = build(image(Cmd=("sh",), WorkingDir=image_dir), RunOptions(workdir=flag), rootfs)
    assert s.process.cwd == cwd


@pytest.mark.parametrize("flag, image_user, uid, gid", [
    (None, "", 0, 0), (None, "app", 1000, 1000), ("0", "app", 0, 0), ("", "app", 1000, 1000),
    ("app:0", "", 1000, 0), ("4000:4001", "", 4000, 4001),
])
def test_user_flag_overrides_image_user(rootfs, flag, image_user, uid, gid):
    s = build(image(Cmd=("sh",), User=image_user), RunOptions(user=flag), rootfs)
    assert (s.process.user.uid, s.process.user.gid) == (uid, gid)


def test_unknown_user_is_a_spec_error(rootfs):
    with pytest.raises(SpecError, match="unable to find user ghost: no matching entries in passwd file"):
        build(image(Cmd=("sh",)), RunOptions(user="ghost"), rootfs)


def test_home_default_without_passwd(tmp_path):
    root = tmp_path / "scratch"
    root.mkdir()
    assert build(image(Cmd=("/app",)), RunOptions(), str(root)).process.env[-1] == "HOME=/root"
    assert build(image(Cmd=("/app",)), RunOptions(user="1000"), str(root)).process.env[-1] == "HOME=/"


def test_no_command(rootfs):
    with pytest.raises(SpecError, match="^no command specified$"):
        build(image(), RunOptions(), rootfs)


# ---------------------------------------------------------------- mounts

HOSTS = {"/etc/hosts": "/c/hosts", "/etc/hostname": "/c/hostname", "/etc/resolv.conf": "/c/resolv.conf"}
DEFAULT_DESTS = ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]


def dests(mounts):
    return [m.destination for m in mounts]


def by_dest(mounts):
    return {m.destination: m for m in mounts}


def test_default_mounts_and_network_files():
    mounts, prop = build_mounts(RunOptions(), HOSTS)
    assert dests(mounts) == DEFAULT_DESTS + ["/etc/resolv.conf", "/etc/hostname", "/etc/hosts"]
    m = by_dest(mounts)
    assert m["/proc"].options == ("nosuid", "noexec", "nodev")
    assert m["/etc/hosts"] == oci.Mount("/etc/hosts", "bind", "/c/hosts", ("rbind", "rprivate"))
    assert prop is None
    assert dests(build_mounts(RunOptions(), None)[0]) == DEFAULT_DESTS


def test_user_binds_and_tmpfs_options(tmp_path):
    opts = parse_run_options(
        volumes=["/h1:/data", "/h2:/ro:ro"],
        mounts=[f"type=bind,src={tmp_path},dst=/m,readonly,bind-nonrecursive",
                "type=tmpfs,dst=/mt,tmpfs-size=1048576,tmpfs-mode=700"],
        tmpfs=["/run:exec,size=64m", "/tmp"])
    m = by_dest(build_mounts(opts, None)[0])
    assert m["/data"] == oci.Mount("/data", "bind", "/h1", ("rbind", "rprivate"))
    assert m["/ro"] == oci.Mount("/ro", "bind", "/h2", ("rbind", "ro", "rprivate"))
    assert m["/m"] == oci.Mount("/m", "bind", str(tmp_path), ("bind", "ro", "rprivate"))
    assert m["/run"] == oci.Mount("/run", "tmpfs", "tmpfs", ("nosuid", "nodev", "rprivate", "exec", "size=64m"))
    assert m["/tmp"] == oci.Mount("/tmp", "tmpfs", "tmpfs", ("noexec", "nosuid", "nodev", "rprivate"))
    assert m["/mt"] == oci.Mount("/mt", "tmpfs", "tmpfs",
                                 ("noexec", "nosuid", "nodev", "rprivate", "mode=700", "size=1m"))


def test_mount_order_parents_before_children():
    opts = parse_run_options(volumes=["/h/a:/a/b/c", "/h/b:/a", "/h/c:/x/y", "/h/d:/a/b"],
                             tmpfs=["/a/b/c/d", "/t"])
    mounts = build_mounts(opts, HOSTS)[0]
    ours = dests(mounts)[len(DEFAULT_DESTS):]
    # stable by depth: binds, then network files, then tmpfs, within each depth
    assert ours == ["/a", "/t", "/x/y", "/a/b", "/etc/resolv.conf", "/etc/hostname", "/etc/hosts",
                    "/a/b/c", "/a/b/c/d"]
    depths = [mount_depth(d) for d in ours]
    assert depths == sorted(depths)
    for i, d in enumerate(ours):  # no mount is a parent of one before it
        assert not any(prev.startswith(d + "/") for prev in ours[:i])


def test_user_mount_replaces_default_and_network_file():
    opts = parse_run_options(volumes=["/h/hosts:/etc/hosts:ro", "/h/cg:/sys/fs/cgroup"], tmpfs=["/dev/shm"])
    mounts = build_mounts(opts, HOSTS)[0]
    d = dests(mounts)
    assert d.count("/etc/hosts") == 1 and by_dest(mounts)["/etc/hosts"].source == "/h/hosts"
    assert d.count("/sys/fs/cgroup") == 1 and by_dest(mounts)["/sys/fs/cgroup"].type == "bind"
    assert d.count("/dev/shm") == 1 and by_dest(mounts)["/dev/shm"].source == "tmpfs"


def test_user_dev_mount_drops_default_dev_tree():
    mounts = build_mounts(parse_run_options(volumes=["/h/dev:/dev"]), None)[0]
    assert dests(mounts) == ["/proc", "/sys", "/sys/fs/cgroup", "/dev"]


def test_read_only_rootfs(rootfs):
    opts = parse_run_options(read_only=True, volumes=["/h:/data"], tmpfs=["/run"], command=["sh"])
    s = build(image(), opts, rootfs, hosts_files=HOSTS)
    assert s.root.readonly is True
    m = by_dest(s.mounts)
    # /dev, /dev/pts, /dev/shm, /dev/mqueue and /proc stay writable, as Docker
    for d in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"):
        assert "ro" not in m[d].options, d
    # every other default mount is read-only, without a duplicate "ro"
    for d in ("/sys", "/sys/fs/cgroup"):
        assert m[d].options.count("ro") == 1, d
    # network files read-only; the user's own mounts as the user asked
    for d in ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf"):
        assert m[d].options == ("rbind", "ro", "rprivate"), d
    assert m["/data"].options == ("rbind", "rprivate")
    assert "ro" not in m["/run"].options
    assert oci.Spec.from_json(s.to_json()) == s


def test_not_read_only_rootfs_writable(rootfs):
    s = build(image(Cmd=("sh",)), RunOptions(), rootfs, hosts_files=HOSTS)
    assert s.root.readonly is False
    assert "ro" not in by_dest(s.mounts)["/etc/hosts"].options


@pytest.mark.parametrize("modes, propagation", [
    ([], None), (["rprivate"], None), (["private"], None), (["rshared"], "shared"), (["shared"], "shared"),
    (["rslave"], "rslave"), (["slave"], "rslave"), (["rslave", "shared"], "shared"),
    (["shared", "slave"], "shared"),
])
def test_rootfs_propagation_follows_binds(modes, propagation):
    opts = parse_run_options(volumes=[f"/h{i}:/c{i}:{m}" for i, m in enumerate(modes)])
    assert build_mounts(opts, None)[1] == propagation
    for i, m in enumerate(modes):
        assert by_dest(build_mounts(opts, None)[0])[f"/c{i}"].options[-1] == m


def test_duplicate_mount_point_in_build(rootfs):
    opts = RunOptions(volumes=(Mount("bind", "/c", "/a"), Mount("bind", "/c", "/b")), command=("sh",))
    with pytest.raises(UsageError, match="Duplicate mount point: /c"):
        build(image(), opts, rootfs)


# ---------------------------------------------------------------- hosts, hostname, resolv.conf

def test_hosts_content():
    assert hosts_content("abc") == (
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "ff00::0\tip6-mcastprefix\n"
        "ff02::1\tip6-allnodes\n"
        "ff02::2\tip6-allrouters\n"
        "127.0.1.1\tabc\n")
    text = hosts_content("web.example.com", ["db:10.0.0.2", "v6=[::2]", ("cache", "10.0.0.3")])
    assert text.splitlines()[-4:] == ["10.0.0.2\tdb", "::2\tv6", "10.0.0.3\tcache",
                                      "127.0.1.1\tweb.example.com web"]


@pytest.mark.parametrize("bad", ["nocolon", "db:notanip", ":1.2.3.4", "gw:host-gateway"])
def test_hosts_content_bad_extra_host(bad):
    with pytest.raises(UsageError):
        hosts_content("h", [bad])


@pytest.mark.parametrize("host, expected", [
    ("nameserver 1.1.1.1\nsearch example.com\n", "nameserver 1.1.1.1\nsearch example.com\n"),
    ("nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n",
     "options edns0 trust-ad\nsearch lan\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
    ("nameserver 127.0.0.1\nnameserver 10.0.0.1\nnameserver ::1\n", "nameserver 10.0.0.1\n"),
    ("nameserver 2001:db8::1\nnameserver 10.0.0.1\n", "nameserver 10.0.0.1\n"),
    ("", "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
    ("# only a comment\n", "# only a comment\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"),
])
def test_resolv_conf_content(host, expected):
    assert resolv_conf_content(host) == expected


def test_resolv_conf_ipv6():
    assert resolv_conf_content("nameserver 2001:db8::1\n", ipv6=True) == "nameserver 2001:db8::1\n"
    assert resolv_conf_content("nameserver ::1\n", ipv6=True).splitlines() == [
        "nameserver 8.8.8.8", "nameserver 8.8.4.4",
        "nameserver 2001:4860:4860::8888", "nameserver 2001:4860:4860::8844"]


def test_make_hosts_files(tmp_path):
    host_resolv = tmp_path / "host-resolv.conf"
    host_resolv.write_text("nameserver 127.0.0.11\nnameserver 192.0.2.1\n")
    out = make_hosts_files(tmp_path / "c", "box", host_resolv, ["db:10.1.1.1"], systemd_resolv=None)
    assert out == {"/etc/resolv.conf": str(tmp_path / "c" / "resolv.conf"),
                   "/etc/hostname": str(tmp_path / "c" / "hostname"),
                   "/etc/hosts": str(tmp_path / "c" / "hosts")}
    assert Path(out["/etc/hostname"]).read_text() == "box\n"
    assert Path(out["/etc/resolv.conf"]).read_text() == "nameserver 192.0.2.1\n"
    assert Path(out["/etc/hosts"]).read_text().endswith("10.1.1.1\tdb\n127.0.1.1\tbox\n")
    assert oct(os.stat(out["/etc/hosts"]).st_mode & 0o777) == "0o644"
    assert sorted(os.listdir(tmp_path / "c")) == ["hostname", "hosts", "resolv.conf"]


def test_make_hosts_files_systemd_resolved_stub(tmp_path):
    stub = tmp_path / "resolv.conf"
    stub.write_text("nameserver 127.0.0.53\noptions edns0\n")
    upstream = tmp_path / "upstream.conf"
    upstream.write_text("nameserver 203.0.113.5\n")
    out = make_hosts_files(tmp_path / "c", "box", stub, systemd_resolv=upstream)
    assert Path(out["/etc/resolv.conf"]).read_text() == "nameserver 203.0.113.5\n"
    out = make_hosts_files(tmp_path / "d", "box", stub, systemd_resolv=tmp_path / "absent")
    assert Path(out["/etc/resolv.conf"]).read_text() == (
        "options edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n")


def test_make_hosts_files_missing_host_resolv(tmp_path):
    out = make_hosts_files(tmp_path / "c", "box", tmp_path / "none", systemd_resolv=None)
    assert Path(out["/etc/resolv.conf"]).read_text() == "nameserver 8.8.8.8\nnameserver 8.8.4.4\n"


def test_hosts_files_feed_build_spec(tmp_path, rootfs):
    files = make_hosts_files(tmp_path / "c", "box", tmp_path / "none", systemd_resolv=None)
    s = build(image(Cmd=("sh",)), RunOptions(hostname="box"), rootfs, hosts_files=files)
    assert by_dest(s.mounts)["/etc/hostname"].source == files["/etc/hostname"]


# ---------------------------------------------------------------- side-effecting helpers

def test_create_bind_sources(tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    opts = parse_run_options(volumes=[f"{tmp_path}/new/deep:/a", f"{existing}:/b"],
                             mounts=[f"type=bind,src={existing},dst=/c"])
    assert create_bind_sources(opts) == [f"{tmp_path}/new/deep"]
    assert (tmp_path / "new" / "deep").is_dir()
    assert create_bind_sources(opts) == []


def test_make_workdir_inside_rootfs(tmp_path):
    root = tmp_path / "rootfs"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), root / "srv")  # absolute link: /<tmp>/outside inside the rootfs
    make_workdir(str(root), "/srv/app")
    assert not (outside / "app").exists()
    assert (root / str(outside).lstrip("/") / "app").is_dir()
    (root / "file").write_text("")
    with pytest.raises(SpecError, match="Cannot mkdir: /file is not a directory"):
        make_workdir(str(root), "/file")
    make_workdir(str(root), "/")  # exists: nothing to do


# ---------------------------------------------------------------- capabilities

def test_docker_default_capabilities_for_root_and_others(rootfs):
    from ketch.engine.spec import DOCKER_DEFAULT_CAPABILITIES
    caps = build(image(Cmd=("sh",)), RunOptions(), rootfs).process.capabilities
    assert set(caps.bounding) == set(caps.effective) == set(caps.permitted) == set(DOCKER_DEFAULT_CAPABILITIES)
    assert "CAP_SYS_ADMIN" not in caps.bounding and len(caps.bounding) == 14
    assert caps.inheritable == () and caps.ambient == ()
    caps = build(image(Cmd=("sh",)), RunOptions(user="app"), rootfs).process.capabilities
    assert set(caps.bounding) == set(DOCKER_DEFAULT_CAPABILITIES)
    assert caps.effective == caps.permitted == ()
