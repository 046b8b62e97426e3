"""Pushing images to OCI Distribution v2 registries (``docker push``).

Protocol (distribution-spec spec.md "Push"):

* For each blob of the image (every layer, then the config):
  ``HEAD /v2/<name>/blobs/<digest>`` — 200 means the repository has it
  (``Layer already exists``);
  otherwise, for each other repository of the same registry the image is
  named in (``127.0.0.1:5000/alpine`` when pushing ``127.0.0.1:5000/mine``),
  a cross-repository mount ``POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>``:
  201 means mounted (``Mounted from alpine``), 202 means the registry would
  not and opened an upload session instead (abandoned with ``DELETE`` when
  another repository is left to try);
  otherwise ``POST /v2/<name>/blobs/uploads/`` then a monolithic
  ``PUT <location>&digest=<digest>`` streaming the stored blob
  (``Content-Length``, ``application/octet-stream``): ``Pushed``.
  Up to three blobs go at once.
* Then ``PUT /v2/<name>/manifests/<tag>`` with the stored manifest bytes
  unchanged (so its digest is the one ``ketch images --digests`` shows) and
  its media type as ``Content-Type``; the ``Docker-Content-Digest`` answered
  must be that digest.
* Auth is the pull's (:class:`~ketch.image.registry.RegistryClient`): Basic,
  or a Bearer token for ``repository:<name>:pull,push`` (plus
  ``repository:<from>:pull`` for each repository a blob may be mounted
  from).  Transient failures (connection reset, 429, 5xx) are retried with
  the same backoff; an upload cut short starts over with a new session.
* Non-distributable (foreign) layers are not pushed, as Docker's default.

Every failure is an :class:`~ketch.errors.ImageError` with one line naming the
registry and repository (``unauthorized: …``, ``registry … unreachable``, …);
the manifest is only sent once every blob is in the repository, so a failed
push leaves no tag pointing at missing content.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import urlencode, urljoin

from ketch.errors import DigestMismatch, ImageError, ImageNotFound, InvalidReference
from ketch.image.reference import Reference, parse as parse_reference
from ketch.image.registry import (CONCURRENCY, CHUNK, Progress, ProgressFn, RegistryClient, _error_text,
                                  _SwitchToHTTP, _Transient)
from ketch.oci import image as oci

_NONDISTRIBUTABLE = ("foreign", "nondistributable")


@dataclass
class PushResult:
    """A finished push: the ``ref`` pushed to, the manifest ``digest`` and its ``size``,
    and per-blob ``layers`` as ``(digest, "Pushed" | "Layer already exists" | "Mounted from X")``."""

    ref: Reference
    digest: str
    size: int
    layers: list[tuple[str, str]]


def target_of(store, image_ref: str, dest: str | None):
    """``(image, destination reference)`` for ``ketch push IMAGE [DEST]``.

    Without ``DEST`` the image must be stored under the name ``IMAGE``
    (default tag ``latest``), as ``docker push`` wants; ``DEST`` may be
    written ``docker://NAME[:TAG]``.  A destination with a digest is refused.
    """
    if dest is None:
        ref = parse_reference(image_ref.removeprefix("docker://"))
        if ref.digest:
            raise InvalidReference(f'invalid reference format: "{image_ref}": push a tag, not a digest')
        try:
            img = store.resolve(str(ref))
        except ImageNotFound:
            img = None
        if img is None or str(ref) not in img.names:
            raise ImageNotFound(f"An image does not exist locally with the tag: {ref.familiar}")
        return img, ref
    ref = parse_reference(dest.removeprefix("docker://"))
    if ref.digest:
        raise InvalidReference(f'invalid reference format: "{dest}": push to a tag, not a digest')
    return store.resolve(image_ref), ref


def mount_sources(image, ref: Reference) -> list[str]:
    """Other repositories on ``ref``'s registry the image is named in: where a blob may be mounted from."""
    out: list[str] = []
    for n in image.names:
        r = parse_reference(n)
        if r.domain == ref.domain and r.path != ref.path and r.path not in out:
            out.append(r.path)
    return out


