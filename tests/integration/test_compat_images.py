"""``ketch compat`` on the shared images (and Debian bookworm): detected facts and verdicts."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ALPINE_TAGS

pytestmark = pytest.mark.integration

MUSL = {"3.6.5": "1.1.16", "3.10.9": "1.1.22", "3.14.10": "1.2.2", "3.17.10": "1.2.3",
        "3.20.3": "1.2.5", "edge-20240923": "1.2.5"}


def compat(k, *args) -> dict:
    return json.loads(k.out("compat", "--json", *args))


@pytest.mark.parametrize("tag", ALPINE_TAGS)
def test_alpine_musl_versions(images, tag):
    r = compat(images, f"alpine:{tag}")
    assert r["libc"]["family"] == "musl" and r["libc"]["version"] == MUSL[tag]
    assert r["libc"]["abi_tag"] is None            # musl carries no ABI note
    assert r["entrypoint"] == "/bin/busybox"
    assert r["verdict"] == "works", r["reason"]


def test_busybox_glibc_needs_2_38_and_image_has_2_41(images):
    r = compat(images, "busybox:1.38.0-glibc")
    assert (r["libc"]["family"], r["libc"]["version"], r["libc"]["abi_tag"]) == ("glibc", "2.41", "3.2.0")
    sh = next(b for b in r["binaries"] if b["path"] == "/bin/sh")
    assert sh["facts"]["glibc_needed"] == "GLIBC_2.38"
    assert sh["facts"]["abi_tag"] == "3.2.0"
    assert "/bin/ls" in sh["links"]            # one busybox, many names
    assert r["verdict"] == "works"


@pytest.mark.parametrize("tag", ["1.37.0-uclibc", "1.38.0-uclibc"])
def test_busybox_uclibc_detected_and_old_kernel_degrades(images, tag):
    r = compat(images, f"busybox:{tag}")
    assert r["libc"]["family"] == "uclibc"
    assert r["verdict"] == "works"
    old = compat(images, "--kernel", "3.10", f"busybox:{tag}")
    assert old["verdict"] in ("degraded", "fails")
    assert "3.10" in old["reason"] and "Linux" in old["reason"]


def test_busybox_musl_static(images):
    r = compat(images, "busybox:1.38.0-musl")
    sh = next(b for b in r["binaries"] if b["path"] == r["entrypoint"])
    assert sh["libc"].startswith("musl") and sh["kind"] in ("static", "static-pie")


def test_table_output_and_errors(images):
    out = images.out("compat", "--vsyscall", "none", "--kernel", "5.2", "alpine:3.20.3")
    first = out.splitlines()[0]
    assert first.startswith("alpine:3.20.3: ")
    assert "target 5.2" in out and "vsyscall=none" in out
    p = images("compat", "nosuch:image")
    assert p.returncode == 125 and b"No such image" in p.stderr
    p = images("compat", "--kernel", "banana", "alpine:3.20.3")
    assert p.returncode == 125 and b"kernel version" in p.stderr
    p = images("compat", "--seccomp", "/nonexistent.json", "alpine:3.20.3")
    assert p.returncode == 125


def test_debian_bookworm(debian):
    r = compat(debian, "debian:bookworm")
    assert (r["libc"]["family"], r["libc"]["version"], r["libc"]["abi_tag"]) == ("glibc", "2.36", "3.2.0")
    assert r["verdict"] == "works", r["reason"]
    assert r["scan"]["files"] > 300
    again = compat(debian, "debian:bookworm")
    assert again["scan"]["cached_layers"] == again["scan"]["layers"]
    assert again["scan"]["seconds"] < 1.0
    old = compat(debian, "--kernel", "5.2", "debian:bookworm")
    assert old["verdict"] == "degraded"
    reasons = " ".join(f["reason"] for b in old["binaries"] for f in b["findings"])
    assert "clone3" in reasons and "falls back to clone" in reasons
    ancient = compat(debian, "--kernel", "3.1", "debian:bookworm")
    assert ancient["verdict"] == "fails" and "kernel too old" in ancient["reason"]
