"""Pulling images from OCI Distribution v2 registries (``docker pull``).

Protocol (distribution-spec spec.md, Docker's registry token spec):

* The registry of a reference is its domain; ``docker.io`` is served by
  ``registry-1.docker.io`` (as Docker's ``IndexServer`` mapping).  HTTPS,
  except for loopback registries (``localhost``, ``127.0.0.0/8``, ``::1``),
  which are spoken to over plain HTTP, as Docker treats them as insecure
  registries; with ``tls_verify=False`` certificates are not checked and
  plain HTTP is used when the registry does not speak TLS.
* ``GET /v2/<name>/manifests/<tag|digest>`` with ``Accept`` listing the OCI
  index/manifest and Docker list/schema-2 types (and schema 1 only to refuse
  it clearly).  An index is resolved to one manifest by platform
  (os/architecture/variant; the host's unless ``--platform``).  Every
  manifest's sha256 is checked against the digest asked for, or against
  ``Docker-Content-Digest`` when pulled by tag.
* ``GET /v2/<name>/blobs/<digest>`` for the config and each layer not
  already stored, streamed to ``blobs/sha256/.ingest-partial-<hex>`` while
  hashed, then checked (size and sha256) and renamed into place by
  :meth:`ContentStore.commit_partial`.  Up to three layers download at once.
  A download cut short resumes with ``Range: bytes=N-`` (a registry that
  answers 200 instead of 206 is read from the start again); the partial file
  is kept if the pull fails, so the next pull resumes too.
* Transient failures — connection reset or cut, timeouts, 429 and 5xx — are
  retried with exponential backoff (``Retry-After`` honoured, capped);
  connection refused, name resolution and TLS failures are not.
* Auth: the first request goes out anonymously (or with a cached token); a
  ``401`` with ``WWW-Authenticate: Bearer realm=…,service=…,scope=…`` makes
  the client fetch a token from the realm (with Basic credentials when it
  has some) for ``repository:<name>:pull`` and retry; ``Basic realm=…``
  makes it send the stored credentials.  Credentials come from
  :mod:`ketch.image.auth`.  Redirects (blob storage on another host) are
  followed without the ``Authorization`` header.

Every failure is an :class:`~ketch.errors.ImageError` with a one-line
message naming the registry, repository, tag or blob at fault; the image
gets its name only after every blob is stored and every layer's diff ID
verified (:func:`ketch.image.transports._verify_layers`), so a failed pull
leaves no name pointing at a partial image.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode, urljoin, urlsplit

from ketch.errors import DigestMismatch, ImageError, ImageNotFound
from ketch.image.auth import Credentials, load_credentials
from ketch.image.reference import Reference, parse as parse_reference
from ketch.oci import image as oci

DOCKER_HUB_HOST = "registry-1.docker.io"
SCHEMA1_TYPES = frozenset({"application/vnd.docker.distribution.manifest.v1+json",
                           "application/vnd.docker.distribution.manifest.v1+prettyjws"})
MANIFEST_ACCEPT = ", ".join([oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_MANIFEST_LIST, oci.DOCKER_MANIFEST,
                             *sorted(SCHEMA1_TYPES)])
MAX_MANIFEST = 4 << 20
CHUNK = 1 << 20
CONCURRENCY = 3
RETRIES = 4            # so 5 attempts in all, Docker's max-download-attempts
BACKOFF = 0.2          # seconds before the first retry; doubles each time
MAX_BACKOFF = 5.0
USER_AGENT = "ketch/0.1"
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Progress:
    """One progress event of a pull: ``id`` (12 hex digits of the blob),
    ``status`` (Docker's words: ``Pulling fs layer``, ``Downloading``,
    ``Download complete``, ``Already exists``, ``Pull complete``,
    ``Retrying``), ``current``/``total`` bytes."""

    id: str
    status: str
    current: int = 0
    total: int = 0


ProgressFn = Callable[[Progress], None]


def registry_host(domain: str) -> str:
    """The host[:port] serving ``domain``: ``docker.io`` → ``registry-1.docker.io``."""
    return DOCKER_HUB_HOST if domain in ("docker.io", "index.docker.io") else domain


def _hostname(host: str) -> str:
    """``host:port`` / ``[::1]:5000`` → the host name or address alone."""
    if host.startswith("["):
        return host[1:host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (with or without a port)."""
    name = _hostname(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_platform(text: str) -> oci.Platform:
    """``os[/arch[/variant]]`` as ``--platform`` takes it (``linux/arm64/v8``, ``linux/amd64``).

    Architecture aliases are normalized as containerd's ``platforms.Normalize``
    (``x86_64`` → ``amd64``, ``aarch64`` → ``arm64``, ``armhf`` → ``arm/v7``).
    """
    from ketch.errors import UsageError
    parts = text.strip().lower().split("/")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts):
        raise UsageError(f'invalid platform "{text}": want os[/arch[/variant]]')
    os_ = parts[0]
    if len(parts) == 1:
        from ketch.image.transports import host_platform
        h = host_platform()
        return oci.Platform(h.architecture, os_, h.variant)
    arch, variant = parts[1], (parts[2] if len(parts) == 3 else None)
    arch, variant = _normalize_arch(arch, variant)
    return oci.Platform(arch, os_, variant)