def push(store, image_ref: str, dest: str | None = None, *, tls_verify: bool = True,
         progress: ProgressFn | None = None, concurrency: int = CONCURRENCY,
         client: RegistryClient | None = None) -> PushResult:
    """``docker push``: send the stored image ``image_ref`` to ``dest`` (default: its own name).

    ``progress`` receives :class:`~ketch.image.registry.Progress` events for
    each layer (``Preparing``, ``Pushing`` with bytes, ``Pushed``,
    ``Layer already exists``, ``Mounted from REPO``, ``Retrying``) from
    several threads.  Returns a :class:`PushResult`.
    """
    image, ref = target_of(store, image_ref, dest)
    emit = progress or (lambda p: None)
    mdigest = image.manifest_digest
    mbytes = store.content.read_bytes(mdigest)
    media_type = image.manifest.mediaType or oci.OCI_MANIFEST
    sources = mount_sources(image, ref)
    scope = " ".join([f"repository:{ref.path}:pull,push"] + [f"repository:{s}:pull" for s in sources])
    own = client is None
    client = client or RegistryClient(ref.domain, tls_verify=tls_verify, concurrency=concurrency)
    try:
        # One authorized request before the blobs go out in parallel: the
        # token (or the refusal) is had once, and an unreachable registry
        # fails before any progress line.
        r = client.request("GET", "/v2/", scope=scope)
        if r.status in (401, 403):
            raise _denied(r, f"{client.domain}")
        todo: list[tuple[oci.Descriptor, bool]] = []
        seen: set[str] = set()
        for layer in image.manifest.layers:
            if layer.digest in seen:
                continue
            seen.add(layer.digest)
            if any(w in (layer.mediaType or "") for w in _NONDISTRIBUTABLE) and \
                    not store.content.has(layer.digest, layer.size):
                emit(Progress(layer.digest[7:19], "Skipped foreign layer"))
                continue
            todo.append((layer, True))
            emit(Progress(layer.digest[7:19], "Preparing", 0, layer.size))
        if image.manifest.config.digest not in seen:
            todo.append((image.manifest.config, False))
        for desc, _ in todo:
            if not store.content.has(desc.digest, desc.size):
                raise ImageError(f"image {image.id[7:19]} is incomplete: blob {desc.digest} missing from the store")
        results: dict[str, str] = {}
        if todo:
            from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
            pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ketch-push")
            try:
                futures = {pool.submit(_push_blob, client, ref, desc, store.content, sources, scope,
                                       emit if is_layer else None): desc for desc, is_layer in todo}
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for fut in futures:
                    if fut in done and fut.exception() is not None:
                        raise fut.exception()  # type: ignore[misc]
                for fut, desc in futures.items():
                    results[desc.digest] = fut.result()
            finally:
                client.cancelled.set()
                pool.shutdown(wait=True, cancel_futures=True)
                client.cancelled.clear()
        digest = _put_manifest(client, ref, mbytes, media_type, scope)
        if digest != mdigest:
            raise DigestMismatch(f"{ref.familiar}: the registry stored the manifest as {digest}, not {mdigest}")
        layers = [(d.digest, results[d.digest]) for d, is_layer in todo if is_layer]
        return PushResult(ref, mdigest, len(mbytes), layers)
    finally:
        if own:
            client.close()


class _CountingReader:
    """A file whose reads report ``Pushing`` progress (at most every 0.1 s)."""

    def __init__(self, f, emit: ProgressFn | None, short: str, total: int, cancelled):
        self.f, self.emit, self.short, self.total, self.cancelled = f, emit, short, total, cancelled
        self.done = 0
        self._last = 0.0

    def read(self, n: int = -1) -> bytes:
        if self.cancelled.is_set():
            raise ImageError("push cancelled")
        b = self.f.read(CHUNK if n is None or n < 0 else n)
        self.done += len(b)
        if self.emit is not None:
            now = time.monotonic()
            if now - self._last > 0.1 or self.done == self.total:
                self._last = now
                self.emit(Progress(self.short, "Pushing", self.done, self.total))
        return b

    def close(self) -> None:
        self.f.close()


def _push_blob(client: RegistryClient, ref: Reference, desc: oci.Descriptor, content, sources: list[str],
               scope: str, emit: ProgressFn | None) -> str:
    """Make blob ``desc`` present in ``ref``'s repository; returns the status word."""
    short = desc.digest[7:19]
    failures = 0
    while True:
        try:
            status = _push_blob_once(client, ref, desc, content, sources, scope, emit, short)
            if emit is not None:
                emit(Progress(short, status, desc.size, desc.size))
            return status
        except (_Transient, _SwitchToHTTP, client._urllib3.exceptions.HTTPError) as e:
            if isinstance(e, _SwitchToHTTP):
                client.scheme = "http"
            failures += 1
            why = e.args[0] if isinstance(e, _Transient) else str(e) or type(e).__name__
            if failures > client.retries or client.cancelled.is_set():
                raise ImageError(f"blob {desc.digest} to {client.domain}/{ref.path}: {why} "
                                 f"(gave up after {failures} attempts)") from None
            if emit is not None:
                emit(Progress(short, "Retrying", 0, desc.size))
            time.sleep(client.delay(failures))


