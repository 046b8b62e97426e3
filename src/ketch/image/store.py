"""The local image store: a content-addressed blob store plus image names.

Two layers, as containerd's content store and image store:

* :class:`ContentStore` — an OCI image layout (image-spec image-layout.md) at
  ``paths.content``: an ``oci-layout`` file, ``blobs/sha256/<hex>`` and an
  ``index.json``.  Every blob is written by streaming into a temp file in the
  same directory while hashing, checked against the expected digest and size,
  fsynced and renamed into place, so a blob that exists is always complete
  and correct.
* :class:`ImageStore` — the images: records keyed by manifest digest in
  ``paths.images`` (JSON, replaced atomically, changes serialized by
  ``flock`` on ``paths.lock``).  ``index.json`` of the layout is regenerated
  from it on every change (one entry per name, annotation
  ``org.opencontainers.image.ref.name`` = canonical name), so the store is
  readable by ``skopeo``/``umoci`` as ``oci:ROOT/content:docker.io/library/alpine:3.20.3``.

``images.json``::

    {"schemaVersion": 1,
     "images": {"sha256:<manifest>": {"id": "sha256:<config>",
                                       "names": ["docker.io/library/alpine:3.20.3"],
                                       "added": "2024-10-01T12:00:00Z"}},
     "layers": {"sha256:<layer blob>": {"diffID": "sha256:<uncompressed tar>",
                                         "unpackedSize": 7797000}}}

A name belongs to at most one image; an image whose last name moved elsewhere
stays as a dangling ``<none>:<none>`` image (as Docker's), unless another
image with the same ID still has names, in which case it is dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from ketch.errors import DigestMismatch, ImageError, ImageNotFound, InvalidReference
from ketch.oci.image import (ANNOTATION_REF_NAME, OCI_INDEX, OCI_MANIFEST, Descriptor, ImageConfig,
                             Manifest, chain_ids, check_digest)

TYPE_CHECKING = False  # typing is not imported at run time (start-up)
if TYPE_CHECKING:
    from typing import Any, BinaryIO, Iterable, Iterator

CHUNK = 1 << 20
LAYOUT_VERSION = "1.0.0"
STRAY_GRACE_SECONDS = 3600  # unreferenced blobs younger than this may belong to a pull in flight


def _now() -> str:
    import datetime as _dt  # here, like tempfile below: `run` only reads the store
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temp file in the same directory, fsync, rename, fsync dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    import tempfile
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: ``digest`` (``sha256:<hex>``) and ``size`` in bytes."""

    digest: str
    size: int


