"""Getting images into the store: skopeo/podman-style transports, ``load`` and ``import``.

Sources, written as skopeo and podman write them (containers-transports(5)):

* ``oci:DIR[:TAG]`` — an OCI image layout directory (image-layout.md).  TAG
  is matched against each index entry's ``org.opencontainers.image.ref.name``;
  without TAG the layout must hold one image (or use ``all_tags``).  The image
  is named ``basename(DIR):TAG`` (``oci:/x/alpine:3.20.3`` → ``alpine:3.20.3``)
  unless the entry carries a full reference (``io.containerd.image.name``, or
  a ref.name containing ``/`` or ``:``).
* ``oci-archive:FILE[:TAG]`` — a tar (optionally gzip/zstd) of such a layout;
  named after FILE's basename without extensions the same way.
* ``docker-archive:FILE[:NAME:TAG]`` — what ``docker save`` writes
  (``manifest.json`` with ``Config``/``RepoTags``/``Layers``).  Converted to
  an OCI manifest: layer digests computed from the bytes as stored (usually
  uncompressed tars), the config blob kept byte for byte so the image ID is
  Docker's.  Named by its ``RepoTags`` (or NAME:TAG given).
* anything else that parses as an image reference (``alpine``,
  ``docker.io/library/alpine:3``, ``docker://…``) means a registry:
  :func:`ketch.image.registry.pull` (``platform``, ``tls_verify`` and
  ``progress`` are for it alone).

Every blob copied in is digest- and size-checked by
:meth:`~ketch.image.store.ContentStore.ingest`; every layer's diff ID is
checked against the config before the image gets a name, so a failed pull
leaves at most verified, unnamed blobs.  Blobs already stored are not copied
again.  Manifest indexes resolve to the host platform (linux/amd64 here).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform as _platform
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

from ketch.errors import DigestMismatch, ImageError, InvalidReference, KetchError
from ketch.image.layers import CHUNK, LayerInfo, detect_compression, layer_media_type, scan_layer
from ketch.image.reference import parse as parse_reference
from ketch.image.store import BlobInfo, Image, ImageStore
from ketch.oci import image as oci

TRANSPORTS = ("oci", "oci-archive", "docker-archive")
OTHER_TRANSPORTS = ("dir", "containers-storage", "docker-daemon", "ostree", "sif", "tarball", "oci-layout")
MAX_JSON_BLOB = 4 << 20  # manifests/configs/indexes larger than this are refused
CONTAINERD_NAME = "io.containerd.image.name"
_GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm",
           "armv6l": "arm", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x",
           "riscv64": "riscv64"}


def host_platform() -> oci.Platform:
    """This machine as an OCI platform: ``linux/amd64`` on x86-64 (Go's GOARCH names)."""
    m = _platform.machine()
    variant = {"aarch64": "v8", "armv7l": "v7", "armv6l": "v6"}.get(m)
    return oci.Platform(architecture=_GOARCH.get(m, m), os="linux", variant=variant)


@dataclass(frozen=True)
class Source:
    """A parsed pull source: ``transport`` (``oci``, ``oci-archive``, ``docker-archive``
    or ``docker`` for registries), ``path`` (dir/file; the reference for ``docker``)
    and ``ref`` (the TAG / NAME:TAG part, or None)."""

    transport: str
    path: str
    ref: str | None = None

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.ref}" if self.ref else "")


def parse_source(text: str) -> Source:
    """Parse ``oci:DIR[:TAG]``, ``oci-archive:FILE[:TAG]``, ``docker-archive:FILE[:NAME:TAG]``,
    ``docker://REF`` or a plain reference.

    As containers/image does, the path ends at the first ``:`` after the
    transport.  Raises :class:`ImageError` for an unknown or unsupported
    transport (``unknown transport "ocix" in "ocix:/d" …``) and
    :class:`InvalidReference` for a malformed plain reference.
    """
    head, sep, rest = text.partition(":")
    if sep and head in TRANSPORTS:
        path, _, ref = rest.partition(":")
        if not path:
            raise ImageError(f'{text}: missing path after "{head}:"')
        return Source(head, path, ref or None)
    if sep and head == "docker" and rest.startswith("//"):
        return Source("docker", str(parse_reference(rest[2:])))
    if sep and head in OTHER_TRANSPORTS:
        raise ImageError(f'transport "{head}" is not supported (in "{text}"); use one of: '
                         + ", ".join(t + ":" for t in TRANSPORTS))
    try:
        return Source("docker", str(parse_reference(text)))
    except InvalidReference:
        if sep and re.match(r"^[a-z][a-z0-9-]*$", head) and (rest.startswith("/") or rest.startswith(".")):
            raise ImageError(f'unknown transport "{head}" in "{text}"; use one of: '
                             + ", ".join(t + ":" for t in TRANSPORTS) + " or a registry reference") from None
        raise