def _normalize_arch(arch: str, variant: str | None) -> tuple[str, str | None]:
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", (None if variant in (None, "v1") else variant)
    if arch in ("aarch64", "arm64"):
        return "arm64", (None if variant in (None, "8", "v8") else variant)
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        return "arm", {None: "v7", "5": "v5", "6": "v6", "7": "v7", "8": "v8"}.get(variant, variant)
    if arch in ("i386", "i686"):
        return "386", variant
    return arch, variant


def platform_str(p: oci.Platform) -> str:
    """``linux/arm64/v8`` style."""
    return "/".join(x for x in (p.os, p.architecture, p.variant) if x)


def select_platform(entries: list[oci.Descriptor], want: oci.Platform, what: str) -> oci.Descriptor:
    """The index entry for ``want`` (exact variant first, then one without a variant).

    Raises :class:`ImageError` ``no matching manifest for linux/arm64 in the
    manifest list entries of …`` naming what the index does hold.
    """
    want_arch, want_var = _normalize_arch(want.architecture, want.variant)
    exact, loose = [], []
    for e in entries:
        p = e.platform
        if p is None or p.os != want.os:
            continue
        arch, var = _normalize_arch(p.architecture, p.variant)
        if arch != want_arch:
            continue
        if var == want_var:
            exact.append(e)
        elif var is None or want_var is None:
            loose.append(e)
    if exact or loose:
        return (exact or loose)[0]
    have = ", ".join(sorted({platform_str(e.platform) for e in entries if e.platform})) or "none"
    raise ImageError(f"no matching manifest for {platform_str(want)} in the manifest list entries of {what} "
                     f"(has: {have})")


# --------------------------------------------------------------------------
# HTTP


def _parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ``("bearer", {...})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)\s*=\s*"([^"]*)"', rest)}
    for k, v in re.findall(r'([A-Za-z_]+)\s*=\s*([^",\s]+)', rest):
        params.setdefault(k.lower(), v)
    return scheme.lower(), params


def _error_text(body: bytes) -> str:
    """The registry's error body (``{"errors": [{"code", "message"}]}``) as one short line."""
    try:
        doc = json.loads(body)
        errs = doc.get("errors") or []
        out = []
        for e in errs:
            code = str(e.get("code", "")).lower().replace("_", " ")
            msg = str(e.get("message", "")).strip()
            out.append(code if not msg or msg == code else (f"{code}: {msg}" if code else msg))
        if out:
            return "; ".join(out)
    except (ValueError, AttributeError, TypeError):
        pass
    text = body.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:200]


class _Transient(Exception):
    """A failure worth retrying (message says what)."""


