"""Image reference parsing against Docker's rules (distribution/reference tests)."""

from __future__ import annotations

import pytest

from ketch.errors import InvalidReference, KetchError
from ketch.image.reference import familiar, is_valid_tag, parse, split_domain

H64 = "f" * 64
D = "sha256:" + "a" * 64

# input -> (canonical, familiar)
ACCEPTED = [
    ("alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("alpine:3.20.3", "docker.io/library/alpine:3.20.3", "alpine:3.20.3"),
    ("docker.io/library/alpine:3.20.3", "docker.io/library/alpine:3.20.3", "alpine:3.20.3"),
    ("index.docker.io/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("docker.io/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("library/alpine", "docker.io/library/alpine:latest", "alpine:latest"),
    ("docker.io/library/foo/bar", "docker.io/library/foo/bar:latest", "library/foo/bar:latest"),
    ("user/app:1", "docker.io/user/app:1", "user/app:1"),
    (f"alpine@{D}", f"docker.io/library/alpine@{D}", f"alpine@{D}"),
    (f"alpine:3@{D}", f"docker.io/library/alpine:3@{D}", f"alpine:3@{D}"),
    ("test_com", "docker.io/library/test_com:latest", "test_com:latest"),
    ("test.com:tag", "docker.io/library/test.com:tag", "test.com:tag"),
    ("test.com:5000", "docker.io/library/test.com:5000", "test.com:5000"),
    ("test.com/repo:tag", "test.com/repo:tag", "test.com/repo:tag"),
    ("test:5000/repo", "test:5000/repo:latest", "test:5000/repo:latest"),
    (f"test:5000/repo@{D}", f"test:5000/repo@{D}", f"test:5000/repo@{D}"),
    ("lowercase:Uppercase", "docker.io/library/lowercase:Uppercase", "lowercase:Uppercase"),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux:latest", "sub-dom1.foo.com/bar/baz/quux:latest"),
    ("a/a/a/a", "docker.io/a/a/a/a:latest", "a/a/a/a:latest"),
    ("localhost/foo", "localhost/foo:latest", "localhost/foo:latest"),
    ("localhost:5000/foo:bar", "localhost:5000/foo:bar", "localhost:5000/foo:bar"),
    ("foo_bar.com:8080", "docker.io/library/foo_bar.com:8080", "foo_bar.com:8080"),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage:xn--n3h.com"),
    ("Uppercase/lowercase:tag", "Uppercase/lowercase:tag", "Uppercase/lowercase:tag"),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000/repo:latest", "[2001:db8::1]:5000/repo:latest"),
    ("foo__bar", "docker.io/library/foo__bar:latest", "foo__bar:latest"),
    ("foo---bar", "docker.io/library/foo---bar:latest", "foo---bar:latest"),
    ("3.20.3", "docker.io/library/3.20.3:latest", "3.20.3:latest"),
    ("a:" + "t" * 128, "docker.io/library/a:" + "t" * 128, "a:" + "t" * 128),
]

REJECTED = [
    ("", "at least one component"),
    (":justtag", ""),
    (f"@{D}", ""),
    ("Uppercase:tag", "must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "must be lowercase"),
    ("aa/asdf$$^/aa", ""),
    ("a" * 256, "not be more than 255"),
    (H64, "64-byte hexadecimal"),
    ("foo:", ""),
    ("foo/:tag", ""),
    ("-foo", ""),
    ("foo-", ""),
    ("foo___bar", ""),
    ("foo..bar", ""),
    ("alpine:tag@", ""),
    ("has space", ""),
    ("a:" + "t" * 129, ""),
    ("a:-tag", ""),
    ("validname@invaliddigest:" + "f" * 64, "unsupported digest"),
    ("alpine@sha256:abc", ""),
    ("alpine@sha512:" + "f" * 128, "unsupported digest"),
    ("a.b_c/d", ""),
]


@pytest.mark.parametrize("text,canonical,fam", ACCEPTED)
def test_accepted(text, canonical, fam):
    r = parse(text)
    assert str(r) == canonical
    assert r.familiar == fam
    assert parse(str(r)) == r  # canonical form is a fixed point
    assert familiar(canonical) == fam


@pytest.mark.parametrize("text,why", REJECTED)
def test_rejected(text, why):
    with pytest.raises(InvalidReference) as e:
        parse(text)
    msg = str(e.value)
    assert msg.startswith("invalid reference format")
    assert "\n" not in msg
    assert f'"{text}"' in msg
    assert why in msg
    assert isinstance(e.value, KetchError) and e.value.exit_code == 125


def test_no_default_tag():
    r = parse("alpine", default_tag=False)
    assert r.tag is None and r.digest is None
    assert str(r) == "docker.io/library/alpine"
    assert parse(f"alpine@{D}").tag is None


def test_parts_and_helpers():
    r = parse("quay.io/org/app:v1")
    assert (r.domain, r.path, r.tag, r.digest) == ("quay.io", "org/app", "v1", None)
    assert r.name == "quay.io/org/app"
    assert r.familiar_name == "quay.io/org/app"
    assert str(r.with_tag("v2")) == "quay.io/org/app:v2"
    assert str(r.repository_only()) == "quay.io/org/app"
    with pytest.raises(InvalidReference):
        r.with_tag("bad tag")
    assert split_domain("alpine") == ("docker.io", "library/alpine")
    assert split_domain("localhost/x") == ("localhost", "x")
    assert is_valid_tag("3.20.3") and not is_valid_tag(".x")