@dataclass
class PullResult:
    """One image brought in: the stored ``image``, the ``names`` given to it
    (canonical), per-layer ``layers`` as ``(digest, "Pull complete" | "Already exists")``,
    and ``up_to_date`` when every name already pointed at this manifest."""

    image: Image
    names: tuple[str, ...]
    layers: list[tuple[str, str]] = field(default_factory=list)
    up_to_date: bool = False


# --------------------------------------------------------------------------
# Blob sources: an OCI layout as a directory or inside a tar


class _BlobSource:
    label: str

    def open_blob(self, desc: oci.Descriptor) -> BinaryIO:  # pragma: no cover - interface
        raise NotImplementedError

    def where(self, desc: oci.Descriptor) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def read_verified(self, desc: oci.Descriptor) -> bytes:
        """The blob's bytes after checking size and sha256 (DigestMismatch naming it otherwise)."""
        import hashlib
        if desc.size > MAX_JSON_BLOB:
            raise ImageError(f"{self.where(desc)}: {desc.size} bytes is too large for a manifest or config")
        with self.open_blob(desc) as f:
            data = f.read(desc.size + 1)
        got = "sha256:" + hashlib.sha256(data).hexdigest()
        if len(data) != desc.size or got != desc.digest:
            raise DigestMismatch(f"blob {desc.digest} ({self.where(desc)}): content does not match its "
                                 f"descriptor (got {len(data)}{'+' if len(data) > desc.size else ''} bytes, "
                                 f"want {desc.size})")
        return data

    def read_json_file(self, name: str) -> object:  # pragma: no cover - interface
        raise NotImplementedError


class _DirLayout(_BlobSource):
    def __init__(self, root: Path):
        self.root = root
        self.label = f"oci:{root}"
        if not root.is_dir():
            raise ImageError(f"{root}: no such directory" if not root.exists() else f"{root}: not a directory")
        if not (root / "oci-layout").is_file():
            raise ImageError(f"{root}: not an OCI image layout (no oci-layout file)")

    def _path(self, desc: oci.Descriptor) -> Path:
        oci.check_digest(desc.digest)
        return self.root / "blobs" / "sha256" / desc.digest[7:]

    def where(self, desc: oci.Descriptor) -> str:
        return str(self._path(desc))

    def open_blob(self, desc: oci.Descriptor) -> BinaryIO:
        try:
            return open(self._path(desc), "rb", buffering=0)
        except FileNotFoundError:
            raise ImageError(f"blob {desc.digest} missing from {self.root}") from None

    def read_json_file(self, name: str) -> object:
        try:
            return json.loads((self.root / name).read_bytes())
        except FileNotFoundError:
            raise ImageError(f"{self.root}: not an OCI image layout (no {name})") from None
        except ValueError as e:
            raise ImageError(f"{self.root / name}: invalid JSON: {e}") from None