class RegistryClient:
    """One registry, spoken to over a pooled, thread-safe urllib3 connection pool.

    ``domain`` as in a reference (``docker.io``, ``127.0.0.1:5000``);
    ``credentials`` default to those stored for it (:func:`load_credentials`).
    """

    def __init__(self, domain: str, *, tls_verify: bool = True, credentials: Credentials | None | bool = True,
                 concurrency: int = CONCURRENCY, retries: int = RETRIES, backoff: float = BACKOFF):
        import urllib3
        self.domain = domain
        self.host = registry_host(domain)
        self.tls_verify = tls_verify
        self.scheme = "http" if is_loopback(self.host) else "https"
        self.creds = load_credentials(domain) if credentials is True else (credentials or None)
        self.retries = retries
        self.backoff = backoff
        self._urllib3 = urllib3
        self._http = urllib3.PoolManager(
            num_pools=4, maxsize=max(2, concurrency + 1), block=False, retries=False,
            timeout=urllib3.Timeout(connect=15.0, read=60.0),
            cert_reqs="CERT_REQUIRED" if tls_verify else "CERT_NONE")
        if not tls_verify:
            with contextlib.suppress(Exception):
                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        self._auth: dict[str, str] = {}        # scope -> Authorization header value
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._lock = threading.Lock()
        self.cancelled = threading.Event()

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    def close(self) -> None:
        self._http.clear()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- auth ---------------------------------------------------------------
    def _basic(self) -> str | None:
        if self.creds is None:
            return None
        raw = f"{self.creds.username}:{self.creds.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _authorize(self, scope: str, header: str | None) -> str | None:
        """Answer a 401 challenge ``header`` for ``scope``; returns the Authorization value to use."""
        with self._lock:
            if header:
                self._challenge = _parse_challenge(header)
            if self._challenge is None:
                return None
            scheme, params = self._challenge
            if scheme == "basic":
                value = self._basic()
                if value is None:
                    raise ImageError(f"unauthorized: {self.domain} requires a login (ketch login {self.domain})")
            elif scheme == "bearer":
                value = "Bearer " + self._token(params, scope)
            else:
                raise ImageError(f"{self.domain}: unsupported authentication scheme {scheme!r}")
            self._auth[scope] = value
            return value

    def _token(self, params: dict[str, str], scope: str) -> str:
        realm = params.get("realm")
        if not realm:
            raise ImageError(f"{self.domain}: Bearer challenge without a realm")
        # ``scope`` may hold several space-separated scopes (a push that mounts a blob
        # from another repository needs ``repository:a:pull,push repository:b:pull``);
        # each is sent as its own ``scope=`` parameter, as Docker does.
        query = [("service", params["service"])] if params.get("service") else []
        query += [("scope", s) for s in scope.split() if s]
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        headers = {"User-Agent": USER_AGENT}
        basic = self._basic()
        if basic:
            headers["Authorization"] = basic
        r = self._raw("GET", url, headers, stream=False)
        if r.status == 401:
            who = "incorrect username or password" if basic else "authentication required"
            raise ImageError(f"unauthorized: {self.domain}: {who} (token service {urlsplit(realm).netloc})")
        if r.status != 200:
            raise ImageError(f"{self.domain}: token service {realm} answered {r.status}: {_error_text(r.data)}")
        try:
            doc = json.loads(r.data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise ImageError(f"{self.domain}: token service {realm} gave no token")
        return str(token)

    # -- requests -----------------------------------------------------------
    def _raw(self, method: str, url: str, headers: dict[str, str], stream: bool, body: Any = None):
        """One request, with TLS/connection errors turned into ImageError or _Transient.

        ``body`` is None, bytes, or a callable returning bytes or a fresh
        readable file (called once per send, so a retried upload starts over).
        """
        exc = self._urllib3.exceptions
        data = body() if callable(body) else body
        try:
            return self._http.request(method, url, headers=headers, body=data, preload_content=not stream,
                                      decode_content=False, redirect=False, retries=False)
        except exc.SSLError as e:
            if not self.tls_verify and url.startswith("https://") and self.scheme == "https":
                raise _SwitchToHTTP() from None
            raise ImageError(f"TLS failure talking to {urlsplit(url).netloc}: {_reason(e)} "
                             "(use --tls-verify=false for a registry without a valid certificate)") from None
        except exc.NewConnectionError as e:
            raise ImageError(f"registry {urlsplit(url).netloc} unreachable: {_reason(e)}") from None
        except exc.NameResolutionError as e:  # pragma: no cover - subclass of NewConnectionError in urllib3 2
            raise ImageError(f"registry {urlsplit(url).netloc} unreachable: {_reason(e)}") from None
        except (exc.ProtocolError, exc.TimeoutError, exc.ConnectTimeoutError, exc.ReadTimeoutError,
                ConnectionError) as e:
            raise _Transient(f"{urlsplit(url).netloc}: {_reason(e)}") from None

    def request(self, method: str, path: str, *, scope: str, headers: dict[str, str] | None = None,
                stream: bool = False, on_retry: Callable[[str, float], None] | None = None, body: Any = None):
        """Send ``method path`` (``/v2/…`` or an absolute URL) with auth, redirects and retries.

        Returns the urllib3 response (unread when ``stream``); the caller
        checks the status (401 only comes back if authorization failed).
        Transient failures are retried ``self.retries`` times.
        """
        attempt = 0
        while True:
            try:
                return self._request_once(method, path, scope, headers or {}, stream, body)
            except _Transient as e:
                attempt += 1
                if attempt > self.retries or self.cancelled.is_set():
                    raise ImageError(f"{e.args[0]} (gave up after {attempt} attempts)") from None
                delay = self.delay(attempt, getattr(e, "retry_after", None))
                if on_retry:
                    on_retry(str(e), delay)
                time.sleep(delay)
            except _SwitchToHTTP:
                self.scheme = "http"

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        d = min(MAX_BACKOFF, self.backoff * (2 ** (attempt - 1)))
        if retry_after is not None:
            d = max(d, min(retry_after, 2 * MAX_BACKOFF))
        return d

    def _request_once(self, method: str, path: str, scope: str, headers: dict[str, str], stream: bool,
                      body: Any = None):
        url = path if "://" in path else self.base + path
        origin = urlsplit(url).netloc
        authed_retry = False
        for _ in range(8):  # redirects and one re-authorization
            h = {"User-Agent": USER_AGENT, **headers}
            same_host = urlsplit(url).netloc == origin
            if same_host:
                value = self._auth.get(scope)
                if value is None and self._challenge is not None:
                    value = self._authorize(scope, None)
                if value:
                    h["Authorization"] = value
            r = self._raw(method, url, h, stream, body)
            if r.status in (301, 302, 303, 307, 308) and r.headers.get("Location"):
                r.drain_conn()
                r.release_conn()
                url = urljoin(url, r.headers["Location"])
                if r.status == 303:
                    method, body = "GET", None
                continue
            if r.status == 401 and same_host and not authed_retry:
                challenge = r.headers.get("WWW-Authenticate")
                r.drain_conn()
                r.release_conn()
                if not challenge:
                    raise ImageError(f"unauthorized: {self.domain} refused the request without a challenge")
                authed_retry = True
                if self._authorize(scope, challenge) is None:
                    raise ImageError(f"unauthorized: {self.domain}")
                continue
            if r.status in _TRANSIENT_STATUS:
                body = r.data if not stream else r.read(4096)
                r.release_conn()
                t = _Transient(f"{self.domain}: {method} {urlsplit(url).path} answered {r.status}"
                               + (f" ({_error_text(body)})" if body else ""))
                ra = r.headers.get("Retry-After")
                if ra and ra.strip().isdigit():
                    t.retry_after = float(ra)  # type: ignore[attr-defined]
                raise t
            return r
        raise ImageError(f"{self.domain}: too many redirects or authorization rounds for {path}")

    # -- distribution API ---------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/`` with credentials: raises ImageError ``unauthorized: …`` when they are refused."""
        r = self.request("GET", "/v2/", scope="")
        if r.status == 401:
            raise ImageError(f"unauthorized: {self.domain}: incorrect username or password")
        if r.status not in (200, 404):
            raise ImageError(f"{self.domain}: GET /v2/ answered {r.status}: {_error_text(r.data)}")

    def get_manifest(self, repo: str, ref: str, display: str) -> tuple[str, bytes, str]:
        """``(media type, bytes, digest)`` of manifest ``ref`` (tag or digest) of ``repo``, verified."""
        scope = f"repository:{repo}:pull"
        r = self.request("GET", f"/v2/{repo}/manifests/{ref}", scope=scope, headers={"Accept": MANIFEST_ACCEPT})
        body = r.data
        if r.status == 404:
            why = _error_text(body) or "manifest unknown"
            if "name unknown" in why:
                raise ImageNotFound(f"repository {display} not found: {why}")
            raise ImageNotFound(f"manifest for {display} not found: {why}")
        if r.status == 401 or r.status == 403:
            raise ImageError(f"pull access denied for {display}: unauthorized: {_error_text(body)}")
        if r.status != 200:
            raise ImageError(f"manifest for {display}: registry answered {r.status}: {_error_text(body)}")
        if len(body) > MAX_MANIFEST:
            raise ImageError(f"manifest for {display}: {len(body)} bytes is too large")
        digest = oci.sha256_digest(body)
        want = ref if ref.startswith("sha256:") else r.headers.get("Docker-Content-Digest")
        if want and want.startswith("sha256:") and want != digest:
            raise DigestMismatch(f"manifest for {display}: digest mismatch: got {digest}, want {want}")
        mt = (r.headers.get("Content-Type") or "").split(";")[0].strip()
        with contextlib.suppress(ValueError, AttributeError):
            doc = json.loads(body)
            mt = doc.get("mediaType") or mt
            if doc.get("schemaVersion") == 1:
                mt = next(iter(SCHEMA1_TYPES))
        return mt, body, digest

    def blob_url(self, repo: str, digest: str) -> str:
        return f"/v2/{repo}/blobs/{digest}"

    def fetch_blob(self, repo: str, desc: oci.Descriptor, content, progress: ProgressFn | None = None,
                   label: str = "", scan: bool = False):
        """Download blob ``desc`` of ``repo`` into the content store unless stored.

        Returns ``(fetched, info)``: ``fetched`` False when the blob was
        already stored; ``info`` with ``scan`` the layer's
        :class:`~ketch.image.layers.LayerInfo` (diff ID, unpacked size),
        computed on a second thread while the bytes arrive — or None when it
        could not be, and the caller scans the stored blob.  Resumes a
        partial download left by an earlier attempt (or pull); raises
        :class:`DigestMismatch` (partial file removed) when the bytes do not
        match, :class:`ImageError` when the registry lacks the blob or keeps
        cutting the transfer short.
        """
        if content.has(desc.digest, desc.size):
            return False, None
        short = desc.digest[7:19]
        emit = progress or (lambda p: None)
        partial = content.partial_path(desc.digest)
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "r+b", buffering=0) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # another ketch may be fetching the same blob
            if content.has(desc.digest, desc.size):
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                return False, None
            sink = _Sink(f, scan)
            try:
                while True:  # take in what an earlier attempt left
                    b = f.read(CHUNK)
                    if not b:
                        break
                    sink.write(b, to_file=False)
                if sink.have > desc.size:
                    sink.restart()
                self._download(repo, desc, sink, emit, short)
                info = sink.layer_info()
            except DigestMismatch:
                os.unlink(partial)  # corrupt bytes are not worth resuming
                raise
            except BaseException:
                if os.fstat(f.fileno()).st_size == 0:  # nothing to resume from
                    with contextlib.suppress(OSError):
                        os.unlink(partial)
                raise
            finally:
                sink.close()
        emit(Progress(short, "Verifying Checksum", desc.size, desc.size))
        content.commit_partial(partial, desc, sink.hash, source=f"{label or repo} from {self.domain}")
        emit(Progress(short, "Download complete", desc.size, desc.size))
        return True, info

    def _download(self, repo: str, desc: oci.Descriptor, sink: "_Sink", emit: ProgressFn, short: str) -> None:
        """Write the rest of blob ``desc`` (from byte ``sink.have``) into ``sink``."""
        scope = f"repository:{repo}:pull"
        urls = [self.blob_url(repo, desc.digest)]
        urls += [u for u in desc.urls if u.startswith(("https://", "http://"))]
        failures = 0
        u = 0

        def retry(why: str, delay: float) -> None:
            emit(Progress(short, "Retrying", sink.have, desc.size))

        while sink.have < desc.size:
            if self.cancelled.is_set():
                raise ImageError(f"blob {desc.digest}: download cancelled")
            headers = {"Range": f"bytes={sink.have}-"} if sink.have else {}
            progressed = False
            try:
                r = self.request("GET", urls[u], scope=scope, headers=headers, stream=True, on_retry=retry)
                try:
                    if r.status == 404 and u + 1 < len(urls):
                        u += 1
                        continue
                    if r.status == 206:
                        start = _range_start(r.headers.get("Content-Range"))
                        if start != sink.have:
                            raise _Transient(f"blob {desc.digest}: registry resumed at byte {start}, "
                                             f"not {sink.have}")
                    elif r.status == 200:
                        if sink.have:  # no Range support: start over
                            sink.restart()
                    elif r.status == 416 and sink.have:
                        raise ImageError(f"blob {desc.digest} of {self.domain}/{repo}: truncated: the registry "
                                         f"has no bytes after {sink.have}, the manifest says {desc.size}")
                    elif r.status == 404:
                        raise ImageError(f"blob {desc.digest} of {self.domain}/{repo} not found: "
                                         f"{_error_text(r.data)}")
                    elif r.status in (401, 403):
                        raise ImageError(f"pull access denied for blob {desc.digest} of {self.domain}/{repo}: "
                                         f"{_error_text(r.data)}")
                    else:
                        raise ImageError(f"blob {desc.digest} of {self.domain}/{repo}: registry answered "
                                         f"{r.status}: {_error_text(r.data)}")
                    emit(Progress(short, "Downloading", sink.have, desc.size))
                    last = 0.0
                    for chunk in r.stream(CHUNK // 4, decode_content=False):
                        if sink.have + len(chunk) > desc.size:
                            raise DigestMismatch(f"blob {desc.digest} of {self.domain}/{repo}: digest mismatch: "
                                                 f"got more than {desc.size} bytes")
                        sink.write(chunk)
                        progressed = True
                        now = time.monotonic()
                        if now - last > 0.1:
                            last = now
                            emit(Progress(short, "Downloading", sink.have, desc.size))
                        if self.cancelled.is_set():
                            raise ImageError(f"blob {desc.digest}: download cancelled")
                    if sink.have < desc.size:
                        raise _Transient(f"blob {desc.digest}: connection closed after {sink.have} of "
                                         f"{desc.size} bytes")
                finally:
                    r.release_conn()
            except (_Transient, self._urllib3.exceptions.HTTPError) as e:  # HTTPError: cut while streaming
                failures = 0 if progressed else failures + 1
                why = e.args[0] if isinstance(e, _Transient) else _reason(e)
                if failures > self.retries:
                    raise ImageError(f"blob {desc.digest} of {self.domain}/{repo}: truncated at {sink.have} of "
                                     f"{desc.size} bytes: {why} (gave up after {failures} attempts)") from None
                emit(Progress(short, "Retrying", sink.have, desc.size))
                time.sleep(self.delay(max(1, failures)))


class _Sink:
    """Where a blob's bytes go: the partial file, its sha256 and, for a layer, a
    :class:`~ketch.image.layers.StreamScanner` fed on a thread of its own (zlib and
    hashlib release the GIL, so decompressing overlaps the download)."""

    def __init__(self, f, scan: bool):
        self.f = f
        self.scan = scan
        self.have = 0
        self.hash = hashlib.sha256()
        self._scanner = _ScanThread() if scan else None

    def write(self, b: bytes, to_file: bool = True) -> None:
        if to_file:
            self.f.write(b)
        self.hash.update(b)
        self.have += len(b)
        if self._scanner is not None:
            self._scanner.feed(b)

    def restart(self) -> None:
        self.f.truncate(0)
        self.f.seek(0)
        self.hash = hashlib.sha256()
        self.have = 0
        if self._scanner is not None:
            self._scanner.close()
            self._scanner = _ScanThread()

    def layer_info(self):
        return self._scanner.result() if self._scanner is not None else None

    def close(self) -> None:
        if self._scanner is not None:
            self._scanner.close()


class _ScanThread:
    def __init__(self):
        import queue
        from ketch.image.layers import StreamScanner
        self.scanner = StreamScanner()
        self._q: Any = queue.Queue(maxsize=32)
        self._t = threading.Thread(target=self._run, name="ketch-scan", daemon=True)
        self._t.start()

    def _run(self) -> None:
        while True:
            b = self._q.get()
            if b is None:
                return
            self.scanner.feed(b)

    def feed(self, b: bytes) -> None:
        self._q.put(b)

    def close(self) -> None:
        if self._t.is_alive():
            self._q.put(None)
            self._t.join()

    def result(self):
        self.close()
        return self.scanner.result()


class _SwitchToHTTP(Exception):
    """The registry does not speak TLS and verification is off: retry over HTTP."""


def _range_start(value: str | None) -> int | None:
    m = re.match(r"^\s*bytes\s+(\d+)-", value or "")
    return int(m.group(1)) if m else None


def _reason(e: BaseException) -> str:
    """The innermost useful text of a urllib3/socket error."""
    import socket
    seen = e
    for _ in range(6):
        inner = getattr(seen, "reason", None) or seen.__context__ or seen.__cause__
        if inner is None or inner is seen:
            break
        seen = inner
    if isinstance(seen, ConnectionRefusedError):
        return "connection refused"
    if isinstance(seen, socket.gaierror):
        return f"no such host ({seen.strerror or seen})"
    if isinstance(seen, OSError) and seen.strerror:
        return seen.strerror.lower() if isinstance(seen, ConnectionError) else seen.strerror
    text = str(seen) or type(seen).__name__
    text = re.sub(r"^<[^>]*>:\s*", "", text)
    return text.splitlines()[0] if text else type(seen).__name__


# --------------------------------------------------------------------------
# Pull


def display_name(ref: Reference) -> str:
    """How errors name a reference: Docker's familiar form (``alpine:3.20.3``)."""
    return ref.familiar


def pull(store, ref_text: str, *, platform: str | oci.Platform | None = None, tls_verify: bool = True,
         progress: ProgressFn | None = None, concurrency: int = CONCURRENCY,
         client: RegistryClient | None = None):
    """``docker pull REF``: fetch the image into ``store``; returns a :class:`~ketch.image.transports.PullResult`.

    ``platform`` (``linux/arm64/v8`` or a Platform) selects from an index
    (default: the host's) and, given explicitly, must match a single
    manifest's config too.  ``progress`` receives :class:`Progress` events
    from the downloading threads (serialize your output).  The image is named
    ``REF`` (a reference by digest gets no name).  The result's ``digest`` is
    the manifest (or index) digest the registry served for ``REF``.
    """
    from ketch.image.transports import (MAX_JSON_BLOB, PullResult, _check_layer_count, _commit,
                                        _parse_config, _verify_layers, host_platform)
    ref = parse_reference(ref_text)
    explicit = platform is not None
    want = (parse_platform(platform) if isinstance(platform, str) else platform) if explicit else host_platform()
    emit = progress or (lambda p: None)
    display = display_name(ref)
    own = client is None
    client = client or RegistryClient(ref.domain, tls_verify=tls_verify, concurrency=concurrency)
    try:
        top_mt, top_bytes, top_digest = client.get_manifest(ref.path, ref.digest or ref.tag or "latest", display)
        mt, mbytes, mdigest = top_mt, top_bytes, top_digest
        from_index = False
        for _ in range(4):
            if mt in SCHEMA1_TYPES:
                raise ImageError(f"{display}: Docker image manifest schema 1 is not supported "
                                 "(deprecated since 2017; push the image again with a current tool)")
            doc = _json(mbytes, f"manifest {mdigest} of {display}")
            if mt in oci.INDEX_TYPES or (not mt and "manifests" in doc):
                index = oci.Index.from_json(doc)
                entries = [e for e in index.manifests if e.platform] or list(index.manifests)
                if all(e.platform for e in entries):
                    chosen = select_platform(entries, want, display)
                elif len(entries) == 1:
                    chosen = entries[0]
                else:
                    raise ImageError(f"{display}: index {mdigest} has {len(entries)} manifests and no platforms")
                mt, mbytes, mdigest = client.get_manifest(ref.path, chosen.digest, display)
                if len(mbytes) != chosen.size:
                    raise DigestMismatch(f"manifest {chosen.digest} of {display}: {len(mbytes)} bytes, "
                                         f"index says {chosen.size}")
                if not mt:
                    mt = chosen.mediaType
                from_index = True
                continue
            break
        else:
            raise ImageError(f"{display}: indexes nested too deeply")
        manifest = oci.Manifest.from_json(doc, mt if mt in oci.MANIFEST_TYPES else None)
        for layer in manifest.layers:
            if layer.mediaType and layer.mediaType not in oci.LAYER_TYPES:
                raise ImageError(f"{display}: layer {layer.digest} has unsupported media type {layer.mediaType!r}")
        if manifest.config.size > MAX_JSON_BLOB:
            raise ImageError(f"{display}: config {manifest.config.digest} is too large ({manifest.config.size} bytes)")
        client.fetch_blob(ref.path, manifest.config, store.content, None, display)
        cbytes = store.content.read_bytes(manifest.config.digest)
        config = _parse_config(cbytes, f"config {manifest.config.digest} of {display}")
        if explicit and not from_index and (config.os != want.os or _normalize_arch(config.architecture, config.variant)[0]
                         != _normalize_arch(want.architecture, want.variant)[0]):
            have = platform_str(oci.Platform(config.architecture, config.os, config.variant))
            raise ImageError(f"image {display} was found but does not match the specified platform: "
                             f"wanted {platform_str(want)}, actual: {have}")
        _check_layer_count(config, manifest, display)
        events, scanned = _fetch_layers(client, ref.path, manifest, store.content, emit, concurrency, display)
        infos = _verify_layers(store, manifest, config, display, scanned)
        store.content.ingest_bytes(mbytes, mdigest)
        names = [str(ref)] if not ref.digest else []
        result: PullResult = _commit(store, mdigest, names, infos, events)
        for digest, status in events:
            if status != "Already exists":
                emit(Progress(digest[7:19], "Pull complete"))
        result.digest = top_digest  # type: ignore[attr-defined]
        return result
    finally:
        if own:
            client.close()


def _json(data: bytes, what: str) -> dict:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ImageError(f"{what}: invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: not a JSON object")
    return doc


def _fetch_layers(client: RegistryClient, repo: str, manifest: oci.Manifest, content, emit: ProgressFn,
                  concurrency: int, display: str) -> tuple[list[tuple[str, str]], dict]:
    """Fetch every missing layer, ``concurrency`` at a time.

    Returns ``[(digest, "Pull complete"|"Already exists")]`` and the
    :class:`~ketch.image.layers.LayerInfo` of each layer scanned on the way in.
    """
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
    events: list[tuple[str, str]] = []
    todo: list[oci.Descriptor] = []
    seen: set[str] = set()
    for layer in manifest.layers:
        if layer.digest in seen:
            continue
        seen.add(layer.digest)
        if content.has(layer.digest, layer.size):
            events.append((layer.digest, "Already exists"))
            emit(Progress(layer.digest[7:19], "Already exists"))
        else:
            events.append((layer.digest, "Pull complete"))
            todo.append(layer)
    for layer in todo:
        emit(Progress(layer.digest[7:19], "Pulling fs layer", 0, layer.size))
    scanned: dict = {}
    if not todo:
        return events, scanned
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ketch-pull")
    try:
        futures = [pool.submit(client.fetch_blob, repo, layer, content, emit, display, True) for layer in todo]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for fut in futures:
            if fut in done and fut.exception() is not None:
                raise fut.exception()  # type: ignore[misc]
        for layer, fut in zip(todo, futures):
            info = fut.result()[1]
            if info is not None:
                scanned[layer.digest] = info
    finally:
        client.cancelled.set()
        pool.shutdown(wait=True, cancel_futures=True)
        client.cancelled.clear()
    return events, scanned


def resolve_or_pull(store, ref: str, *, out=None, platform: str | None = None):
    """The stored image ``ref``, pulled first when absent — what ``docker run`` does.

    Prints ``Unable to find image 'alpine:latest' locally`` and the pull's
    progress lines to ``out`` (default stderr), as Docker does.  Anything not
    a name (an ID, a malformed reference) is only resolved.
    """
    import sys
    try:
        return store.resolve(ref)
    except ImageNotFound:
        pass
    r = parse_reference(ref)
    out = out or sys.stderr
    print(f"Unable to find image '{r.familiar}' locally", file=out, flush=True)
    from ketch.image.progress import PlainProgress
    printer = PlainProgress(out)
    printer.header(r)
    result = pull(store, str(r), platform=platform, progress=printer)
    printer.footer(result, r)
    return result.image


__all__ = ["Progress", "RegistryClient", "is_loopback", "parse_platform", "pull", "registry_host",
           "resolve_or_pull", "select_platform"]
