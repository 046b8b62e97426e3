"""ketch.network without root: -p parsing, CNI configs, spec wiring, /etc/hosts of a network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ketch.errors import UsageError
from ketch.network import cni
from ketch.network.manager import HOSTS_MARKER, Attachment, Network, Networks, join_hosts, make_conflist
from ketch.network.ports import PortMapping, parse_exposed, parse_publish
from ketch.oci import runtime as oci
from ketch.paths import Paths


@pytest.mark.parametrize("value, want", [
    ("80", [PortMapping(80)]),
    ("8080:80", [PortMapping(80, 8080)]),
    ("127.0.0.1:8080:80/udp", [PortMapping(80, 8080, "udp", "127.0.0.1")]),
    ("127.0.0.1::80", [PortMapping(80, 0, "tcp", "127.0.0.1")]),
    ("8000-8001:80-81", [PortMapping(80, 8000), PortMapping(81, 8001)]),
    ("53/UDP", [PortMapping(53, 0, "udp")]),
])
def test_parse_publish(value, want):
    assert parse_publish(value) == want


@pytest.mark.parametrize("bad", ["", "x", "0", "70000", "80/sctp", "1:2:3:4", "a.b.c.d:80:80",
                                 "8000-8002:80-81", "[::1]:80:80"])
def test_parse_publish_refuses(bad):
    with pytest.raises(UsageError):
        parse_publish(bad)


def test_parse_exposed_and_strings():
    assert parse_exposed(["80/tcp", "53/udp"]) == [PortMapping(80), PortMapping(53, 0, "udp")]
    assert str(PortMapping(80, 8080)) == "80/tcp -> 0.0.0.0:8080"
    assert PortMapping.from_cni(PortMapping(80, 8080, "udp", "127.0.0.1").to_cni()) == \
        PortMapping(80, 8080, "udp", "127.0.0.1")


def test_conflist_bridge_and_internal(tmp_path):
    c = make_conflist("web", "ketch5", "10.77.5.0/24", "10.77.5.1", False, "/x/ipam", "id1")
    assert [p["type"] for p in c["plugins"]] == ["bridge", "portmap", "firewall"]
    assert c["plugins"][0]["ipMasq"] and c["plugins"][0]["isGateway"]
    assert c["plugins"][0]["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}]
    n = Network("web", tmp_path / "web.conflist", c)
    assert (n.bridge, n.subnet, n.gateway, n.internal) == ("ketch5", "10.77.5.0/24", "10.77.5.1", False)
    i = make_conflist("closed", "ketch6", "10.77.6.0/24", "10.77.6.1", True, "/x/ipam", "id2")
    assert [p["type"] for p in i["plugins"]] == ["bridge"]
    assert not i["plugins"][0]["ipMasq"] and not i["plugins"][0]["isGateway"]
    assert "routes" not in i["plugins"][0]["ipam"]
    assert Network("closed", tmp_path / "c", i).internal


def test_plugin_conf_gets_name_version_prev_result_and_declared_capabilities():
    conflist = {"cniVersion": "1.0.0", "name": "n", "plugins": []}
    plugin = {"type": "portmap", "capabilities": {"portMappings": True}}
    conf = cni._plugin_conf(conflist, plugin, {"portMappings": [1], "other": 2}, {"ips": []})
    assert conf == {"type": "portmap", "capabilities": {"portMappings": True}, "name": "n",
                    "cniVersion": "1.0.0", "runtimeConfig": {"portMappings": [1]}, "prevResult": {"ips": []}}
    assert "runtimeConfig" not in cni._plugin_conf(conflist, {"type": "bridge"}, {"portMappings": [1]}, None)


def test_missing_plugin_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setenv("KETCH_CNI_PATH", str(tmp_path))
    with pytest.raises(cni.NetworkError, match="containernetworking-plugins"):
        cni.find_plugin("bridge")


def test_attachment_sets_the_network_namespace():
    spec = oci.default_spec()
    joined = Attachment("bridge", "n", "/run/ketch/netns/abc").apply(spec)
    assert oci.Namespace("network", "/run/ketch/netns/abc") in joined.linux.namespaces
    assert not any(ns.type == "network" for ns in Attachment("host").apply(spec).linux.namespaces)
    assert Attachment("none").apply(spec) is spec


def test_hosts_of_a_network_follow_its_members(tmp_path):
    paths = Paths(tmp_path / "root", tmp_path / "run")

    def member(cid: str, name: str, ip: str) -> Path:
        d = paths.containers / cid
        d.mkdir(parents=True)
        (d / "hosts").write_text(f"127.0.0.1\tlocalhost\n{ip}\t{cid[:4]}\n")
        (d / "network.json").write_text(json.dumps({"network": "app", "name": name, "ip": ip}))
        return d

    a = member("aaaa1", "web", "10.77.9.2")
    b = member("bbbb2", "db", "10.77.9.3")
    join_hosts(paths, a)
    join_hosts(paths, b)
    for d in (a, b):
        text = (d / "hosts").read_text()
        assert text.endswith(HOSTS_MARKER + "10.77.9.3\tdb\n10.77.9.2\tweb\n")
        assert text.count(HOSTS_MARKER) == 1
    ino = (a / "hosts").stat().st_ino
    (b / "network.json").unlink()  # db leaves
    from ketch.network.manager import _rewrite_hosts
    _rewrite_hosts(Networks(paths), "app")
    assert (a / "hosts").read_text().endswith(HOSTS_MARKER + "10.77.9.2\tweb\n")
    assert (a / "hosts").stat().st_ino == ino  # rewritten in place: it is bind-mounted


def test_default_bridge_network_has_no_name_resolution(tmp_path):
    paths = Paths(tmp_path / "root", tmp_path / "run")
    d = paths.containers / "c1"
    d.mkdir(parents=True)
    (d / "hosts").write_text("x\n")
    (d / "network.json").write_text(json.dumps({"network": "bridge", "name": "a", "ip": "10.77.0.2"}))
    join_hosts(paths, d)
    assert (d / "hosts").read_text() == "x\n"