class ContentStore:
    """Blobs by digest in an OCI image layout rooted at ``root`` (usually ``paths.content``).

    Digests are validated with :func:`~ketch.oci.image.check_digest` before use
    as file names; only sha256 is stored.  Nothing is created until the first
    write.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"

    # -- layout -----------------------------------------------------------
    def init(self) -> None:
        """Create the layout (``oci-layout``, ``blobs/sha256``, empty ``index.json``) if absent."""
        if (self.root / "oci-layout").exists() and self.blobs.is_dir():
            return
        self.blobs.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / "oci-layout", json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
        if not (self.root / "index.json").exists():
            self.write_index([])

    def write_index(self, manifests: list[Descriptor]) -> None:
        """Replace ``index.json`` with an OCI index of ``manifests`` (image-layout.md "index.json")."""
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [m.to_json() for m in manifests]}
        atomic_write(self.root / "index.json", json.dumps(doc, indent=1).encode())

    # -- queries ----------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        """Where blob ``digest`` lives (whether or not it exists); raises ImageError for a bad digest."""
        return self.blobs / check_digest(digest)[7:]

    def has(self, digest: str, size: int | None = None) -> bool:
        """True if blob ``digest`` is stored (and, given ``size``, has that many bytes)."""
        try:
            st = os.stat(self.blob_path(digest))
        except FileNotFoundError:
            return False
        return size is None or st.st_size == size

    def path(self, digest: str) -> Path:
        """Path of stored blob ``digest``; raises :class:`ImageError` ``blob sha256:… not found``."""
        p = self.blob_path(digest)
        if not p.exists():
            raise ImageError(f"blob {digest} not found in the content store {self.root}")
        return p

    def size(self, digest: str) -> int:
        """Size in bytes of stored blob ``digest`` (ImageError if absent)."""
        return self.path(digest).stat().st_size

    def read_bytes(self, digest: str) -> bytes:
        """Contents of blob ``digest`` (ImageError if absent)."""
        return self.path(digest).read_bytes()

    def read_json(self, digest: str) -> Any:
        """Blob ``digest`` parsed as JSON; ImageError if absent or not JSON."""
        try:
            return json.loads(self.read_bytes(digest))
        except (ValueError, UnicodeDecodeError) as e:
            raise ImageError(f"blob {digest} is not valid JSON: {e}") from None

    def digests(self) -> Iterator[str]:
        """Every stored blob's digest (temp files skipped)."""
        try:
            names = os.listdir(self.blobs)
        except FileNotFoundError:
            return
        for n in names:
            if len(n) == 64 and not n.startswith("."):
                yield "sha256:" + n

    # -- writes -----------------------------------------------------------
    def ingest(self, stream: BinaryIO, expected: Descriptor | BlobInfo | None = None,
               *, source: str | None = None) -> BlobInfo:
        """Store everything readable from ``stream`` as a blob and return its digest and size.

        Reads in 1 MiB chunks into ``blobs/sha256/.ingest-*`` while hashing.
        With ``expected`` (anything with ``digest`` and ``size``), the sha256
        and the byte count must match — reading stops as soon as the stream
        exceeds the expected size — else :class:`DigestMismatch` naming the
        expected digest (and ``source``, a human name of where the bytes came
        from) is raised and the temp file removed.  If the blob is already
        stored the new copy is discarded (the rename is idempotent).  The
        file is fsynced before an atomic rename.
        """
        import hashlib
        self.init()
        want_digest = check_digest(expected.digest) if expected is not None else None
        want_size = expected.size if expected is not None else None
        h = hashlib.sha256()
        n = 0
        import tempfile
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".ingest-")
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    b = stream.read(CHUNK)
                    if not b:
                        break
                    h.update(b)
                    n += len(b)
                    if want_size is not None and n > want_size:
                        break
                    out.write(b)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + h.hexdigest()
            if want_digest is not None and (digest != want_digest or n != want_size):
                where = f" ({source})" if source else ""
                if n > want_size:
                    got = f"more than {want_size} bytes"
                else:
                    got = f"{n} bytes with digest {digest}"
                raise DigestMismatch(f"blob {want_digest}{where}: digest mismatch: got {got}, "
                                     f"want {want_size} bytes")
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blobs / digest[7:])
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.blobs)
        return BlobInfo(digest, n)

    def ingest_bytes(self, data: bytes, expected_digest: str | None = None) -> BlobInfo:
        """Store ``data``; with ``expected_digest`` verify it first (DigestMismatch otherwise).

        Returns at once, writing nothing, when the blob is already stored.
        """
        import hashlib
        import io
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if expected_digest is not None and digest != check_digest(expected_digest):
            raise DigestMismatch(f"blob {expected_digest}: content has digest {digest}")
        if self.has(digest, len(data)):
            return BlobInfo(digest, len(data))
        return self.ingest(io.BytesIO(data), BlobInfo(digest, len(data)))

    def partial_path(self, digest: str) -> Path:
        """Where a download of blob ``digest`` keeps its bytes until complete
        (``blobs/sha256/.ingest-partial-<hex>``; removed by GC after an hour like
        any ``.ingest-*`` file).  Creates the layout."""
        self.init()
        return self.blobs / (".ingest-partial-" + check_digest(digest)[7:])

    def commit_partial(self, tmp: Path, expected: Descriptor | BlobInfo, hasher: Any,
                       *, source: str | None = None) -> BlobInfo:
        """Move the completely written file ``tmp`` (in ``blobs/``) into place as blob ``expected``.

        ``hasher`` is a ``hashlib.sha256()`` object that was fed exactly the
        file's bytes as they were written, so the file need not be read again.
        The size (``stat``) and digest must match ``expected``; otherwise
        :class:`DigestMismatch` (naming ``source``) is raised and ``tmp`` is
        removed.  The file is fsynced before an atomic rename.
        """
        want = check_digest(expected.digest)
        got = "sha256:" + hasher.hexdigest()
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                n = os.fstat(fd).st_size
                if got != want or n != expected.size:
                    where = f" ({source})" if source else ""
                    raise DigestMismatch(f"blob {want}{where}: digest mismatch: got {n} bytes with digest "
                                         f"{got}, want {expected.size} bytes")
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blobs / want[7:])
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.blobs)
        return BlobInfo(want, expected.size)

    def copy_in(self, src: Path | str, expected: Descriptor | BlobInfo) -> bool:
        """Copy the file ``src`` in as blob ``expected`` unless already stored with that size.

        Returns True if bytes were copied.  Verified as :meth:`ingest`
        (:class:`DigestMismatch` naming ``src``).  Never hard-links: a link
        would share the inode with a file someone else may change.
        """
        if self.has(expected.digest, expected.size):
            return False
        try:
            f = open(src, "rb", buffering=0)
        except FileNotFoundError:
            raise ImageError(f"blob {expected.digest} missing: {src}") from None
        with f:
            self.ingest(f, expected, source=str(src))
        return True

    def delete(self, digest: str) -> bool:
        """Remove blob ``digest``; True if it existed."""
        try:
            os.unlink(self.blob_path(digest))
            return True
        except FileNotFoundError:
            return False

    def remove_stale_temps(self, older_than: float = STRAY_GRACE_SECONDS) -> None:
        """Delete ``.ingest-*`` temp files left by killed writers, older than ``older_than`` s."""
        cutoff = time.time() - older_than
        try:
            entries = list(os.scandir(self.blobs))
        except FileNotFoundError:
            return
        for e in entries:
            if e.name.startswith(".ingest-"):
                with contextlib.suppress(OSError):
                    if e.stat().st_mtime < cutoff:
                        os.unlink(e.path)