class _TarArchive(_BlobSource):
    """Random access to the members of a tar file (decompressed to a temp file if needed)."""

    def __init__(self, path: Path, tmpdir: Path):
        self.path = path
        self.label = str(path)
        self._tmp: str | None = None
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{path}: is a directory, not an archive") from None
        with f:
            kind = detect_compression(f.read(4))
            if kind != "none":
                f.seek(0)
                from ketch.image.layers import open_uncompressed
                tmpdir.mkdir(parents=True, exist_ok=True)
                fd, self._tmp = tempfile.mkstemp(dir=tmpdir, prefix=".ingest-archive-")
                with os.fdopen(fd, "wb") as out:
                    try:
                        shutil.copyfileobj(open_uncompressed(f), out, CHUNK)
                    except Exception as e:
                        self.close()
                        raise ImageError(f"{path}: cannot decompress {kind} archive: {e}") from None
        try:
            self.tar = tarfile.open(self._tmp or path, "r:")
            self.members: dict[str, tarfile.TarInfo] = {}
            for m in self.tar.getmembers():
                self.members[_norm(m.name)] = m
        except (tarfile.TarError, OSError) as e:
            self.close()
            raise ImageError(f"{path}: not a tar archive: {e}") from None

    def close(self) -> None:
        if getattr(self, "tar", None) is not None:
            self.tar.close()
        if self._tmp:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp)
            self._tmp = None

    def __enter__(self) -> "_TarArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def has(self, name: str) -> bool:
        return _norm(name) in self.members

    def _resolve(self, name: str) -> tarfile.TarInfo:
        """The regular-file member ``name`` refers to, following links inside the archive
        (``docker save`` links duplicate layers: ``b/layer.tar -> ../a/layer.tar``)."""
        m = self.members.get(_norm(name))
        for _ in range(16):
            if m is None or not (m.issym() or m.islnk()):
                break
            target = os.path.join(os.path.dirname(m.name), m.linkname) if m.issym() else m.linkname
            m = self.members.get(_norm(target))
        if m is None:
            raise ImageError(f"{self.label}: archive has no {name} (or it is a dangling link)")
        if not m.isreg():
            raise ImageError(f"{self.label}: {name} is not a regular file")
        return m

    def open_member(self, name: str) -> BinaryIO:
        f = self.tar.extractfile(self._resolve(name))
        assert f is not None  # a regular member always has a file object
        return f  # type: ignore[return-value]

    def member_size(self, name: str) -> int:
        return self._resolve(name).size

    def read_json_file(self, name: str) -> object:
        if not self.has(name):
            raise ImageError(f"{self.path}: not an image archive (no {name})")
        with self.open_member(name) as f:
            data = f.read(MAX_JSON_BLOB + 1)
        try:
            return json.loads(data)
        except ValueError as e:
            raise ImageError(f"{self.path}: {name}: invalid JSON: {e}") from None

    # OCI layout inside the tar
    def where(self, desc: oci.Descriptor) -> str:
        return f"{self.path}:blobs/sha256/{desc.digest[7:]}"

    def open_blob(self, desc: oci.Descriptor) -> BinaryIO:
        name = "blobs/sha256/" + oci.check_digest(desc.digest)[7:]
        if not self.has(name):
            raise ImageError(f"blob {desc.digest} missing from {self.path}")
        return self.open_member(name)


def _norm(name: str) -> str:
    """Archive member name without leading ``/`` or ``./``: ``./a//b`` → ``a/b``."""
    p = os.path.normpath(name.lstrip("/"))
    return "" if p == "." else p


# --------------------------------------------------------------------------
# OCI layouts


def _entry_tagname(entry: oci.Descriptor) -> str | None:
    return entry.annotations.get(oci.ANNOTATION_REF_NAME)


def _name_for(entry: oci.Descriptor, base: str, tag_given: str | None) -> str | None:
    """Canonical name for an index entry of a layout whose dir/file is named ``base``."""
    full = entry.annotations.get(CONTAINERD_NAME)
    if full:
        with contextlib.suppress(InvalidReference):
            return str(parse_reference(full))
    tag = _entry_tagname(entry) or tag_given
    if tag and ("/" in tag or ":" in tag):
        with contextlib.suppress(InvalidReference):
            return str(parse_reference(tag))
    try:
        return str(parse_reference(f"{base}:{tag or 'latest'}"))
    except InvalidReference as e:
        raise InvalidReference(f'cannot name the image after "{base}" with tag "{tag or "latest"}": {e}') from None


def _base_name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for ext in (".tar.gz", ".tar.zst", ".tgz", ".tar", ".oci", ".zst", ".gz"):
        if base.endswith(ext) and len(base) > len(ext):
            return base[: -len(ext)]
    return base


