"""OCI image-spec data: descriptors, manifests, indexes and image configs.

Pure data (frozen dataclasses named after the spec's JSON fields) with
``from_json(dict)`` / ``to_json() -> dict``.  Docker schema-2 media types are
accepted wherever the OCI ones are, since ``docker save`` and registries use
them.  Spec: https://github.com/opencontainers/image-spec (descriptor.md,
manifest.md, image-index.md, config.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ketch.errors import ImageError

TYPE_CHECKING = False  # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    from typing import Any

# Media types (image-spec media-types.md and Docker's schema 2).
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset({
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN,
    "application/vnd.docker.image.rootfs.diff.tar",
})

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"


def sha256_digest(data: bytes) -> str:
    """Return ``"sha256:<64 hex>"`` of ``data``."""
    import hashlib  # here: OpenSSL's _hashlib costs ~2 ms of every start-up
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Validate a ``sha256:<64 lowercase hex>`` digest and return it.

    Raises :class:`ImageError` for any other algorithm or form (a digest is
    used as a file name, so nothing else may pass).
    """
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise ImageError(f"invalid digest {digest!r}: want sha256:<64 hex digits>")
    return digest


@dataclass(frozen=True)
class Platform:
    """``platform`` of an index entry (image-index.md)."""

    architecture: str
    os: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Platform":
        return cls(architecture=d.get("architecture", ""), os=d.get("os", ""),
                   variant=d.get("variant"), os_version=d.get("os.version"))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        if self.os_version:
            out["os.version"] = self.os_version
        return out


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor (descriptor.md): what a blob is, its digest and size in bytes."""

    mediaType: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: Platform | None = None
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Descriptor":
        try:
            size = d["size"]
            if not isinstance(size, int) or size < 0:
                raise ImageError(f"descriptor {d.get('digest')}: invalid size {size!r}")
            return cls(
                mediaType=d.get("mediaType", ""),
                digest=check_digest(d["digest"]),
                size=size,
                annotations=dict(d.get("annotations") or {}),
                platform=Platform.from_json(d["platform"]) if d.get("platform") else None,
                urls=tuple(d.get("urls") or ()),
            )
        except KeyError as e:
            raise ImageError(f"descriptor lacks field {e.args[0]!r}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.mediaType, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = self.platform.to_json()
        if self.urls:
            out["urls"] = list(self.urls)
        return out


@dataclass(frozen=True)
class Manifest:
    """An image manifest (manifest.md), OCI or Docker schema 2."""

    mediaType: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = field(default_factory=dict)
    schemaVersion: int = 2

    @classmethod
    def from_json(cls, d: dict[str, Any], media_type: str | None = None) -> "Manifest":
        if d.get("schemaVersion") != 2:
            raise ImageError(f"unsupported manifest schemaVersion {d.get('schemaVersion')!r} "
                             "(Docker schema 1 is not supported)")
        mt = d.get("mediaType") or media_type or OCI_MANIFEST
        if mt not in MANIFEST_TYPES:
            raise ImageError(f"not an image manifest: mediaType {mt!r}")
        if "config" not in d or "layers" not in d:
            raise ImageError("manifest lacks config or layers")
        return cls(mediaType=mt, config=Descriptor.from_json(d["config"]),
                   layers=tuple(Descriptor.from_json(x) for x in d["layers"]),
                   annotations=dict(d.get("annotations") or {}))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.mediaType,
                               "config": self.config.to_json(),
                               "layers": [x.to_json() for x in self.layers]}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Index:
    """An image index (image-index.md) or Docker manifest list."""

    manifests: tuple[Descriptor, ...]
    mediaType: str = OCI_INDEX
    annotations: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Index":
        if d.get("schemaVersion") != 2:
            raise ImageError(f"unsupported index schemaVersion {d.get('schemaVersion')!r}")
        return cls(manifests=tuple(Descriptor.from_json(x) for x in d.get("manifests") or ()),
                   mediaType=d.get("mediaType") or OCI_INDEX,
                   annotations=dict(d.get("annotations") or {}))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.mediaType,
                               "manifests": [m.to_json() for m in self.manifests]}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class ExecConfig:
    """The ``config`` object of an image config (config.md "Properties"):
    the defaults a container of this image runs with."""

    User: str = ""
    Env: tuple[str, ...] = ()
    Entrypoint: tuple[str, ...] | None = None
    Cmd: tuple[str, ...] | None = None
    WorkingDir: str = ""
    Volumes: tuple[str, ...] = ()
    ExposedPorts: tuple[str, ...] = ()
    Labels: dict[str, str] = field(default_factory=dict)
    StopSignal: str = ""

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "ExecConfig":
        d = d or {}

        def strs(key: str) -> tuple[str, ...] | None:
            v = d.get(key)
            if v is None:
                return None
            if isinstance(v, str):  # tolerated by Docker for Entrypoint/Cmd written as a string
                return (v,)
            return tuple(str(x) for x in v)

        return cls(User=d.get("User") or "", Env=strs("Env") or (),
                   Entrypoint=strs("Entrypoint"), Cmd=strs("Cmd"),
                   WorkingDir=d.get("WorkingDir") or "",
                   Volumes=tuple(sorted((d.get("Volumes") or {}).keys())),
                   ExposedPorts=tuple(sorted((d.get("ExposedPorts") or {}).keys())),
                   Labels=dict(d.get("Labels") or {}), StopSignal=d.get("StopSignal") or "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.User:
            out["User"] = self.User
        if self.Env:
            out["Env"] = list(self.Env)
        if self.Entrypoint is not None:
            out["Entrypoint"] = list(self.Entrypoint)
        if self.Cmd is not None:
            out["Cmd"] = list(self.Cmd)
        if self.WorkingDir:
            out["WorkingDir"] = self.WorkingDir
        if self.Volumes:
            out["Volumes"] = {v: {} for v in self.Volumes}
        if self.ExposedPorts:
            out["ExposedPorts"] = {p: {} for p in self.ExposedPorts}
        if self.Labels:
            out["Labels"] = dict(self.Labels)
        if self.StopSignal:
            out["StopSignal"] = self.StopSignal
        return out


@dataclass(frozen=True)
class ImageConfig:
    """An image configuration (config.md): platform, run defaults, layer diff IDs."""

    architecture: str
    os: str
    config: ExecConfig
    diff_ids: tuple[str, ...]
    created: str | None = None
    author: str | None = None
    variant: str | None = None
    history: tuple[dict[str, Any], ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ImageConfig":
        rootfs = d.get("rootfs") or {}
        if rootfs.get("type") != "layers":
            raise ImageError(f"image config: rootfs.type must be 'layers', not {rootfs.get('type')!r}")
        return cls(architecture=d.get("architecture", ""), os=d.get("os", ""),
                   config=ExecConfig.from_json(d.get("config")),
                   diff_ids=tuple(check_digest(x) for x in rootfs.get("diff_ids") or ()),
                   created=d.get("created"), author=d.get("author"), variant=d.get("variant"),
                   history=tuple(d.get("history") or ()))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os,
                               "config": self.config.to_json(),
                               "rootfs": {"type": "layers", "diff_ids": list(self.diff_ids)}}
        if self.created:
            out["created"] = self.created
        if self.author:
            out["author"] = self.author
        if self.variant:
            out["variant"] = self.variant
        if self.history:
            out["history"] = list(self.history)
        return out


def chain_ids(diff_ids: list[str] | tuple[str, ...]) -> list[str]:
    """ChainID of every layer prefix (config.md "Layer ChainID").

    ``ChainID(L0) = DiffID(L0)``; ``ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))``.
    """
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else sha256_digest(f"{out[-1]} {d}".encode()))
    return out