# --------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class Image:
    """A stored image.

    ``id`` is the config digest (``sha256:…``, Docker's IMAGE ID);
    ``manifest_digest`` the manifest blob's digest; ``names`` the canonical
    references (``docker.io/library/alpine:3.20.3``) sorted; ``size`` the
    unpacked size in bytes as Docker's SIZE column (regular files + symlink
    targets, see :mod:`ketch.image.layers`), falling back to a layer's
    compressed size when it was never scanned; ``added`` when it was stored
    (RFC 3339 UTC); ``config_json`` the raw config blob parsed (fields the
    typed :class:`ImageConfig` does not model, e.g. ``Healthcheck``).
    """

    id: str
    manifest_digest: str
    manifest: Manifest
    config: ImageConfig
    names: tuple[str, ...]
    size: int
    added: str
    config_json: dict

    @property
    def short_id(self) -> str:
        """First 12 hex digits of the ID, as ``docker images`` shows it."""
        return self.id[7:19]

    @property
    def chain_ids(self) -> list[str]:
        """ChainID of each layer prefix (config.md), the snapshot keys."""
        return chain_ids(self.config.diff_ids)

    @property
    def repo_tags(self) -> list[str]:
        """Familiar names: ``["alpine:3.20.3"]``."""
        from ketch.image.reference import familiar
        return [familiar(n) for n in self.names]

    @property
    def repo_digests(self) -> list[str]:
        """``repository@manifest-digest`` for each repository named, familiar form."""
        from ketch.image.reference import parse
        repos = sorted({parse(n, default_tag=False).familiar_name for n in self.names})
        return [f"{r}@{self.manifest_digest}" for r in repos]

    @property
    def compressed_size(self) -> int:
        """Sum of the layer blobs' sizes in bytes (what a registry transfers)."""
        return sum(layer.size for layer in self.manifest.layers)