def _select(index: oci.Index, tag: str | None, label: str, all_tags: bool) -> list[oci.Descriptor]:
    entries = list(index.manifests)
    if not entries:
        raise ImageError(f"{label}: the layout's index is empty")
    if tag is not None:
        chosen = [e for e in entries if _entry_tagname(e) == tag]
        if not chosen:
            tags = sorted({t for e in entries if (t := _entry_tagname(e))})
            raise ImageError(f'{label}: no image tagged "{tag}"' + (f" (tags: {', '.join(tags)})" if tags else ""))
        return _by_platform(chosen, label)
    if all_tags:
        groups: dict[str | None, list[oci.Descriptor]] = {}
        for e in entries:
            groups.setdefault(_entry_tagname(e), []).append(e)
        return [d for g in groups.values() for d in _by_platform(g, label)]
    picked = _by_platform(entries, label)
    if len(picked) != 1:
        tags = sorted({t for e in entries if (t := _entry_tagname(e))})
        raise ImageError(f"{label}: holds {len(entries)} images; name one as {label}:TAG or use --all-tags"
                         + (f" (tags: {', '.join(tags)})" if tags else ""))
    return picked


def _by_platform(entries: list[oci.Descriptor], label: str) -> list[oci.Descriptor]:
    """Among several entries of one tag that carry platforms, keep the host's."""
    if len(entries) > 1 and all(e.platform for e in entries):
        return [_choose_platform(entries, label)]
    return entries


def _choose_platform(entries: list[oci.Descriptor], label: str) -> oci.Descriptor:
    want = host_platform()
    fits = [e for e in entries if e.platform and e.platform.os == want.os
            and e.platform.architecture == want.architecture]
    if len(fits) > 1 and want.variant:
        fits = [e for e in fits if e.platform and e.platform.variant in (want.variant, None)] or fits
    if not fits:
        have = ", ".join(sorted({f"{e.platform.os}/{e.platform.architecture}" for e in entries if e.platform}))
        raise ImageError(f"{label}: no image for {want.os}/{want.architecture} (has: {have or 'none'})")
    return fits[0]


def _resolve_manifest(src: _BlobSource, desc: oci.Descriptor, depth: int = 0) -> tuple[oci.Descriptor, bytes]:
    """Follow indexes down to one image manifest; returns its descriptor and verified bytes."""
    if depth > 4:
        raise ImageError(f"{src.label}: indexes nested too deeply at {desc.digest}")
    data = src.read_verified(desc)
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ImageError(f"{src.where(desc)}: invalid JSON: {e}") from None
    mt = doc.get("mediaType") or desc.mediaType
    if mt in oci.INDEX_TYPES or (not doc.get("config") and "manifests" in doc):
        index = oci.Index.from_json(doc)
        label = f"{src.label} (index {desc.digest})"
        with_platform = [e for e in index.manifests if e.platform]
        if with_platform:
            return _resolve_manifest(src, _choose_platform(with_platform, label), depth + 1)
        if len(index.manifests) != 1:
            raise ImageError(f"{label}: {len(index.manifests)} manifests and no platforms to choose by")
        return _resolve_manifest(src, index.manifests[0], depth + 1)
    return desc, data


def _copy_image(store: ImageStore, src: _BlobSource, mdesc: oci.Descriptor, mbytes: bytes,
                names: list[str]) -> PullResult:
    """Copy one manifest's blobs (verified) into ``store`` and give it ``names``."""
    manifest = oci.Manifest.from_json(json.loads(mbytes), mdesc.mediaType)
    cbytes = src.read_verified(manifest.config)
    config = _parse_config(cbytes, src.where(manifest.config))
    _check_layer_count(config, manifest, src.label)
    layer_events: list[tuple[str, str]] = []
    for layer in manifest.layers:
        if layer.mediaType not in oci.LAYER_TYPES:
            raise ImageError(f"{src.label}: layer {layer.digest} has unsupported media type {layer.mediaType!r}")
        if store.content.has(layer.digest, layer.size):
            layer_events.append((layer.digest, "Already exists"))
            continue
        with src.open_blob(layer) as f:
            store.content.ingest(f, layer, source=src.where(layer))
        layer_events.append((layer.digest, "Pull complete"))
    infos = _verify_layers(store, manifest, config, src.label)
    store.content.ingest_bytes(cbytes, manifest.config.digest)
    store.content.ingest_bytes(mbytes, mdesc.digest)
    return _commit(store, mdesc.digest, names, infos, layer_events)