def _denied(r, what: str) -> ImageError:
    return ImageError(f"unauthorized: {what}: {_error_text(r.data) or 'authentication required'}")


def _push_blob_once(client: RegistryClient, ref: Reference, desc: oci.Descriptor, content, sources: list[str],
                    scope: str, emit: ProgressFn | None, short: str) -> str:
    repo = ref.path
    where = f"{client.domain}/{repo}"

    def retrying(why: str, delay: float) -> None:
        if emit is not None:
            emit(Progress(short, "Retrying", 0, desc.size))

    r = client.request("HEAD", f"/v2/{repo}/blobs/{desc.digest}", scope=scope, on_retry=retrying)
    if r.status == 200:
        return "Layer already exists"
    if r.status in (401, 403):
        raise _denied(r, f"{where}")
    location = None
    for i, src in enumerate(sources):
        q = urlencode({"mount": desc.digest, "from": src})
        r = client.request("POST", f"/v2/{repo}/blobs/uploads/?{q}", scope=scope, headers={"Content-Length": "0"},
                           on_retry=retrying)
        if r.status == 201:
            return f"Mounted from {src}"
        if r.status == 202 and r.headers.get("Location"):
            location = urljoin(client.base + "/", r.headers["Location"])
            if i + 1 < len(sources):  # abandon this session; try the next repository
                client.request("DELETE", location, scope=scope)
                location = None
            continue
        if r.status in (401, 403):
            raise _denied(r, f"{where}")
        # a registry that refuses mounts outright: upload normally
    if location is None:
        r = client.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, headers={"Content-Length": "0"},
                           on_retry=retrying)
        if r.status in (401, 403):
            raise _denied(r, f"{where}")
        if r.status != 202 or not r.headers.get("Location"):
            raise ImageError(f"{where}: starting the upload of blob {desc.digest}: registry answered "
                             f"{r.status}: {_error_text(r.data)}")
        location = urljoin(client.base + "/", r.headers["Location"])
    url = location + ("&" if "?" in location else "?") + urlencode({"digest": desc.digest})
    path = content.path(desc.digest)

    opened: list[_CountingReader] = []

    def body():
        opened.append(_CountingReader(open(path, "rb"), emit, short, desc.size, client.cancelled))
        return opened[-1]

    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(desc.size)}
    try:
        r = client._request_once("PUT", url, scope, headers, False, body)
    finally:
        for f in opened:
            f.close()
    if r.status in (401, 403):
        raise _denied(r, f"{where}")
    if r.status == 404:  # the upload session is gone (registry restarted, expired): start over
        raise _Transient(f"{where}: upload session for blob {desc.digest} lost ({_error_text(r.data)})")
    if r.status not in (201, 204):
        raise ImageError(f"{where}: upload of blob {desc.digest} failed: registry answered {r.status}: "
                         f"{_error_text(r.data)}")
    got = r.headers.get("Docker-Content-Digest")
    if got and got != desc.digest:
        raise DigestMismatch(f"{where}: blob {desc.digest} was stored as {got}")
    return "Pushed"


def _put_manifest(client: RegistryClient, ref: Reference, mbytes: bytes, media_type: str, scope: str) -> str:
    where = f"{client.domain}/{ref.path}"
    r = client.request("PUT", f"/v2/{ref.path}/manifests/{ref.tag or 'latest'}", scope=scope, body=mbytes,
                       headers={"Content-Type": media_type, "Content-Length": str(len(mbytes))})
    if r.status in (401, 403):
        raise _denied(r, where)
    if r.status not in (200, 201, 202):
        raise ImageError(f"{where}: manifest {ref.tag} refused: registry answered {r.status}: {_error_text(r.data)}")
    return r.headers.get("Docker-Content-Digest") or oci.sha256_digest(mbytes)


__all__ = ["PushResult", "mount_sources", "push", "target_of"]
