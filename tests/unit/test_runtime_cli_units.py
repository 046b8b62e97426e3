"""ketch-runtime's command line without a kernel: flag parsing (Go flag
rules, as runc's urfave/cli), signal names, the JSON log record, and that the
module imports nothing of ketch at start-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from ketch.cli import runtime as cli


def test_flags_both_dash_styles_and_equals():
    flags = {"bundle": ("bundle", "str"), "b": ("bundle", "str"), "detach": ("detach", "bool"),
             "preserve-fds": ("preserve_fds", "int")}
    a = cli.parse(["--bundle", "/b", "-detach", "--preserve-fds=2", "id1"], flags)
    assert (a.bundle, a.detach, a.preserve_fds, a.positional) == ("/b", True, 2, ["id1"])
    a = cli.parse(["id1", "-b=/x", "--detach=false"], flags)
    assert (a.bundle, a.detach, a.positional) == ("/x", False, ["id1"])
    assert cli.parse(["--", "--bundle"], flags).positional == ["--bundle"]


@pytest.mark.parametrize("argv, message", [
    (["--nope"], "flag provided but not defined: -nope"),
    (["--bundle"], "flag needs an argument: -bundle"),
    (["--preserve-fds", "x"], "invalid value 'x' for flag -preserve-fds"),
    (["--detach=maybe"], "invalid boolean value"),
])
def test_flag_errors(argv, message):
    flags = {"bundle": ("bundle", "str"), "detach": ("detach", "bool"), "preserve-fds": ("preserve_fds", "int")}
    with pytest.raises(cli.Failure, match=message):
        cli.parse(argv, flags)


def test_global_flags_stop_at_the_command():
    g = cli.parse(["--root", "/r", "--log-format=json", "kill", "--all", "c", "9"], cli.GLOBAL_FLAGS,
                  stop_at_positional=True)
    assert g.root == "/r" and g.log_format == "json"
    assert g.positional == ["kill", "--all", "c", "9"]


def test_ps_options_after_the_id_are_not_ours():
    a = cli.parse(["--format", "table", "c1", "-o", "pid,comm"], {"format": ("format", "str")}, stop_after=1)
    assert a.format == "table" and a.positional == ["c1", "-o", "pid,comm"]


@pytest.mark.parametrize("text, sig", [
    ("KILL", signal.SIGKILL), ("SIGKILL", signal.SIGKILL), ("kill", signal.SIGKILL), ("9", 9),
    ("TERM", signal.SIGTERM), ("SIGUSR1", signal.SIGUSR1), ("RTMIN+1", signal.SIGRTMIN + 1),
    ("SIGRTMAX-2", signal.SIGRTMAX - 2), ("WINCH", signal.SIGWINCH),
])
def test_signal_names(text, sig):
    assert cli.parse_signal(text) == sig


@pytest.mark.parametrize("text", ["NOPE", "0", "65", "RTMIN+99", ""])
def test_bad_signals(text):
    with pytest.raises(cli.Failure, match="unknown signal"):
        cli.parse_signal(text)


def test_json_log_record(tmp_path):
    path = tmp_path / "log.json"
    log = cli.Log(str(path), "json")
    log.debug("not without --debug")
    log.error('container "x" does not exist')
    (rec,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert rec["level"] == "error" and rec["msg"] == 'container "x" does not exist'
    assert rec["time"].endswith("Z") and rec["time"][10] == "T"


def test_text_log_quotes(tmp_path):
    path = tmp_path / "log"
    cli.Log(str(path), "text", debug=True).warning('say "hi"\n')
    assert path.read_text().endswith('level=warning msg="say \\"hi\\"\\n"\n')


def test_errors_are_one_line_and_exit_1(tmp_path, capsys):
    log = tmp_path / "log.json"
    code = cli.main(["--root", str(tmp_path), "--log", str(log), "--log-format", "json", "state", "nope"])
    err = capsys.readouterr().err
    assert code == 1 and err == "container nope does not exist\n"
    assert json.loads(log.read_text())["msg"] == "container nope does not exist"


@pytest.mark.parametrize("argv, message", [
    (["--systemd-cgroup", "state", "x"], "--systemd-cgroup is not supported"),
    (["frobnicate"], "No help topic for 'frobnicate'"),
    (["update", "x"], "does not implement 'update' yet"),
    (["exec", "x", "true"], "container x does not exist"),
    (["exec"], '"exec" requires at least 1 argument'),
    (["state"], '"state" requires exactly 1 argument'),
    (["kill", "a", "KILL", "extra"], '"kill" accepts at most 2 argument'),
])
def test_usage_errors(tmp_path, capsys, argv, message):
    assert cli.main(["--root", str(tmp_path), *argv]) == 1
    assert message in capsys.readouterr().err


def test_features_from_the_tables(capsys):
    from ketch.runtime.mountopts import MOUNT_FLAGS, PROPAGATION_FLAGS
    assert cli.main(["features"]) == 0
    f = json.loads(capsys.readouterr().out)
    assert f["ociVersionMax"] == "1.1.0" and f["ociVersionMin"] == "1.0.0"
    assert set(f["mountOptions"]) == set(MOUNT_FLAGS) | set(PROPAGATION_FLAGS)
    assert {"pid", "network", "mount", "ipc", "uts", "cgroup"} <= set(f["linux"]["namespaces"])
    assert f["linux"]["seccomp"]["enabled"] is True and "SCMP_ACT_ERRNO" in f["linux"]["seccomp"]["actions"]
    assert "rro" not in f["mountOptions"]


def test_spec_writes_once(tmp_path, capsys):
    assert cli.main(["spec", "--bundle", str(tmp_path)]) == 0
    spec = json.loads((tmp_path / "config.json").read_text())
    assert spec["process"]["args"] == ["sh"] and spec["root"] == {"path": "rootfs", "readonly": True}
    assert {n["type"] for n in spec["linux"]["namespaces"]} >= {"pid", "mount"}
    assert cli.main(["spec", "--bundle", str(tmp_path)]) == 1
    assert "File config.json exists. Remove it first" in capsys.readouterr().err


def test_start_up_imports_only_the_standard_library():
    code = ("import sys; import ketch.cli.runtime; "
            "print(sorted(m for m in sys.modules if m.startswith('ketch') and m not in ('ketch', 'ketch.cli')))")
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout.decode()
    assert out.strip() == "['ketch.cli.runtime']"