def _parse_config(cbytes: bytes, where: str) -> oci.ImageConfig:
    try:
        doc = json.loads(cbytes)
    except ValueError as e:
        raise ImageError(f"{where}: image config is not JSON: {e}") from None
    return oci.ImageConfig.from_json(doc)


def _check_layer_count(config: oci.ImageConfig, manifest: oci.Manifest, label: str) -> None:
    if len(config.diff_ids) != len(manifest.layers):
        raise ImageError(f"{label}: manifest has {len(manifest.layers)} layers but the config "
                         f"lists {len(config.diff_ids)} diff IDs")


def _verify_layers(store: ImageStore, manifest: oci.Manifest, config: oci.ImageConfig,
                   label: str, scanned: dict[str, LayerInfo] | None = None) -> dict[str, LayerInfo]:
    """Check every layer's diff ID against the config (scanning layers not seen before,
    unless ``scanned`` has their :class:`LayerInfo` from the way in)."""
    infos: dict[str, LayerInfo] = {}
    for layer, diff_id in zip(manifest.layers, config.diff_ids):
        known = store.layer_info(layer.digest)
        if known is not None:
            got = known["diffID"]
        elif scanned and layer.digest in scanned:
            infos[layer.digest] = scanned[layer.digest]
            got = scanned[layer.digest].diff_id
        else:
            info = scan_layer(store.content.path(layer.digest))
            infos[layer.digest] = info
            got = info.diff_id
        if got != diff_id:
            raise DigestMismatch(f"{label}: layer {layer.digest} uncompresses to {got}, "
                                 f"but the config says {diff_id}")
    return infos


def _commit(store: ImageStore, mdigest: str, names: list[str], infos: dict[str, LayerInfo],
            layer_events: list[tuple[str, str]]) -> PullResult:
    before = set()
    for n in names:
        with contextlib.suppress(KetchError):
            if store.resolve(n).manifest_digest == mdigest:
                before.add(n)
    image = store.add(mdigest, names, layers=infos)
    canon = tuple(str(parse_reference(n)) for n in names)
    return PullResult(image, canon, layer_events,
                      up_to_date=bool(names) and len(before) == len(names)
                      and all(e == "Already exists" for _, e in layer_events))


def _pull_layout(store: ImageStore, src: _BlobSource, base: str, tag: str | None,
                 all_tags: bool) -> list[PullResult]:
    layout = src.read_json_file("oci-layout")
    if not isinstance(layout, dict) or "imageLayoutVersion" not in layout:
        raise ImageError(f"{src.label}: oci-layout lacks imageLayoutVersion")
    index_doc = src.read_json_file("index.json")
    if not isinstance(index_doc, dict):
        raise ImageError(f"{src.label}: index.json is not an object")
    index = oci.Index.from_json(index_doc)
    results = []
    for entry in _select(index, tag, str(src.label), all_tags):
        mdesc, mbytes = _resolve_manifest(src, entry)
        name = _name_for(entry, base, tag)
        results.append(_copy_image(store, src, mdesc, mbytes, [name] if name else []))
    return results


# --------------------------------------------------------------------------
# docker-archive


def _pull_docker_archive(store: ImageStore, arc: _TarArchive, want: str | None,
                         load_all: bool) -> list[PullResult]:
    doc = arc.read_json_file("manifest.json")
    if not isinstance(doc, list) or not doc:
        raise ImageError(f"{arc.label}: manifest.json is not a non-empty list")
    entries = []
    for e in doc:
        if not isinstance(e, dict) or not isinstance(e.get("Config"), str) or not isinstance(e.get("Layers"), list):
            raise ImageError(f"{arc.label}: manifest.json entry lacks Config or Layers")
        tags = [str(parse_reference(t)) for t in (e.get("RepoTags") or [])]
        entries.append((e, tags))
    if want is not None:
        w = str(parse_reference(want))
        chosen = [(e, [w]) for e, tags in entries if w in tags]
        if not chosen:
            have = sorted({parse_reference(t).familiar for _, tags in entries for t in tags})
            raise ImageError(f'{arc.label}: no image named "{want}"' + (f" (has: {', '.join(have)})" if have else ""))
        chosen = chosen[:1]
    elif load_all or len(entries) == 1:
        chosen = entries
    else:
        raise ImageError(f"{arc.label}: holds {len(entries)} images; name one as docker-archive:FILE:NAME:TAG")
    return [_docker_image(store, arc, e, tags) for e, tags in chosen]