def _empty_db() -> dict:
    return {"schemaVersion": 1, "images": {}, "layers": {}}


_HEX_RE = re.compile(r"^[0-9a-f]+$")


class ImageStore:
    """Named images over a :class:`ContentStore`, persisted in ``paths.images``.

    Reads take no lock (the file is replaced atomically); every change holds
    ``flock(paths.lock, LOCK_EX)`` for its read-modify-write.  Raises
    :class:`ImageNotFound` (``No such image: alpine:latest``) for unknown
    images and :class:`InvalidReference` for malformed names.
    """

    def __init__(self, paths):
        self.paths = paths
        self.content = ContentStore(paths.content)

    # -- persistence ------------------------------------------------------
    def _load(self) -> dict:
        try:
            data = self.paths.images.read_bytes()
        except FileNotFoundError:
            return _empty_db()
        try:
            db = json.loads(data)
        except ValueError as e:
            raise ImageError(f"{self.paths.images}: corrupt image database: {e}") from None
        if not isinstance(db, dict) or db.get("schemaVersion") != 1:
            raise ImageError(f"{self.paths.images}: unsupported image database version")
        db.setdefault("images", {})
        db.setdefault("layers", {})
        return db

    def _save(self, db: dict) -> None:
        atomic_write(self.paths.images, json.dumps(db, indent=1, sort_keys=True).encode(), 0o600)
        self._write_layout_index(db)

    def _write_layout_index(self, db: dict) -> None:
        out: list[Descriptor] = []
        for mdigest, rec in sorted(db["images"].items()):
            size = self.content.size(mdigest) if self.content.has(mdigest) else 0
            for name in rec["names"] or [None]:
                ann = {ANNOTATION_REF_NAME: name} if name else {}
                out.append(Descriptor(OCI_MANIFEST, mdigest, size, ann))
        self.content.init()
        self.content.write_index(out)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        """Hold the store lock; yield the database; save it if the body changed it."""
        self.paths.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            db = self._load()
            before = json.dumps(db, sort_keys=True)
            yield db
            if json.dumps(db, sort_keys=True) != before:
                self._save(db)
        finally:
            os.close(fd)  # closing drops the flock

    # -- building Image values --------------------------------------------
    def _image(self, mdigest: str, rec: dict, layers: dict) -> Image:
        manifest = Manifest.from_json(self.content.read_json(mdigest))
        raw = self.content.read_json(manifest.config.digest)
        config = ImageConfig.from_json(raw)
        size = 0
        for layer in manifest.layers:
            info = layers.get(layer.digest)
            size += info["unpackedSize"] if info else layer.size
        return Image(id=manifest.config.digest, manifest_digest=mdigest, manifest=manifest, config=config,
                     names=tuple(sorted(rec.get("names") or ())), size=size,
                     added=rec.get("added") or "", config_json=raw)

    def list(self) -> list[Image]:
        """Every image (tagged and dangling), newest ``created`` first."""
        db = self._load()
        imgs = [self._image(d, r, db["layers"]) for d, r in db["images"].items()]
        imgs.sort(key=lambda i: (created_time(i.config.created) or 0.0, i.added), reverse=True)
        return imgs

    def get(self, manifest_digest: str) -> Image:
        """The image whose manifest is ``manifest_digest`` (ImageNotFound otherwise)."""
        db = self._load()
        rec = db["images"].get(manifest_digest)
        if rec is None:
            raise ImageNotFound(f"No such image: {manifest_digest}")
        return self._image(manifest_digest, rec, db["layers"])

    def resolve(self, ref: str) -> Image:
        """Find an image by name, ID, ID prefix or ``name@sha256:<manifest digest>``.

        Tried in Docker's order: a name (normalized: ``alpine`` →
        ``docker.io/library/alpine:latest``); then, if ``ref`` is
        ``[sha256:]<hex>`` with at least 4 hex digits, an image ID or ID prefix
        (:class:`ImageError` if the prefix is ambiguous).  Raises
        :class:`ImageNotFound` ``No such image: alpine:latest`` (familiar
        form) or :class:`InvalidReference` if ``ref`` is neither.
        """
        db = self._load()
        mdigest = self._find(db, ref)
        return self._image(mdigest, db["images"][mdigest], db["layers"])

    def _find(self, db: dict, ref: str) -> str:
        """Manifest digest of ``ref`` in ``db`` (see :meth:`resolve`)."""
        images = db["images"]
        parsed = None
        parse_error: InvalidReference | None = None
        try:
            from ketch.image.reference import parse
            parsed = parse(ref)
        except InvalidReference as e:
            parse_error = e
        if parsed is not None:
            if parsed.digest:
                for d, rec in images.items():
                    if d == parsed.digest and any(_repo_of(n) == parsed.name for n in rec["names"]):
                        return d
            else:
                want = str(parsed)
                for d, rec in images.items():
                    if want in rec["names"]:
                        return d
        hexpart = ref[7:] if ref.startswith("sha256:") else ref
        if len(hexpart) >= 4 and _HEX_RE.match(hexpart):
            ids = {}
            for d, rec in images.items():
                if rec["id"][7:].startswith(hexpart):
                    ids.setdefault(rec["id"], []).append(d)
            if len(ids) > 1:
                raise ImageError(f"ambiguous image ID prefix {ref!r}: matches {len(ids)} images")
            if ids:
                (cands,) = ids.values()
                # Several manifests of one config (e.g. pulled from OCI and from a
                # docker-archive): prefer a named one, then the newest.
                cands.sort(key=lambda d: (bool(images[d]["names"]), images[d].get("added", "")), reverse=True)
                return cands[0]
        if parsed is None:
            assert parse_error is not None
            raise parse_error
        raise ImageNotFound(f"No such image: {parsed.familiar}")

    # -- changes ----------------------------------------------------------
    def add(self, manifest_digest: str, names: Iterable[str] | str | None = (),
            layers: dict[str, Any] | None = None) -> Image:
        """Record the image whose manifest blob is ``manifest_digest`` under ``names``.

        ``names`` are references (normalized here, default tag ``latest``; a
        name moves from any image that had it).  ``layers`` maps layer blob
        digests to :class:`~ketch.image.layers.LayerInfo` (or dicts with
        ``diffID``/``unpackedSize``) to remember.  Under the lock, checks that
        the manifest, its config and every layer blob are stored — raising
        :class:`ImageError` ``image … incomplete: blob … missing`` and changing
        nothing otherwise — so a name never points at missing content.
        """
        from ketch.image.reference import parse
        if isinstance(names, str):
            names = [names]
        canon = []
        for n in names or ():
            r = parse(n)
            if r.digest:
                raise InvalidReference(f'invalid reference format: "{n}": cannot name an image with a digest')
            canon.append(str(r))
        check_digest(manifest_digest)
        with self._locked() as db:
            manifest = Manifest.from_json(self.content.read_json(manifest_digest))
            for desc in (manifest.config, *manifest.layers):
                if not self.content.has(desc.digest, desc.size):
                    raise ImageError(f"image {manifest_digest} incomplete: blob {desc.digest} missing")
            for digest, info in (layers or {}).items():
                if hasattr(info, "diff_id"):
                    info = {"diffID": info.diff_id, "unpackedSize": info.unpacked_size}
                db["layers"][digest] = {"diffID": info["diffID"], "unpackedSize": info["unpackedSize"]}
            rec = db["images"].setdefault(manifest_digest, {"id": manifest.config.digest, "names": [],
                                                            "added": _now()})
            for c in canon:
                self._take_name(db, c, manifest_digest)
                if c not in rec["names"]:
                    rec["names"].append(c)
            rec["names"].sort()
            if canon:
                rec["added"] = _now()
            return self._image(manifest_digest, rec, db["layers"])

    def _take_name(self, db: dict, name: str, new_owner: str) -> None:
        """Remove ``name`` from every image but ``new_owner``; drop redundant dangling ones."""
        for d, rec in list(db["images"].items()):
            if d != new_owner and name in rec["names"]:
                rec["names"].remove(name)
                if not rec["names"] and self._id_named_elsewhere(db, rec["id"], d, new_owner):
                    self._drop(db, [d])

    @staticmethod
    def _id_named_elsewhere(db: dict, image_id: str, but: str, new_owner: str | None = None) -> bool:
        for d, rec in db["images"].items():
            if d != but and rec["id"] == image_id and (rec["names"] or d == new_owner):
                return True
        return False

    def tag(self, src_ref: str, new_name: str) -> Image:
        """Give the image ``src_ref`` (anything :meth:`resolve` takes) the name ``new_name``.

        Like ``docker tag``: ``new_name`` without a tag gets ``latest``; a
        name held by another image moves.  Raises ImageNotFound /
        InvalidReference.
        """
        from ketch.image.reference import parse
        target = parse(new_name)
        if target.digest:
            raise InvalidReference(f'invalid reference format: "{new_name}": a tag cannot contain a digest')
        with self._locked() as db:
            mdigest = self._find(db, src_ref)
            name = str(target)
            self._take_name(db, name, mdigest)
            rec = db["images"][mdigest]
            if name not in rec["names"]:
                rec["names"] = sorted(rec["names"] + [name])
                rec["added"] = _now()
            return self._image(mdigest, rec, db["layers"])

    def untag(self, name: str) -> Image:
        """Remove the name ``name`` (not an ID); the image stays, perhaps dangling.

        Returns the image as it is afterwards.  ImageNotFound if no image has it.
        """
        from ketch.image.reference import parse
        canon = str(parse(name))
        with self._locked() as db:
            for d, rec in db["images"].items():
                if canon in rec["names"]:
                    rec["names"].remove(canon)
                    return self._image(d, rec, db["layers"])
        raise ImageNotFound(f"No such image: {parse(name).familiar}")

    def containers_using(self, image_id: str) -> list[str]:
        """IDs of containers whose record (the engine's database, :mod:`ketch.db`) uses ``image_id``."""
        from ketch import db
        conn = db.connect(self.paths.root, create=False)
        if conn is None:
            return []
        try:
            return [r[0] for r in conn.execute("SELECT id FROM containers WHERE image=? ORDER BY id", (image_id,))]
        finally:
            conn.close()

    def remove(self, ref: str, force: bool = False) -> list[tuple[str, str]]:
        """Docker's ``rmi`` of one image; returns ``[("Untagged", "alpine:3.20.3"), ("Deleted", "sha256:…")]``.

        * ``ref`` a name: the name is removed; if it was the image's last name
          the image is deleted too.  Refused (:class:`ImageError`
          ``conflict: unable to remove repository reference …``) if it is the
          last name and a container uses the image, unless ``force``.
        * ``ref`` an ID (prefix) or ``name@digest``: all names of the image
          (of that repository, for ``name@digest``) are removed and the image
          deleted.  Refused without ``force`` if it has names in several
          repositories or a container uses it.
        * With ``force``, an image a container still uses is untagged but kept
          (dangling), so the container's layers survive — Docker would delete
          the image record and keep the layers; ketch keeps both.

        Deleting an image removes blobs no other image references (and stray
        blobs older than an hour), forgets their layer records, and asks the
        snapshotter to drop snapshots whose chain IDs no remaining image
        needs.
        """
        from ketch.image.reference import parse
        events: list[tuple[str, str]] = []
        deleted: list[str] = []
        with self._locked() as db:
            mdigest = self._find(db, ref)
            rec = db["images"][mdigest]
            image_id = rec["id"]
            same_id = [d for d, r in db["images"].items() if r["id"] == image_id]
            users = self.containers_using(image_id)
            by_name = None
            with contextlib.suppress(InvalidReference):
                r = parse(ref)
                if not r.digest and str(r) in rec["names"]:
                    by_name = str(r)
            if by_name is not None:
                last = len([n for d in same_id for n in db["images"][d]["names"]]) == 1
                if last and users and not force:
                    raise ImageError(f'conflict: unable to remove repository reference "{ref}" (must force) - '
                                     f"container {users[0][:12]} is using its referenced image {image_id[7:19]}")
                rec["names"].remove(by_name)
                events.append(("Untagged", parse(by_name).familiar))
                if not last:
                    if not rec["names"] and self._id_named_elsewhere(db, image_id, mdigest):
                        self._drop(db, [mdigest])
                    return events
            else:
                digest_repo = None
                with contextlib.suppress(InvalidReference):
                    r = parse(ref)
                    if r.digest:
                        digest_repo = r.name
                names = [(d, n) for d in same_id for n in db["images"][d]["names"]
                         if digest_repo is None or _repo_of(n) == digest_repo]
                repos = {_repo_of(n) for _, n in names}
                short = image_id[7:19]
                if not force:
                    if len(repos) > 1:
                        raise ImageError(f"conflict: unable to delete {short} (must be forced) - "
                                         "image is referenced in multiple repositories")
                    if users:
                        raise ImageError(f"conflict: unable to delete {short} (must be forced) - "
                                         f"image is being used by stopped container {users[0][:12]}")
                for d, n in names:
                    db["images"][d]["names"].remove(n)
                    events.append(("Untagged", parse(n).familiar))
                remaining = [n for d in same_id for n in db["images"][d]["names"]]
                if remaining:
                    return events
            if users:  # forced: keep the content for the containers
                return events
            deleted = same_id
            events.append(("Deleted", image_id))
            self._drop(db, deleted)
        return events

    def _drop(self, db: dict, mdigests: list[str]) -> None:
        """Forget ``mdigests`` and delete blobs/snapshots nothing else needs (lock held)."""
        candidates: set[str] = set()
        for d in mdigests:
            rec = db["images"].pop(d, None)
            if rec is None:
                continue
            candidates.add(d)
            with contextlib.suppress(ImageError):
                m = Manifest.from_json(self.content.read_json(d))
                candidates.add(m.config.digest)
                candidates.update(x.digest for x in m.layers)
        keep_blobs: set[str] = set()
        keep_chains: set[str] = set()
        for d, rec in db["images"].items():
            keep_blobs.add(d)
            with contextlib.suppress(ImageError):
                m = Manifest.from_json(self.content.read_json(d))
                keep_blobs.add(m.config.digest)
                keep_blobs.update(x.digest for x in m.layers)
                cfg = ImageConfig.from_json(self.content.read_json(m.config.digest))
                keep_chains.update(chain_ids(cfg.diff_ids))
        cutoff = time.time() - STRAY_GRACE_SECONDS
        for digest in self.content.digests():
            if digest in keep_blobs or digest in candidates:
                continue
            with contextlib.suppress(OSError):
                if self.content.blob_path(digest).stat().st_mtime < cutoff:
                    candidates.add(digest)
        for digest in candidates - keep_blobs:
            self.content.delete(digest)
            db["layers"].pop(digest, None)
        self.content.remove_stale_temps()
        self._remove_unused_snapshots(keep_chains)

    def _remove_unused_snapshots(self, keep: set[str]) -> None:
        """Unpacked layers of deleted images go too (every chain prefix of a kept image is kept)."""
        from ketch.snapshot.overlay import Snapshotter
        Snapshotter(self.paths.snapshots).remove_unused(keep)

    def layer_info(self, layer_digest: str) -> dict | None:
        """Remembered ``{"diffID", "unpackedSize"}`` of a layer blob, or None."""
        return self._load()["layers"].get(layer_digest)


def _repo_of(name: str) -> str:
    """Repository part of a canonical ``name:tag``."""
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def created_time(created: str | None) -> float | None:
    """Seconds since the epoch of an RFC 3339 ``created`` (nanoseconds tolerated), or None."""
    if not created:
        return None
    import datetime as _dt
    s = re.sub(r"(\.\d{6})\d+", r"\1", created.strip()).replace("Z", "+00:00")
    try:
        t = _dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


__all__ = ["BlobInfo", "ContentStore", "Image", "ImageStore", "atomic_write", "created_time"]
