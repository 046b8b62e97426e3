"""Image references: Docker's ``[registry/]repository[:tag][@digest]`` rules.

Parsing follows the grammar of distribution/reference (``reference.go``,
``regexp.go``, ``normalize.go``) as the Docker CLI applies it
(``ParseNormalizedNamed`` then ``TagNameOnly``):

* the registry (domain) is the first ``/``-separated component when it holds a
  ``.`` or ``:``, is ``localhost``, or has uppercase letters; otherwise the
  registry is ``docker.io`` (``index.docker.io`` is folded into it);
* on ``docker.io`` a one-component repository gets the ``library/`` prefix;
* repository components are lowercase ``[a-z0-9]+`` joined by ``.``, ``_``,
  ``__`` or runs of ``-``; the whole name is at most 255 characters;
* a tag is ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``; with neither tag nor digest
  the tag is ``latest``;
* a digest is ``sha256:<64 lowercase hex>`` (the only algorithm ketch stores).

The *canonical* form (``docker.io/library/alpine:3.20.3``) is what the image
store keeps; the *familiar* form (``alpine:3.20.3``) is what ``ketch images``
shows, as ``docker images`` does.  Anything else raises
:class:`~ketch.errors.InvalidReference` with a one-line message naming the
input, e.g. ``invalid reference format: "Alpine": repository name must be
lowercase``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ketch.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# distribution/reference regexp.go, spelled out.
_ALNUM = r"[a-z0-9]+"
_SEP = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEP}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REMOTE = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"

_REFERENCE_RE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_REMOTE}))"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$", re.ASCII)
_TAG_RE = re.compile(rf"^{_TAG}$", re.ASCII)
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")
_SHA256_RE = re.compile(r"^sha256:[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A normalized image reference.

    ``domain`` is the registry host[:port] (``docker.io``), ``path`` the
    repository path (``library/alpine``), ``tag`` and ``digest``
    (``sha256:<hex>``) are ``None`` when absent.  ``str()`` is the canonical
    form ``domain/path[:tag][@digest]``.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """Canonical repository name without tag or digest: ``docker.io/library/alpine``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """Repository as Docker displays it: ``alpine``, ``user/app``, ``quay.io/x/y``."""
        if self.domain == DEFAULT_DOMAIN:
            p = self.path
            if p.startswith(OFFICIAL_REPO_PREFIX) and "/" not in p[len(OFFICIAL_REPO_PREFIX):]:
                return p[len(OFFICIAL_REPO_PREFIX):]
            return p
        return self.name

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    @property
    def familiar(self) -> str:
        """Familiar form with tag and digest: ``alpine:3.20.3``."""
        return self.familiar_name + self._suffix()

    def __str__(self) -> str:
        return self.name + self._suffix()

    def with_tag(self, tag: str) -> "Reference":
        """The same repository with ``tag`` (validated) and no digest."""
        if not _TAG_RE.match(tag):
            raise InvalidReference(f'invalid reference format: invalid tag "{tag}"')
        return replace(self, tag=tag, digest=None)

    def repository_only(self) -> "Reference":
        """The repository with neither tag nor digest."""
        return replace(self, tag=None, digest=None)


def _invalid(ref: str, why: str = "") -> InvalidReference:
    return InvalidReference(f'invalid reference format: "{ref}"' + (f": {why}" if why else ""))


def split_domain(name: str) -> tuple[str, str]:
    """Split a (tagless) name into ``(domain, remainder)`` as Docker's ``splitDockerDomain``.

    ``"alpine"`` → ``("docker.io", "library/alpine")``; ``"localhost:5000/x"`` →
    ``("localhost:5000", "x")``.  Does not validate.
    """
    i = name.find("/")
    first = name[:i]
    if i == -1 or (not any(c in first for c in ".:") and first != "localhost" and first.lower() == first):
        domain, rest = DEFAULT_DOMAIN, name
    else:
        domain, rest = first, name[i + 1:]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in rest:
        rest = OFFICIAL_REPO_PREFIX + rest
    return domain, rest


def parse(ref: str, default_tag: bool = True) -> Reference:
    """Parse and normalize an image reference as the Docker CLI does.

    ``parse("alpine")`` → ``Reference("docker.io", "library/alpine", "latest")``;
    with ``default_tag=False`` a reference with neither tag nor digest keeps
    ``tag=None``.  Raises :class:`InvalidReference` (one line naming ``ref``)
    for anything distribution/reference rejects, a 64-hex-digit bare name
    (that is an image ID, not a name), or a digest other than
    ``sha256:<64 lowercase hex>``.
    """
    if not isinstance(ref, str) or ref == "":
        raise _invalid(ref if isinstance(ref, str) else repr(ref), "repository name must have at least one component")
    if _HEX64_RE.match(ref):
        raise _invalid(ref, "cannot specify 64-byte hexadecimal strings as a repository name")
    domain, remainder = split_domain(ref)
    remote = remainder.split("@", 1)[0].split(":", 1)[0]
    if remote.lower() != remote:
        raise _invalid(ref, "repository name must be lowercase")
    m = _REFERENCE_RE.match(f"{domain}/{remainder}")
    if not m or m.group("domain") != domain:
        raise _invalid(ref)
    name = m.group("name")
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(ref, f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")
    digest = m.group("digest")
    if digest is not None and not _SHA256_RE.match(digest):
        raise _invalid(ref, "unsupported digest: want sha256:<64 lowercase hex digits>")
    tag = m.group("tag")
    if default_tag and tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain=m.group("domain"), path=m.group("path"), tag=tag, digest=digest)


def is_valid_tag(tag: str) -> bool:
    """True when ``tag`` matches Docker's tag grammar ``[\\w][\\w.-]{0,127}``."""
    return bool(_TAG_RE.match(tag))


def familiar(canonical: str) -> str:
    """Familiar form of a stored canonical name: ``docker.io/library/alpine:3`` → ``alpine:3``."""
    return parse(canonical, default_tag=False).familiar