_HEXNAME = re.compile(r"(?:^|/)(?:blobs/sha256/)?([0-9a-f]{64})(?:\.tar)?$")


def _docker_image(store: ImageStore, arc: _TarArchive, entry: dict, names: list[str]) -> PullResult:
    with arc.open_member(entry["Config"]) as f:
        cbytes = f.read(MAX_JSON_BLOB + 1)
    config = _parse_config(cbytes, f"{arc.label}:{entry['Config']}")
    if len(config.diff_ids) != len(entry["Layers"]):
        raise ImageError(f"{arc.label}: image {entry['Config']} lists {len(entry['Layers'])} layers "
                         f"but its config has {len(config.diff_ids)} diff IDs")
    descs: list[oci.Descriptor] = []
    events: list[tuple[str, str]] = []
    for name, diff_id in zip(entry["Layers"], config.diff_ids):
        size = arc.member_size(name)
        m = _HEXNAME.search(_norm(name))
        hint = "sha256:" + m.group(1) if m else None
        # An uncompressed layer's blob digest is its diff ID: if that blob is
        # stored with this size, the archive's copy is not needed (the diff IDs
        # are verified below either way).
        present = next((h for h in (hint, diff_id) if h and store.content.has(h, size)), None)
        if present:
            info = BlobInfo(present, size)
            events.append((present, "Already exists"))
        else:
            expected = BlobInfo(hint, size) if hint and "blobs/sha256/" in _norm(name) else None
            with arc.open_member(name) as f:
                info = store.content.ingest(f, expected, source=f"{arc.label}:{name}")
            events.append((info.digest, "Pull complete"))
        with open(store.content.path(info.digest), "rb") as bf:
            kind = detect_compression(bf.read(4))
        descs.append(oci.Descriptor(layer_media_type(kind), info.digest, info.size))
    cdesc = oci.Descriptor(oci.OCI_CONFIG, oci.sha256_digest(cbytes), len(cbytes))
    manifest = oci.Manifest(oci.OCI_MANIFEST, cdesc, tuple(descs))
    infos = _verify_layers(store, manifest, config, arc.label)
    store.content.ingest_bytes(cbytes)
    mbytes = json.dumps(manifest.to_json(), separators=(",", ":")).encode()
    mdigest = store.content.ingest_bytes(mbytes).digest
    return _commit(store, mdigest, names, infos, events)


# --------------------------------------------------------------------------
# Public entry points


def pull(store: ImageStore, source: str, all_tags: bool = False, *, platform: str | None = None,
         tls_verify: bool = True, progress: Callable | None = None) -> list[PullResult]:
    """Bring the image(s) named by ``source`` (see the module doc) into ``store``.

    Returns one :class:`PullResult` per image (several only with
    ``all_tags``, which takes every tagged image of an ``oci:``/``oci-archive:``
    layout, like ``docker pull --all-tags``).  Raises :class:`ImageError`
    (missing dir/file/tag, not a layout, registry source),
    :class:`DigestMismatch` (a blob or layer differs from its descriptor or
    diff ID) or :class:`InvalidReference`; on error no new name is recorded.
    """
    src = parse_source(source)
    if src.transport == "docker":
        if all_tags:
            raise ImageError(f"--all-tags is only supported for oci: and oci-archive: sources, not {src.path}")
        from ketch.image import registry
        return [registry.pull(store, src.path, platform=platform, tls_verify=tls_verify, progress=progress)]
    path = Path(os.path.abspath(src.path))
    if src.transport == "oci":
        return _pull_layout(store, _DirLayout(path), _base_name(src.path), src.ref, all_tags)
    with _TarArchive(path, store.content.blobs) as arc:
        arc.label = f"{src.transport}:{path}"
        if src.transport == "oci-archive":
            return _pull_layout(store, arc, _base_name(src.path), src.ref, all_tags)
        return _pull_docker_archive(store, arc, src.ref, load_all=all_tags)


def load(store: ImageStore, file: Path | str | BinaryIO) -> list[PullResult]:
    """``docker load``: every image of a docker-archive or OCI archive (tar, tar.gz, tar.zst).

    ``file`` is a path or a binary stream (stdin), spooled to a temp file in
    the content store first.  A docker-archive (``manifest.json``) keeps its
    ``RepoTags``; an OCI archive's entries are named by
    ``io.containerd.image.name`` or a full-reference ``ref.name``, else stay
    untagged (``Loaded image ID:``).  Errors as :func:`pull`.
    """
    spooled = None
    if not isinstance(file, (str, Path)):
        store.content.init()
        fd, spooled = tempfile.mkstemp(dir=store.content.blobs, prefix=".ingest-load-")
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(file, out, CHUNK)
        path = Path(spooled)
        label = "stdin"
    else:
        path = Path(os.path.abspath(file))
        label = str(file)
    try:
        with _TarArchive(path, store.content.blobs) as arc:
            arc.label = label
            if arc.has("manifest.json") and not (arc.has("index.json") and arc.has("oci-layout")):
                return _pull_docker_archive(store, arc, None, load_all=True)
            if arc.has("index.json"):
                return _load_oci(store, arc)
            if arc.has("manifest.json"):
                return _pull_docker_archive(store, arc, None, load_all=True)
            raise ImageError(f"{label}: neither a docker-archive (manifest.json) nor an OCI archive (index.json)")
    finally:
        if spooled:
            with contextlib.suppress(OSError):
                os.unlink(spooled)


def _load_oci(store: ImageStore, arc: _TarArchive) -> list[PullResult]:
    index = oci.Index.from_json(arc.read_json_file("index.json"))  # type: ignore[arg-type]
    tags_by_config: dict[str, list[str]] = {}
    if arc.has("manifest.json"):  # docker >= 25 writes both: RepoTags are the names
        with contextlib.suppress(ImageError, InvalidReference):
            for e in arc.read_json_file("manifest.json"):  # type: ignore[union-attr]
                cfg = "sha256:" + os.path.basename(e["Config"]).removesuffix(".json")
                tags_by_config.setdefault(cfg, []).extend(str(parse_reference(t)) for t in e.get("RepoTags") or [])
    results = []
    for entry in _select(index, None, arc.label, all_tags=True):
        mdesc, mbytes = _resolve_manifest(arc, entry)
        names: list[str] = []
        full = entry.annotations.get(CONTAINERD_NAME) or ""
        ref = _entry_tagname(entry) or ""
        for cand in (full, ref if ("/" in ref or ":" in ref) else ""):
            if cand and not names:
                with contextlib.suppress(InvalidReference):
                    names = [str(parse_reference(cand))]
        if not names:
            cfg = json.loads(mbytes).get("config", {}).get("digest", "")
            names = tags_by_config.get(cfg, [])
        results.append(_copy_image(store, arc, mdesc, mbytes, names))
    return results


_INSTRUCTION = re.compile(r"^\s*([A-Za-z]+)\s+(.*)$", re.S)


def apply_changes(config: dict, changes: list[str]) -> None:
    """Apply ``docker import --change`` Dockerfile instructions to a config's ``config`` object.

    Supports CMD, ENTRYPOINT (JSON array or shell form → ``/bin/sh -c``),
    ENV (``K=V …`` or ``K V``), WORKDIR, USER, LABEL, EXPOSE, VOLUME,
    STOPSIGNAL.  Raises :class:`ImageError` for anything else.
    """
    import shlex
    c = config
    for ch in changes:
        m = _INSTRUCTION.match(ch)
        if not m:
            raise ImageError(f"invalid --change {ch!r}: want INSTRUCTION ARGS")
        ins, arg = m.group(1).upper(), m.group(2).strip()

        def argv() -> list[str]:
            if arg.startswith("["):
                try:
                    v = json.loads(arg)
                except ValueError:
                    v = None
                if isinstance(v, list) and all(isinstance(x, str) for x in v):
                    return v
            return ["/bin/sh", "-c", arg]

        if ins == "CMD":
            c["Cmd"] = argv()
        elif ins == "ENTRYPOINT":
            c["Entrypoint"] = argv()
        elif ins == "ENV":
            env = [e for e in c.get("Env") or []]
            parts = shlex.split(arg)
            pairs = [p.split("=", 1) for p in parts] if parts and "=" in parts[0] else [[parts[0], " ".join(parts[1:])]]
            for k, v in pairs:
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            c["Env"] = env
        elif ins == "WORKDIR":
            c["WorkingDir"] = arg
        elif ins == "USER":
            c["User"] = arg
        elif ins == "STOPSIGNAL":
            c["StopSignal"] = arg
        elif ins == "LABEL":
            labels = dict(c.get("Labels") or {})
            for p in shlex.split(arg):
                k, _, v = p.partition("=")
                labels[k] = v
            c["Labels"] = labels
        elif ins == "EXPOSE":
            ports = dict(c.get("ExposedPorts") or {})
            for p in arg.split():
                ports[p if "/" in p else p + "/tcp"] = {}
            c["ExposedPorts"] = ports
        elif ins == "VOLUME":
            vols = dict(c.get("Volumes") or {})
            for v in argv() if arg.startswith("[") else arg.split():
                vols[v] = {}
            c["Volumes"] = vols
        else:
            raise ImageError(f"invalid --change {ch!r}: {ins} is not supported by import")


def import_rootfs(store: ImageStore, file: Path | str | BinaryIO, name: str | None = None,
                  message: str | None = None, changes: list[str] | None = None,
                  now: Callable[[], str] | None = None) -> PullResult:
    """``docker import``: make a one-layer image from a root filesystem tar (plain, gzip or zstd).

    The file is stored as the layer blob unchanged (media type from its
    compression); the diff ID is the sha256 of the uncompressed tar; the config
    has ``os`` linux, ``architecture`` of this host (amd64 here), ``created``
    now (RFC 3339 UTC), a history entry ``Imported from FILE`` (or
    ``message``), and the ``changes`` applied (:func:`apply_changes`).
    ``name`` (``NAME[:TAG]``, default tag latest) is optional.  Raises
    :class:`~ketch.errors.LayerError` if the input is not a tar,
    :class:`ImageError` if it is missing.
    """
    label = "-"
    spooled = None
    if name is not None:
        parsed = parse_reference(name)
        if parsed.digest:
            raise InvalidReference(f'invalid reference format: "{name}": cannot import with a digest')
    store.content.init()
    if isinstance(file, (str, Path)):
        path = Path(os.path.abspath(file))
        label = str(file)
        if not path.is_file():
            raise ImageError(f"{file}: no such file" if not path.exists() else f"{file}: not a regular file")
    else:
        fd, spooled = tempfile.mkstemp(dir=store.content.blobs, prefix=".ingest-import-")
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(file, out, CHUNK)
        path = Path(spooled)
    try:
        info = scan_layer(path)
        with open(path, "rb", buffering=0) as f:
            blob = store.content.ingest(f, source=label)
    finally:
        if spooled:
            with contextlib.suppress(OSError):
                os.unlink(spooled)
    created = now() if now else _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    exec_config: dict = {}
    apply_changes(exec_config, list(changes or []))
    plat = host_platform()
    cfg: dict = {"architecture": plat.architecture, "os": "linux", "created": created, "config": exec_config,
                 "rootfs": {"type": "layers", "diff_ids": [info.diff_id]},
                 "history": [{"created": created, "comment": message or f"Imported from {label}"}]}
    if plat.variant and plat.architecture != "amd64":
        cfg["variant"] = plat.variant
    cbytes = json.dumps(cfg, separators=(",", ":")).encode()
    cblob = store.content.ingest_bytes(cbytes)
    manifest = oci.Manifest(oci.OCI_MANIFEST, oci.Descriptor(oci.OCI_CONFIG, cblob.digest, cblob.size),
                            (oci.Descriptor(layer_media_type(info.compression), blob.digest, blob.size),))
    mblob = store.content.ingest_bytes(json.dumps(manifest.to_json(), separators=(",", ":")).encode())
    return _commit(store, mblob.digest, [name] if name else [], {blob.digest: info},
                   [(blob.digest, "Pull complete")])
